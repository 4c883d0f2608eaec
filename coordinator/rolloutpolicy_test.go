package coordinator

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	versionedfake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
	"github.com/tokenroll/tokenroll/protocol"
)

// leadWithPolicies makes the leader read ps, as its informer would.
func (f *fixture) leadWithPolicies(ps ...*v1alpha1.RolloutPolicy) {
	f.t.Helper()
	f.cfg.Policies = versionedfake.NewSimpleClientset()
	for _, p := range ps {
		if _, err := f.cfg.Policies.TokenrollV1alpha1().RolloutPolicies().Create(f.ctx, p, metav1.CreateOptions{}); err != nil {
			f.t.Fatal(err)
		}
	}
	f.lead()
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, p := range ps {
		if err := store.Add(p); err != nil {
			f.t.Fatal(err)
		}
	}
	f.term.pol.store = store
}

func defaultPolicy(spec v1alpha1.RolloutPolicySpec) *v1alpha1.RolloutPolicy {
	return &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: "all", Generation: 1}, Spec: spec}
}

// The health gate holds the pool while a node tokenroll is not working on
// is NotReady, even with room in maxUnavailable, and says which.
func TestPolicyHealthGateNodesReady(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), testNode("n3", notReady), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	five := intstr.FromInt32(5)
	f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{MaxUnavailable: &five, HealthGate: &v1alpha1.HealthGate{NodesReady: true}}))
	f.sync()
	for _, n := range []string{"n1", "n2"} {
		if f.node(n).Spec.Unschedulable {
			t.Errorf("%s cordoned while n3 is NotReady", n)
		}
	}
	w := f.state().Waiting
	if w == nil || w.Reason != WaitHealthGate || !strings.Contains(w.Message, "RolloutPolicy all's health gate waits until every node is Ready: n3 are not") {
		t.Fatalf("waiting %+v", w)
	}
	f.updateNode("n3", func(n *corev1.Node) { setReady(n, true) })
	f.sync()
	for _, n := range []string{"n1", "n2"} {
		if !f.node(n).Spec.Unschedulable {
			t.Errorf("%s not started once every node was Ready", n)
		}
	}
}

// A dry-run pool's nodes are recorded with what they would get, and not
// cordoned; the policy's status says it is accepted and covers them.
func TestPolicyDryRunPool(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{DryRun: true}))
	f.sync()
	n := f.node("n1")
	st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	if err != nil || st.Step != protocol.StepDryRun || n.Spec.Unschedulable || !strings.Contains(st.Message, "dry run (RolloutPolicy all): would cordon") {
		t.Errorf("n1: unschedulable %v, state %+v %v", n.Spec.Unschedulable, st, err)
	}
	p, err := f.cfg.Policies.TokenrollV1alpha1().RolloutPolicies().Get(f.ctx, "all", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.Conditions) != 1 || p.Status.Conditions[0].Status != metav1.ConditionTrue || p.Status.Nodes != 1 || p.Status.ObservedGeneration != 1 {
		t.Errorf("status %+v", p.Status)
	}
}

// A node already cordoned is not drained while its policy's alert fires:
// alerts are checked before each disruptive step, not only the cordon.
func TestPolicyAlertHoldsACordonedNode(t *testing.T) {
	var firing atomic.Bool
	firing.Store(true)
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		state := "firing"
		if !firing.Load() {
			state = "inactive"
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"success","data":{"alerts":[{"labels":{"alertname":"EtcdNoLeader"},"annotations":{},"state":"` + state + `","activeAt":"2026-11-27T11:00:00Z","value":"1"}]}}`))
	}))
	defer prom.Close()
	f := newFixture(t, testNode("n1", cordoned, inStep(started(Reboot, true, t0))), rolloutConfigMap(rollout(Reboot, "n1")))
	f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{Blockers: &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: prom.URL}}}))
	// Held: looked at again after PolicyRecheck (15 s), not the drain
	// timeout a running drain would give, and no drain started.
	if d := f.sync(); d != 15*time.Second {
		t.Errorf("next look in %v, want 15s", d)
	}
	f.term.mu.Lock()
	jobs := len(f.term.jobs)
	f.term.mu.Unlock()
	if jobs != 0 {
		t.Fatalf("%d preparations started while the alert fired", jobs)
	}
	firing.Store(false)
	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
}
