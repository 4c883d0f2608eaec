package coordinator

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// namedPolicies are two pools with different strategies and limits; the
// flags (reboot, one at a time) govern the nodes neither selects.
func namedPolicies() []*v1alpha1.RolloutPolicy {
	one, four := intstr.FromInt32(1), intstr.FromInt32(4)
	return []*v1alpha1.RolloutPolicy{
		poolPolicy("a", v1alpha1.RolloutPolicySpec{Strategy: v1alpha1.StrategyPodRestart, MaxUnavailable: &one}),
		poolPolicy("b", v1alpha1.RolloutPolicySpec{Strategy: v1alpha1.StrategyKubeletRestart, MaxUnavailable: &four}),
	}
}

// namedCluster is two nodes of pool a, one of pool b and two of none, all
// needing work, and the rollout record st.
func namedCluster(st State) []runtime.Object {
	needsWork := withReport(expiredReport())
	return []runtime.Object{
		testNode("a1", labeled("pool", "a"), needsWork), testNode("a2", labeled("pool", "a"), needsWork),
		testNode("b1", labeled("pool", "b"), needsWork), testNode("c1", needsWork), testNode("c2", needsWork),
		stateConfigMap(st),
	}
}

// statusText is what `tokenroll status` prints.
func (f *fixture) statusText() string {
	f.t.Helper()
	rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, f.gate.State(), f.clock.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	var b strings.Builder
	if err := WriteStatusTable(&b, rep); err != nil {
		f.t.Fatal(err)
	}
	return b.String()
}

// startedUnder lists the nodes of rollout id that have a record, with the
// policy and strategy each started under.
func (f *fixture) startedUnder(id string) map[string]string {
	f.t.Helper()
	out := map[string]string{}
	for _, o := range f.list(nodesGVR, "") {
		n := o.(*corev1.Node)
		if s := readNodeState(n, id); s != nil {
			out[n.Name] = s.Policy + "/" + string(s.Strategy)
		}
	}
	return out
}

// addPolicy creates p, as a person would, and lets the leader's informer
// see it.
func (f *fixture) addPolicy(p *v1alpha1.RolloutPolicy) {
	f.t.Helper()
	if _, err := f.cfg.Policies.TokenrollV1alpha1().RolloutPolicies().Create(f.ctx, p, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	if err := f.term.pol.store.Add(p); err != nil {
		f.t.Fatal(err)
	}
}

// A rollout that names a RolloutPolicy has every one of its nodes follow
// it, whatever the selectors say: its strategy, its maxUnavailable over
// the rollout's nodes (four at once here, where the pools and the flags
// would start one each), its name on each node's record. The policies'
// status still counts the nodes their selectors select.
func TestRolloutPolicyNameCoversEveryNode(t *testing.T) {
	f := newFixture(t, namedCluster(State{Start: &StartRequest{Policy: "b", RequestedAt: t0, RequestedBy: "alice"}})...)
	f.leadWithPolicies(namedPolicies()...)
	f.sync()
	r := f.state().Rollout
	if r == nil {
		t.Fatalf("no rollout planned; waiting: %+v", f.state().Waiting)
	}
	if r.Policy != "b" {
		t.Errorf("rollout policy %q; want b", r.Policy)
	}
	for _, n := range r.Nodes {
		if n.Strategy != KubeletRestart {
			t.Errorf("%s planned with %s; want kubelet-restart, RolloutPolicy b's", n.Name, n.Strategy)
		}
	}
	f.sync()
	got := f.startedUnder(r.ID)
	if len(got) != 4 {
		t.Errorf("%d nodes started (%v); want 4, RolloutPolicy b's maxUnavailable", len(got), got)
	}
	for n, s := range got {
		if s != "b/kubelet-restart" {
			t.Errorf("%s started under %s; want b/kubelet-restart", n, s)
		}
	}
	for name, want := range map[string]int32{"a": 2, "b": 1} {
		p, err := f.cfg.Policies.TokenrollV1alpha1().RolloutPolicies().Get(f.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Nodes != want {
			t.Errorf("RolloutPolicy %s status.nodes %d; want %d (its selector's)", name, p.Status.Nodes, want)
		}
	}
}

// A rollout naming a RolloutPolicy that does not exist, or cannot be used,
// starts no node and says why, naming it and what to do; once it can be
// used, the rollout goes on under it.
func TestRolloutPolicyNameMissing(t *testing.T) {
	badZone := poolPolicy("b", v1alpha1.RolloutPolicySpec{Strategy: v1alpha1.StrategyKubeletRestart,
		Windows: []v1alpha1.MaintenanceWindow{{Start: "01:00", End: "02:00", TimeZone: "Mars/Olympus_Mons"}}})
	for _, c := range []struct {
		name string
		// start: a start request names it; else a running rollout does.
		start   bool
		present *v1alpha1.RolloutPolicy
		want    []string
	}{
		{"start request, missing", true, nil, []string{"RolloutPolicy b", "until that policy exists", "create RolloutPolicy b", "kubectl delete tokenrollout " + startName}},
		{"running rollout, missing", false, nil, []string{"RolloutPolicy b", "until that policy exists", "create RolloutPolicy b", "tokenroll rollout cancel"}},
		{"running rollout, refused", false, badZone, []string{"RolloutPolicy b", "cannot be used", "Mars/Olympus_Mons", "fix its spec", "tokenroll rollout cancel"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := State{Start: &StartRequest{Policy: "b", RequestedAt: t0, RequestedBy: "alice"}}
			if !c.start {
				r := rollout(KubeletRestart, "a1", "a2", "b1", "c1", "c2")
				r.Policy = "b"
				st = stateOf(r)
			}
			f := newFixture(t, namedCluster(st)...)
			ps := namedPolicies()[:1]
			if c.present != nil {
				ps = append(ps, c.present)
			}
			f.leadWithPolicies(ps...)
			f.sync()
			f.sync()
			s := f.state()
			if c.start && s.Rollout != nil {
				t.Errorf("rollout %s started without its policy", s.Rollout.ID)
			}
			id := rolloutID
			if c.start {
				id = startName
			}
			if got := f.startedUnder(id); len(got) > 0 {
				t.Errorf("nodes started without their policy: %v", got)
			}
			w := s.Waiting
			if w == nil || w.Reason != WaitPolicyRefused {
				t.Fatalf("waiting %+v; want %s", w, WaitPolicyRefused)
			}
			for _, m := range c.want {
				if !strings.Contains(w.Message, m) {
					t.Errorf("waiting message %q does not say %q", w.Message, m)
				}
			}
			if rep := f.statusText(); !strings.Contains(rep, "policy-refused") || !strings.Contains(rep, "RolloutPolicy b") {
				t.Errorf("tokenroll status does not say why:\n%s", rep)
			}

			fixed := namedPolicies()[1]
			if c.present != nil {
				if err := f.term.pol.store.Update(fixed); err != nil {
					t.Fatal(err)
				}
			} else {
				f.addPolicy(fixed)
			}
			f.sync()
			f.sync()
			got := f.startedUnder(id)
			if len(got) != 4 {
				t.Errorf("%d nodes started once RolloutPolicy b can be used (%v); want 4", len(got), got)
			}
			for n, s := range got {
				if s != "b/kubelet-restart" {
					t.Errorf("%s started under %s; want b/kubelet-restart", n, s)
				}
			}
			if w := f.state().Waiting; w != nil && w.Reason == WaitPolicyRefused {
				t.Errorf("still waiting: %+v", w)
			}
		})
	}
}

// A coordinator that reads no RolloutPolicies starts no node of a rollout
// that names one, rather than run it under the flags, and says so.
func TestRolloutPolicyNameWithPoliciesOff(t *testing.T) {
	r := rollout(Reboot, "a1", "b1")
	r.Policy = "b"
	f := newFixture(t, namedCluster(stateOf(r))...)
	f.sync()
	f.sync()
	if got := f.startedUnder(rolloutID); len(got) > 0 {
		t.Errorf("nodes started under the flags: %v", got)
	}
	w := f.state().Waiting
	if w == nil || w.Reason != WaitPolicyRefused || !strings.Contains(w.Message, "RolloutPolicy b") || !strings.Contains(w.Message, "--rollout-policies=false") {
		t.Errorf("waiting %+v; want %s naming RolloutPolicy b and --rollout-policies=false", w, WaitPolicyRefused)
	}
}
