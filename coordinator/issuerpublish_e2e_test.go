package coordinator_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// The leader publishes the issuer; an agent allowed only what deploy/
// grants it (list and watch of that one ConfigMap, by name) follows an
// issuer change through its watch, with no OIDC discovery read after the
// one at its start.
func TestAgentFollowsThePublishedIssuer(t *testing.T) {
	c := simtest.Start(t, oldIssuer, "node-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.ExamplePods(t, "node-1")
	if err := benchkit.InstallCRDs(ctx, c.CP.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grantAgent(t, c.Admin)
	cfg, err := c.CP.ServiceAccountConfig(ctx, ns, "tokenroll-agent", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	nodes, discovery, err := nodeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	published, err := nodeclient.NewConfigMaps(discovery, ns)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := testLogger(t)
	a, err := agent.New(agent.Config{NodeName: "node-1", KubeletRoot: c.Nodes["node-1"].Root(), Client: nodes, Discovery: discovery,
		Published: published, PublishedNamespace: ns, Interval: 200 * time.Millisecond, Grace: 5 * time.Minute,
		IssuerRefresh: time.Hour, MaxTokenSeries: 10, Registry: reg, Log: log.Named("agent")})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	waitReportIssuer(t, ctx, c.Admin, "node-1", oldIssuer)

	client := kubernetes.NewForConfigOrDie(c.CP.AdminConfig())
	gate, err := coordinator.NewGate(ctx, coordinator.GateNone, client, nil)
	if err != nil {
		t.Fatal(err)
	}
	co, err := coordinator.New(coordinator.Config{Client: client, Rollouts: versioned.NewForConfigOrDie(c.CP.AdminConfig()), Namespace: ns, Gate: gate,
		Strategy: coordinator.KubeletRestart, MaxUnavailable: intstr.FromInt32(1), DrainTimeout: time.Minute, ActionTimeout: time.Minute,
		VerifyTimeout: time.Minute, TrustMargin: time.Hour, IssuerRefresh: time.Second, PublishIssuer: true,
		Registry: prometheus.NewRegistry(), Log: log.Named("coordinator")})
	if err != nil {
		t.Fatal(err)
	}
	coordDone := make(chan struct{})
	go func() {
		defer close(coordDone)
		_ = coordinator.RunElected(ctx, coordinator.LeaderConfig{Client: client, Namespace: ns, LeaseName: leaseName, Identity: "replica-1",
			LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond, Log: log.Named("leader")}, co.Lead)
	}()
	defer func() {
		cancel()
		<-coordDone
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	waitPublished(t, ctx, c.Admin, oldIssuer)

	// The API server signs with a new issuer; the coordinator reads it in
	// discovery, publishes it, and the agent judges against it.
	if err := c.CP.RestartAPIServer(ctx, 0, []string{newIssuer, oldIssuer}); err != nil {
		t.Fatal(err)
	}
	waitPublished(t, ctx, c.Admin, newIssuer)
	waitReportIssuer(t, ctx, c.Admin, "node-1", newIssuer)

	for reason, want := range map[string]float64{"start": 1, "interval": 0, "rescan": 0, "unexpected_issuer": 0} {
		if got := seriesValue(t, reg, "tokenroll_issuer_discovery_reads_total", "reason", reason); got != want {
			t.Errorf("discovery reads for %s: %v, want %v", reason, got, want)
		}
	}
	if got := seriesValue(t, reg, "tokenroll_expected_issuer_source", "source", "published"); got != 1 {
		t.Errorf("expected_issuer_source{source=published} %v, want 1", got)
	}
}

// grantAgent gives the agent's service account what deploy/agent-rbac.yaml
// grants it that this test uses.
func grantAgent(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "tokenroll-agent"}}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tokenroll-agent"}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{protocol.IssuerConfigMapName}, Verbs: []string{"list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "tokenroll-agent"}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitFor watches (an unset resourceVersion: every current object first)
// until match accepts an object, for a minute at most.
func waitFor(t *testing.T, ctx context.Context, what string, w func(context.Context) (watch.Interface, error), match func(any) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for ctx.Err() == nil {
		wi, err := w(ctx)
		if err != nil {
			continue // the API server restarting
		}
		for ev := range wi.ResultChan() {
			if ev.Type != watch.Error && match(ev.Object) {
				wi.Stop()
				return
			}
		}
	}
	t.Fatalf("%s: not seen within a minute", what)
}

func waitPublished(t *testing.T, ctx context.Context, admin kubernetes.Interface, want string) {
	t.Helper()
	sel := fields.OneTermEqualSelector("metadata.name", protocol.IssuerConfigMapName).String()
	waitFor(t, ctx, "ConfigMap "+protocol.IssuerConfigMapName+" holding "+want, func(ctx context.Context) (watch.Interface, error) {
		return admin.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{FieldSelector: sel})
	}, func(o any) bool {
		cm, ok := o.(*corev1.ConfigMap)
		if !ok {
			return false
		}
		p, err := protocol.ParsePublishedIssuer(cm.Data)
		return err == nil && p.Issuer == want && !p.ObservedAt.IsZero()
	})
}

func waitReportIssuer(t *testing.T, ctx context.Context, admin kubernetes.Interface, node, want string) {
	t.Helper()
	sel := fields.OneTermEqualSelector("metadata.name", node).String()
	waitFor(t, ctx, "node "+node+" reporting against "+want, func(ctx context.Context) (watch.Interface, error) {
		return admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: sel})
	}, func(o any) bool {
		n, ok := o.(*corev1.Node)
		if !ok {
			return false
		}
		rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
		return err == nil && rep.Issuer == want
	})
}

// seriesValue reads one labelled series (a counter or a gauge) from a registry.
func seriesValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					if m.GetCounter() != nil {
						return m.GetCounter().GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}
