package app

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// The administrator's commands against a real API server: status, plan,
// start (and its refusal while one is pending), and steering with nothing
// to steer.
func TestRolloutAndStatusCommands(t *testing.T) {
	cp := controlplane.StartForTest(t, controlplane.Config{Issuers: []string{"https://issuer.test"}})
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	api := versioned.NewForConfigOrDie(cp.AdminConfig())
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1", Labels: map[string]string{"pool": "a"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := controlplane.WriteKubeconfig(kc, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}

	code, out, stderr := run(t, "rollout", "plan", "--kubeconfig", kc)
	if code != 0 || !strings.Contains(out, "0 of 1 node needing work") || !strings.Contains(out, "worker-1  -       -         left alone: no report from a tokenroll agent") {
		t.Errorf("plan: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr = run(t, "rollout", "pause", "--kubeconfig", kc); code != cli.ExitFailure || !strings.Contains(stderr, "no rollout is active") {
		t.Errorf("pause with nothing active: exit %d %s%s", code, out, stderr)
	}
	if code, out, stderr = run(t, "rollout", "start", "--kubeconfig", kc, "--policy", "nightly"); code != cli.ExitFailure || !strings.Contains(stderr, `RolloutPolicy "nightly" not found`) {
		t.Errorf("start naming a missing policy: exit %d %s%s", code, out, stderr)
	}
	if _, err := api.TokenrollV1alpha1().RolloutPolicies().Create(ctx, &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nightly"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr = run(t, "rollout", "start", "--kubeconfig", kc, "--strategy", "reboot", "--nodes", "pool=a", "--policy", "nightly"); code != 0 || !strings.Contains(out, "rollout requested") || !strings.Contains(out, "policy nightly") {
		t.Errorf("start: exit %d %s%s", code, out, stderr)
	}
	st, err := coordinator.Store{Client: api}.Get(ctx)
	if err != nil || st.Start == nil || st.Start.Strategy != coordinator.Reboot || st.Start.Selector != "pool=a" || st.Start.Policy != "nightly" {
		t.Errorf("state after start: %+v, %v", st.Start, err)
	}
	if code, _, stderr = run(t, "rollout", "start", "--kubeconfig", kc); code != cli.ExitFailure || !strings.Contains(stderr, "still waiting for the coordinator") {
		t.Errorf("a second start: exit %d %s", code, stderr)
	}
	if code, out, stderr = run(t, "rollout", "retry", "--kubeconfig", kc, "worker-1"); code != 0 || !strings.Contains(out, "retry requested for worker-1") {
		t.Errorf("retry: exit %d %s%s", code, out, stderr)
	}
	if st, err = (coordinator.Store{Client: api}).Get(ctx); err != nil || len(st.Retry) != 1 || st.Retry[0].Node != "worker-1" {
		t.Errorf("state after retry: %+v, %v", st.Retry, err)
	}
	code, out, stderr = run(t, "status", "--kubeconfig", kc, "-o", "json")
	var rep coordinator.StatusReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("status: exit %d %s%s", code, out, stderr)
	}
	if rep.Issuer != "https://issuer.test" || rep.Gate.Provider != "none" || !rep.Gate.Open || len(rep.Nodes) != 1 || rep.Pending == nil || rep.Nodes[0].Tokens != -1 ||
		len(rep.PendingRetry) != 1 {
		t.Errorf("status: %+v", rep)
	}
	if code, out, _ = run(t, "status", "--kubeconfig", kc); code != 0 || !strings.Contains(out, "GATE      open (none)") || !strings.Contains(out, "worker-1  no") {
		t.Errorf("status table: exit %d\n%s", code, out)
	}
}
