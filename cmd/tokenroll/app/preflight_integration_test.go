package app

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// preflightCluster is a real API server with three Ready nodes.
type preflightCluster struct {
	t      *testing.T
	cp     *controlplane.ControlPlane
	admin  kubernetes.Interface
	kc     string
	issuer string
}

func startPreflightCluster(t *testing.T) *preflightCluster {
	const iss = "https://issuer.test"
	cp := controlplane.StartForTest(t, controlplane.Config{Issuers: []string{iss}})
	ctx := context.Background()
	c := &preflightCluster{t: t, cp: cp, admin: kubernetes.NewForConfigOrDie(cp.AdminConfig()), kc: filepath.Join(t.TempDir(), "kubeconfig"), issuer: iss}
	if err := controlplane.WriteKubeconfig(c.kc, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		n, err := c.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := c.admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// report writes a node's tokens annotation as its agent does: the
// protocol's encoding, in a merge patch.
func (c *preflightCluster) report(node string, rep protocol.TokenReport) {
	c.t.Helper()
	raw, err := json.Marshal(rep)
	if err != nil {
		c.t.Fatal(err)
	}
	c.annotate(node, protocol.AnnotationTokens, string(raw))
}

func (c *preflightCluster) annotate(node, key, value string) {
	c.t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if _, err := c.admin.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// apps writes app detection's status through the coordinator's own
// reporter.
func (c *preflightCluster) apps(res apps.Result) {
	c.t.Helper()
	r := &apps.Reporter{Client: c.admin, Namespace: "tokenroll", Metrics: apps.NewMetrics(prometheus.NewRegistry()), Log: zap.NewNop(),
		Clock: clock.RealClock{}, Grace: 2 * time.Minute, Window: 15 * time.Minute, StatusInterval: 30 * time.Second, StatusRefresh: 5 * time.Minute}
	if err := r.Report(context.Background(), res); err != nil {
		c.t.Fatal(err)
	}
}

func (c *preflightCluster) clean(n int) protocol.TokenReport {
	return protocol.TokenReport{Issuer: c.issuer, Tokens: n, Issuers: []protocol.IssuerTokens{{Issuer: c.issuer, Tokens: n}}, PodsAPI: protocol.PodsAPIListed}
}

// The administrator's preflight against a real API server: an app-stale
// workload, a node whose kubelet does not refresh its tokens and a node
// without an agent make it exit 1, saying so in the table and the JSON;
// once they are healthy it exits 0, and the per-node time is the one the
// last rollout measured.
func TestPreflightCommand(t *testing.T) {
	c := startPreflightCluster(t)
	now := time.Now().UTC()
	c.report("node-a", c.clean(4))
	c.report("node-b", protocol.TokenReport{Issuer: c.issuer, Tokens: 3, Stale: map[protocol.State]int{protocol.StateOverdue: 1},
		Issuers: []protocol.IssuerTokens{{Issuer: c.issuer, Tokens: 3}}, StalePods: []protocol.PodRef{{Namespace: "batch", Name: "report-7f", UID: "u-7f"}},
		PodsAPI: protocol.PodsAPIListed})
	pod := func(ns, name, node, workload string) apps.Pod {
		return apps.Pod{UID: types.UID("uid-" + name), Namespace: ns, Name: name, Node: node, Workload: workload, Running: true}
	}
	c.apps(apps.Result{Now: now, Followed: 7, Healthy: 4, Unobserved: 1, Stale: 2, Nodes: map[string]apps.NodeCounts{"node-a": {Pods: 4, Healthy: 2, Stale: 2}, "node-b": {Pods: 3, Healthy: 2}},
		Problems: []apps.PodProblem{
			{Pod: pod("shop", "cart-6d9f7c5b8-x2x9q", "node-a", "Deployment/cart"), Stale: true, StaleSince: now.Add(-46 * time.Minute), ReplacedAt: now.Add(-48 * time.Minute)},
			{Pod: pod("shop", "cart-6d9f7c5b8-p4kzt", "node-a", "Deployment/cart"), Stale: true, StaleSince: now.Add(-40 * time.Minute), ReplacedAt: now.Add(-42 * time.Minute)},
		},
		Events: map[string]map[string]uint64{"presented": {"counted": 120}, "issued": {"counted": 9}}})

	code, out, stderr := run(t, "preflight", "--kubeconfig", c.kc, "-o", "json")
	t.Logf("tokenroll preflight -o json:\n%s", out)
	var rep preflightReport
	if code != cli.ExitFailure || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("preflight -o json: exit %d, want 1\n%s%s", code, out, stderr)
	}
	failed := map[string]bool{}
	for _, ch := range rep.Checks {
		failed[ch.Name] = !ch.OK
	}
	wantFailed := map[string]bool{checkGate: false, checkAuditSource: false, checkAppStale: true, checkAppFailing: false, checkNotRefreshed: true,
		checkUntrusted: false, checkAgents: true, checkMaxUnavailable: false, checkTrustWindow: false}
	for name, f := range wantFailed {
		if failed[name] != f {
			t.Errorf("check %s failed=%v, want %v: %+v", name, failed[name], f, rep.Checks)
		}
	}
	if !rep.Breaks || len(rep.Workloads) != 1 || rep.Workloads[0].Workload != "Deployment/cart" || rep.Workloads[0].AppStale != 2 ||
		len(rep.Tokens) != 1 || rep.Tokens[0].Node != "node-b" || rep.Tokens[0].Overdue != 1 || rep.Tokens[0].Pods[0] != "batch/report-7f" ||
		len(rep.NodesWithoutAgent) != 1 || rep.NodesWithoutAgent[0].Node != "node-c" || rep.NodesWithoutAgent[0].Reason != agentNoReport {
		t.Errorf("report: %s", out)
	}
	// Before a change, with the coordinator's default strategy, auto:
	// node-a and node-b hold tokens, at the default minute. Without a trust
	// window there is no gate settle, and auto restarts their kubelets
	// without a cordon, one first, then the other; its apps are watched
	// once at the end (2m30s).
	if e := rep.Estimate; e.Scope != scopeIssuerChange || e.Strategy != coordinator.Auto || e.Nodes != 2 || e.Uncordoned != 2 || e.KubeletRestartsAtOnce != 100 ||
		e.DurationSeconds != 270 || e.GateSettleSeconds != 0 || e.PerNode[0].Source != perNodeDefault {
		t.Errorf("estimate: %+v", e)
	}

	code, out, _ = run(t, "preflight", "--kubeconfig", c.kc, "--trust-window=24h")
	t.Logf("tokenroll preflight --trust-window=24h:\n%s", out)
	for _, want := range []string{
		"GATE      open (none)",
		"ISSUER    https://issuer.test",
		"APPS      7 pods with a projected token: 4 healthy, 2 app-stale, 0 app-failing, 1 unobserved",
		"ROLLOUT   an issuer change now: 2 nodes, 1 at a time (max-unavailable 1, 0 nodes out of service)",
		"auto: 2 nodes, 1m0s per node (default: the state records no rollout)",
		"about 6m30s, counting the 2m0s gate settle",
		"TRUST     https://issuer.test trusted until",
		"(--trust-window): fits, 23h53m30s to spare",
		"RESULT    WOULD BREAK: app-stale, tokens-not-refreshed, agents",
		"app-stale             FAIL    2 app-stale pods",
		"in 1 workload in 1 namespace",
		"NAMESPACE  WORKLOAD         APP-STALE  APP-FAILING  NODES   PODS",
		"shop       Deployment/cart  2          0            node-a  cart-6d9f7c5b8-p4kzt,cart-6d9f7c5b8-x2x9q",
		"node-b  0        1        0          -        batch/report-7f",
		"node-c  no-report  no tokenroll.io/tokens annotation",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if code != cli.ExitFailure || t.Failed() {
		t.Fatalf("preflight table: exit %d\n%s", code, out)
	}

	// Healthy: every app reloads, node-b's kubelet refreshed, node-c's agent
	// reports. The last rollout took 20 s on each of two nodes.
	c.report("node-b", c.clean(3))
	c.report("node-c", c.clean(2))
	c.apps(apps.Result{Now: now, Followed: 9, Healthy: 8, Unobserved: 1, Nodes: map[string]apps.NodeCounts{"node-a": {Pods: 4, Healthy: 4}},
		Events: map[string]map[string]uint64{"presented": {"counted": 300}}})
	if _, err := (coordinator.Store{Client: versioned.NewForConfigOrDie(c.cp.AdminConfig()), FieldManager: "test"}).Update(context.Background(), func(st *coordinator.State) error {
		st.Rollout = &coordinator.Rollout{ID: "r-prev", Strategy: "kubelet-restart", Phase: coordinator.RolloutDone, CreatedAt: now.Add(-2 * time.Hour), FinishedAt: now.Add(-time.Hour),
			Nodes: []coordinator.PlannedNode{{Name: "node-a", Strategy: "kubelet-restart"}, {Name: "node-b", Strategy: "kubelet-restart"}}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node-a", "node-b"} {
		raw, _ := json.Marshal(protocol.NodeState{Rollout: "r-prev", Step: protocol.StepDone, Strategy: "kubelet-restart", CordonedByUs: true,
			StartedAt: now.Add(-90 * time.Minute), StepAt: now.Add(-90*time.Minute + 20*time.Second)})
		c.annotate(n, protocol.AnnotationNodeState, string(raw))
	}
	code, out, stderr = run(t, "preflight", "--kubeconfig", c.kc, "--strategy=kubelet-restart", "--max-unavailable=2", "--trust-window=24h")
	t.Logf("tokenroll preflight --strategy=kubelet-restart --max-unavailable=2 --trust-window=24h:\n%s", out)
	if code != 0 || !strings.Contains(out, "RESULT    nothing would break") ||
		!strings.Contains(out, "kubelet-restart: 3 nodes, 20s per node (measured: median of 2 nodes of rollout r-prev)") ||
		!strings.Contains(out, "about 2m40s, counting the 2m0s gate settle") || strings.Contains(out, "NAMESPACE") {
		t.Errorf("healthy: exit %d, want 0\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "preflight", "--kubeconfig", c.kc, "-o", "json", "--trust-window=1m")
	rep = preflightReport{}
	if code != cli.ExitFailure || json.Unmarshal([]byte(out), &rep) != nil || rep.Estimate.Fits == nil || *rep.Estimate.Fits || rep.Checks[len(rep.Checks)-1].Name != checkTrustWindow {
		t.Errorf("a window shorter than the rollout: exit %d, want 1\n%s", code, out)
	}
	// A person bound to the shipped viewer roles reads all of it, the gate
	// found by --gate=auto included.
	viewer := c.viewerKubeconfig()
	code, out, stderr = run(t, "preflight", "--kubeconfig", viewer, "-o", "json", "--strategy=kubelet-restart", "--max-unavailable=2", "--trust-window=24h")
	rep = preflightReport{}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Breaks || rep.Estimate.PerNode[0].Source != perNodeMeasured || rep.Apps == nil {
		t.Errorf("as tokenroll-viewer: exit %d, want 0\n%s%s", code, out, stderr)
	}

	// Another namespace holds no apps status: no audit source.
	code, out, _ = run(t, "preflight", "--kubeconfig", c.kc, "-n", "elsewhere", "-o", "json")
	rep = preflightReport{}
	if code != cli.ExitFailure || json.Unmarshal([]byte(out), &rep) != nil || rep.Apps != nil || rep.Checks[1].Name != checkAuditSource || rep.Checks[1].OK {
		t.Errorf("no apps status: exit %d, want 1\n%s", code, out)
	}
}

// What cannot be read is not judged: exit 3, apart from "would break".
func TestPreflightWithoutAClusterExitsThree(t *testing.T) {
	t.Setenv("KUBECONFIG", t.TempDir()+"/none")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	code, _, stderr := run(t, "preflight")
	if code != exitCouldNotCheck || !strings.Contains(stderr, "nothing was checked") {
		t.Errorf("exit %d, stderr %q; want %d", code, stderr, exitCouldNotCheck)
	}
}

// viewerKubeconfig binds a user to the viewer's ClusterRoles as shipped in
// the kustomize base (tokenroll-viewer cluster-wide, tokenroll-viewer-gate
// in kube-system, as their comments say) and writes a kubeconfig for it.
func (c *preflightCluster) viewerKubeconfig() string {
	t := c.t
	t.Helper()
	ctx := context.Background()
	const user = "viewer"
	f, err := os.Open("../../../deploy/kustomize/base/api-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	roles := map[string]*rbacv1.ClusterRole{}
	for dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096); ; {
		var o unstructured.Unstructured
		if err := dec.Decode(&o.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if o.GetKind() != "ClusterRole" {
			continue
		}
		var r rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &r); err != nil {
			t.Fatal(err)
		}
		roles[r.Name] = &r
	}
	for _, name := range []string{"tokenroll-viewer", "tokenroll-viewer-gate"} {
		if roles[name] == nil {
			t.Fatalf("api-rbac.yaml has no ClusterRole %s", name)
		}
		if _, err := c.admin.RbacV1().ClusterRoles().Create(ctx, roles[name], metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	if _, err := c.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tokenroll-viewer"}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.admin.RbacV1().RoleBindings(metav1.NamespaceSystem).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer-gate"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tokenroll-viewer-gate"}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.cp.UserConfig(user)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "viewer-kubeconfig")
	if err := controlplane.WriteKubeconfig(kc, cfg); err != nil {
		t.Fatal(err)
	}
	// RBAC takes effect once the authorizer's informers have the bindings.
	vc := kubernetes.NewForConfigOrDie(cfg)
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err1 := vc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		_, err2 := vc.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
		return err1 == nil && err2 == nil, nil
	})
	if err != nil {
		t.Fatalf("the viewer's bindings never took effect: %v", err)
	}
	return kc
}
