package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// agentClient is a service account allowed what the agent does: read its
// Node and patch its status. (The deploy issue narrows it to the agent's own
// Node with an admission policy.)
func agentClient(t *testing.T, c *simtest.Cluster) (nodeclient.Nodes, rest.Interface) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "tokenroll-agent"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "tokenroll", Name: "agent"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := c.CP.ServiceAccountConfig(ctx, "tokenroll", "agent", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	nodes, discovery, err := nodeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return nodes, discovery
}

func staleCondition(t *testing.T, c *simtest.Cluster, node string) *corev1.NodeCondition {
	t.Helper()
	n, err := c.Admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n.Status.Conditions {
		if string(n.Status.Conditions[i].Type) == protocol.ConditionTokensStale {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func TestAgentReportsThroughAnIssuerChange(t *testing.T) {
	const oldIss, newIss = "https://kubernetes.default.svc", "https://test.default.svc"
	c := simtest.Start(t, oldIss, "node-1")
	ctx := context.Background()
	sim := c.Nodes["node-1"]
	robot, web := c.ExamplePods(t, "node-1")

	reg := prometheus.NewRegistry()
	nodes, discovery := agentClient(t, c)
	a, err := New(Config{
		NodeName: "node-1", KubeletRoot: sim.Root(), Client: nodes, Discovery: discovery,
		Interval: 30 * time.Second, Grace: 5 * time.Minute, IssuerRefresh: time.Minute, MaxTokenSeries: 2,
		Registry: reg, Clock: clocktesting.NewFakeClock(time.Now()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.loadCondition(ctx); err != nil {
		t.Fatal(err)
	}
	a.readIssuer(ctx, readStart)
	if r := a.ScanOnce(ctx); r == nil || r.Summary[protocol.StateFresh] != 3 {
		t.Fatalf("first scan: %+v", r)
	}
	cond := staleCondition(t, c, "node-1")
	if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != ReasonFresh {
		t.Fatalf("condition after a fresh scan: %+v", cond)
	}
	if got := testutil.ToFloat64(a.metrics.conditionWrites); got != 1 {
		t.Errorf("condition writes %v, want 1", got)
	}
	// Nothing changed: no write.
	a.ScanOnce(ctx)
	if got := testutil.ToFloat64(a.metrics.conditionWrites); got != 1 {
		t.Errorf("an unchanged scan wrote the condition again (%v writes)", got)
	}

	// The issuer changes; the agent learns it from OIDC discovery with its
	// own service account.
	if err := c.CP.RestartAPIServer(ctx, 0, []string{newIss, oldIss}); err != nil {
		t.Fatal(err)
	}
	a.readIssuer(ctx, readStart)
	r := a.ScanOnce(ctx)
	if r.Summary[protocol.StateIssuerMismatch] != 3 {
		t.Fatalf("after the change: %+v", r.Summary)
	}
	cond = staleCondition(t, c, "node-1")
	if cond.Status != corev1.ConditionTrue || cond.Reason != ReasonIssuerMismatch ||
		!strings.Contains(cond.Message, "3 issuer-mismatch") || !strings.Contains(cond.Message, "build/nginx") || !strings.Contains(cond.Message, "build/web") {
		t.Errorf("condition after the issuer change: %+v", cond)
	}
	firstTransition := cond.LastTransitionTime

	want := `
# HELP tokenroll_tokens Projected service-account tokens on this node by state and namespace, from the last scan.
# TYPE tokenroll_tokens gauge
tokenroll_tokens{namespace="build",state="issuer-mismatch"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenroll_tokens"); err != nil {
		t.Error(err)
	}
	// Three stale tokens, a cap of two series: one dropped and counted.
	if n := testutil.CollectAndCount(a.metrics, "tokenroll_stale_token_refresh_timestamp_seconds"); n != 2 {
		t.Errorf("%d per-token series, want the cap of 2", n)
	}
	if got := testutil.ToFloat64(a.metrics.seriesDropped.WithLabelValues(droppedTotal)); got != 1 {
		t.Errorf("dropped series counter %v, want 1", got)
	}

	// The kubelet refreshes the kube-api-access tokens; the vault token
	// keeps the condition True, now naming only nginx.
	mark := c.Events.Mark()
	c.Clock.SetTime(r.Tokens[0].IssuedAt.Add(2900 * time.Second))
	sim.ResyncAll()
	for _, p := range []*corev1.Pod{robot, web} {
		c.Events.Wait(t, mark, p.Name+" rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", p.Name, simtest.KubeAPIAccess(t, p)))
	}
	a.ScanOnce(ctx)
	cond = staleCondition(t, c, "node-1")
	if cond.Status != corev1.ConditionTrue || !strings.Contains(cond.Message, "1 issuer-mismatch") || strings.Contains(cond.Message, "build/web") {
		t.Errorf("condition with only the vault token stale: %+v", cond)
	}
	if !cond.LastTransitionTime.Equal(&firstTransition) {
		t.Errorf("transition time moved without a status change: %v -> %v", firstTransition, cond.LastTransitionTime)
	}

	// A kubelet restart replaces it; the condition clears.
	mark = c.Events.Mark()
	sim.RestartKubelet()
	c.Events.Wait(t, mark, "vault token rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "nginx", "vault-token"))
	a.ScanOnce(ctx)
	if cond = staleCondition(t, c, "node-1"); cond.Status != corev1.ConditionFalse {
		t.Errorf("condition after the kubelet restart: %+v", cond)
	}
}
