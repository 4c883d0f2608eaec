package coordinator

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	clienttesting "k8s.io/client-go/testing"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// poolPolicy is a RolloutPolicy for the nodes labelled pool=name.
func poolPolicy(name string, spec v1alpha1.RolloutPolicySpec) *v1alpha1.RolloutPolicy {
	spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": name}}
	return &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 1}, Spec: spec}
}

// Each planned node gets its pool's strategy, the nodes no policy covers
// the flag's; a TokenRollout's own strategy overrides the policies'; in a
// plan from the agents' reports, a node that asks for a reboot keeps it.
func TestPolicyStrategyPerPool(t *testing.T) {
	needsWork := withReport(expiredReport())
	cluster := func(start *StartRequest) []runtime.Object {
		o := objs(testNode("a1", labeled("pool", "a"), needsWork), testNode("b1", labeled("pool", "b"), needsWork), testNode("c1", needsWork),
			testNode("a2", labeled("pool", "a"), needsWork, func(n *corev1.Node) { n.Annotations[protocol.AnnotationRebootRequired] = "true" }))
		if start != nil {
			o = append(o, stateConfigMap(State{Start: start}))
		}
		return o
	}
	policies := []*v1alpha1.RolloutPolicy{
		poolPolicy("a", v1alpha1.RolloutPolicySpec{Strategy: v1alpha1.StrategyKubeletRestart}),
		poolPolicy("b", v1alpha1.RolloutPolicySpec{Strategy: v1alpha1.StrategyReboot}),
	}
	for _, c := range []struct {
		name  string
		start *StartRequest
		want  map[string]protocol.Strategy
	}{
		{"start request", &StartRequest{RequestedAt: t0, RequestedBy: "alice"},
			map[string]protocol.Strategy{"a1": KubeletRestart, "a2": KubeletRestart, "b1": Reboot, "c1": PodRestart}},
		{"start request overriding the strategy", &StartRequest{Strategy: Auto, RequestedAt: t0, RequestedBy: "alice"},
			map[string]protocol.Strategy{"a1": Auto, "a2": Auto, "b1": Auto, "c1": Auto}},
		{"planned from the reports", nil,
			map[string]protocol.Strategy{"a1": KubeletRestart, "a2": Reboot, "b1": Reboot, "c1": PodRestart}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, cluster(c.start)...)
			f.cfg.Strategy, f.cfg.Auto = PodRestart, c.start == nil
			f.leadWithPolicies(policies...)
			f.sync()
			r := f.state().Rollout
			if r == nil {
				t.Fatal("no rollout planned")
			}
			got := map[string]protocol.Strategy{}
			for _, n := range r.Nodes {
				got[n.Name] = n.Strategy
			}
			if mustJSON(got) != mustJSON(c.want) {
				t.Errorf("strategies %v; want %v", got, c.want)
			}
			// What a node starts with is what the plan gave it.
			for _, n := range f.list(nodesGVR, "") {
				node := n.(*corev1.Node)
				if s := readNodeState(node, r.ID); s != nil && s.Strategy != c.want[node.Name] {
					t.Errorf("%s started with %s; want %s", node.Name, s.Strategy, c.want[node.Name])
				}
			}
		})
	}
}

// The drainer gets each node's pool's drain settings (the flags for what
// a policy leaves out, and for the nodes no policy covers); they are
// recorded on the node as it starts, shown in the TokenRollout's node
// results, and a drain that outlives its pool's timeout halts saying so.
func TestPolicyDrainOptionsPerPool(t *testing.T) {
	thirty := int64(30)
	f := newFixture(t, testNode("a1", labeled("pool", "a")), testNode("b1", labeled("pool", "b")), testNode("c1"),
		rolloutConfigMap(rollout(Reboot, "a1", "b1", "c1")))
	f.cfg.MaxUnavailable = intstr.FromInt32(3)
	f.leadWithPolicies(
		poolPolicy("a", v1alpha1.RolloutPolicySpec{Drain: &v1alpha1.DrainOptions{Timeout: &metav1.Duration{Duration: 5 * time.Minute}, GracePeriodSeconds: &thirty,
			ForceDeletePods: []v1alpha1.PodSelector{{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "batch"}},
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "dev"}}}}}}),
		poolPolicy("b", v1alpha1.RolloutPolicySpec{Drain: &v1alpha1.DrainOptions{Timeout: &metav1.Duration{Duration: 20 * time.Minute}, EvictUnmanagedPods: true}}),
	)
	f.sync()
	f.sync()
	var calls []drainCall
	for deadline := time.Now().Add(10 * time.Second); len(calls) < 3 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		calls = append(calls, f.drainer.takeCalls()...)
	}
	slices.SortFunc(calls, func(x, y drainCall) int { return strings.Compare(x.Node, y.Node) })
	want := []drainCall{
		{Node: "a1", Timeout: 5 * time.Minute, GracePeriodSeconds: &thirty, ForceDelete: []protocol.PodSelector{{Pods: "app=batch", Namespaces: "tier=dev"}}},
		{Node: "b1", Timeout: 20 * time.Minute, EvictUnmanaged: true},
		{Node: "c1", Timeout: 10 * time.Minute},
	}
	if mustJSON(calls) != mustJSON(want) {
		t.Errorf("Drainer calls\ngot:  %s\nwant: %s", mustJSON(calls), mustJSON(want))
	}

	rec := f.recordObjects()[0].DeepCopy()
	f.term.fillProgress(rec)
	results := map[string]string{}
	for _, n := range rec.Status.Nodes {
		results[n.Name] = n.Policy + ": " + n.Drain
	}
	for node, w := range map[string]string{
		"a1": "a: timeout 5m0s, grace period 30s, force-delete 1 selector (RolloutPolicy a; the flags for the rest)",
		"b1": "b: timeout 20m0s, unmanaged pods evicted (RolloutPolicy b; the flags for the rest)",
		"c1": ": the coordinator's flags",
	} {
		if results[node] != w {
			t.Errorf("node result of %s: %q; want %q", node, results[node], w)
		}
	}

	// A leader that finds a1 cordoned past its pool's timeout, with no
	// drain of its own running, halts it.
	f.endTerm()
	f.leadWithPolicies()
	f.clock.Step(5*time.Minute + time.Second)
	f.sync()
	s := readNodeState(f.node("a1"), rolloutID)
	if want := "not drained within 5m0s (spec.drain.timeout of RolloutPolicy a)"; s == nil || s.Step != protocol.StepHalted || s.Message != want {
		t.Errorf("a1 after its pool's drain timeout: %+v; want halted: %q", s, want)
	}
}

// KubectlDrainer deletes the pods whose eviction is still refused at the
// timeout when the options' forceDeletePods select them, and fails on any
// other, naming it.
func TestDrainerForceDeletesRefusedPods(t *testing.T) {
	batch := pod("app", "batch-1", "n1", "ReplicaSet", "batch")
	batch.Labels = map[string]string{"app": "batch"}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"tier": "dev"}}}
	refuse := func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	}
	for _, c := range []struct {
		name    string
		sel     []protocol.PodSelector
		deleted []string
		err     string
	}{
		{"selected", []protocol.PodSelector{{Pods: "app=batch", Namespaces: "tier=dev"}}, []string{"batch-1"}, ""},
		{"namespace not selected", []protocol.PodSelector{{Pods: "app=batch", Namespaces: "tier=prod"}}, nil,
			"evicting pod app/batch-1: global timeout reached while the eviction was refused (Cannot evict pod as it would violate the pod's disruption budget.)"},
		{"no force delete", nil, nil, "evicting pod app/batch-1: global timeout reached while the eviction was refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, testNode("n1"), batch, ns)
			f.fake.PrependReactor("create", "pods", refuse)
			d := KubectlDrainer{Client: f.client}
			err := d.Evict(context.Background(), []corev1.Pod{*batch}, DrainOptions{Timeout: 100 * time.Millisecond, ForceDelete: c.sel})
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("Evict: %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, context.DeadlineExceeded)):
				t.Fatalf("Evict: %v; want %q, a timeout", err, c.err)
			}
			var deleted []string
			for _, a := range f.fake.Actions() {
				if a.GetVerb() == "delete" && a.GetResource() == (schema.GroupVersionResource{Version: "v1", Resource: "pods"}) {
					deleted = append(deleted, a.(clienttesting.DeleteAction).GetName())
				}
			}
			if !slices.Equal(deleted, c.deleted) {
				t.Errorf("deleted %v; want %v", deleted, c.deleted)
			}
		})
	}
}
