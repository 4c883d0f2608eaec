package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	kubectlwait "k8s.io/kubectl/pkg/cmd/wait"

	"github.com/tokenroll/tokenroll/coordinator"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// The one-time migration against a real API server: a coordinator from
// before the TokenRollout left its state in ConfigMap tokenroll-rollout; a
// new one makes TokenRollouts of its rollouts (through the CRDs as shipped,
// status through the status subresource) and deletes it. kubectl's own
// wait code then finds the finished one Complete, as `kubectl wait
// --for=condition=Complete tokenrollout/NAME` does.
func TestMigratesTheRolloutConfigMap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	cp := controlplane.StartForTest(t, controlplane.Config{Issuers: []string{oldIssuer}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	api := versioned.NewForConfigOrDie(cp.AdminConfig())
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	done := &coordinator.Rollout{ID: "r-20261127-100000-beef", Trigger: coordinator.TriggerIssuer, Strategy: coordinator.KubeletRestart,
		Phase: coordinator.RolloutDone, Issuer: oldIssuer, Nodes: []coordinator.PlannedNode{{Name: "node-a", Strategy: coordinator.KubeletRestart, Reason: "2 tokens from an untrusted issuer"}},
		Message: "complete", CreatedAt: at, UpdatedAt: at.Add(time.Hour), FinishedAt: at.Add(time.Hour)}
	cancelled := &coordinator.Rollout{ID: "r-20261126-100000-cafe", Trigger: coordinator.TriggerManual + " (alice)", Strategy: coordinator.Reboot,
		Phase: coordinator.RolloutCancelled, Issuer: oldIssuer, Steered: "cancel requested by alice: cancelled, was running",
		CreatedAt: at.Add(-24 * time.Hour), UpdatedAt: at.Add(-23 * time.Hour), FinishedAt: at.Add(-23 * time.Hour)}
	raw, err := json.Marshal(map[string]any{"rollout": done, "last": cancelled, "observedIssuer": oldIssuer})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: coordinator.LegacyConfigMapName},
		Data: map[string]string{"state.json": string(raw)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	gate, err := coordinator.NewGate(ctx, coordinator.GateNone, admin, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(coordinator.Config{Client: admin, Rollouts: api, Namespace: ns, Gate: gate, Strategy: coordinator.KubeletRestart,
		MaxUnavailable: intstr.FromInt32(1), DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute,
		TrustMargin: time.Hour, IssuerRefresh: time.Minute, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	led := make(chan error, 1)
	go func() { led <- c.Lead(ctx) }()
	defer func() {
		cancel()
		if err := <-led; err != nil {
			t.Errorf("Lead: %v", err)
		}
	}()

	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, coordinator.LegacyConfigMapName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("the legacy ConfigMap was not deleted: %v", err)
	}
	st, err := coordinator.Store{Client: api}.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The API server keeps times to the second; these are whole seconds.
	if got, want := mustJSON(t, st.Rollout), mustJSON(t, done); got != want {
		t.Errorf("migrated rollout\n%s\nwant\n%s", got, want)
	}
	if got, want := mustJSON(t, st.Last), mustJSON(t, cancelled); got != want {
		t.Errorf("migrated last rollout\n%s\nwant\n%s", got, want)
	}
	o, err := api.TokenrollV1alpha1().TokenRollouts().Get(ctx, done.ID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o.Status.Phase != v1alpha1.PhaseComplete || o.Status.Summary.Total != 1 || len(o.Status.Nodes) != 1 || o.Status.Nodes[0].Name != "node-a" {
		t.Errorf("status %+v", o.Status)
	}
	for typ, want := range map[string]metav1.ConditionStatus{v1alpha1.ConditionComplete: metav1.ConditionTrue,
		v1alpha1.ConditionHalted: metav1.ConditionFalse, v1alpha1.ConditionProgressing: metav1.ConditionFalse} {
		if c := meta.FindStatusCondition(o.Status.Conditions, typ); c == nil || c.Status != want || c.Reason == "" || c.LastTransitionTime.IsZero() {
			t.Errorf("condition %s: %+v, want %s", typ, c, want)
		}
	}

	// kubectl wait, through kubectl's own code and a kubeconfig.
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := controlplane.WriteKubeconfig(kc, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	kubectl := func(name, cond string, timeout time.Duration) (string, error) {
		cf := genericclioptions.NewConfigFlags(false)
		cf.KubeConfig = &kc
		var out, errOut bytes.Buffer
		flags := kubectlwait.NewWaitFlags(cf, genericiooptions.IOStreams{Out: &out, ErrOut: &errOut})
		flags.ForCondition, flags.Timeout = []string{cond}, timeout
		o, err := flags.ToOptions([]string{"tokenrollout/" + name})
		if err == nil {
			err = o.RunWaitContext(ctx)
		}
		return out.String() + errOut.String(), err
	}
	if out, err := kubectl(done.ID, "condition=Complete", 30*time.Second); err != nil {
		t.Errorf("kubectl wait --for=condition=Complete tokenrollout/%s: %v\n%s", done.ID, err, out)
	} else {
		t.Logf("kubectl wait: %s", out)
	}
	if out, err := kubectl(cancelled.ID, "condition=Complete", 2*time.Second); err == nil {
		t.Errorf("kubectl wait --for=condition=Complete on a cancelled rollout succeeded: %s", out)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
