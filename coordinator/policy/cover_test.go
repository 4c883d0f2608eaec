package policy

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

var created = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func rp(name string, age int, sel map[string]string, mutate ...func(*v1alpha1.RolloutPolicySpec)) *Policy {
	p := &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 3, CreationTimestamp: metav1.NewTime(created.Add(time.Duration(age) * time.Hour))}}
	if sel != nil {
		p.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: sel}
	}
	for _, m := range mutate {
		m(&p.Spec)
	}
	return Compile(p)
}

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func TestCover(t *testing.T) {
	gpu := rp("gpu", 1, map[string]string{"pool": "gpu"})
	big := rp("big", 2, map[string]string{"size": "big"})
	def := rp("fallback", 3, nil)
	late := rp("late-default", 4, nil)
	nodes := []*corev1.Node{
		node("g1", map[string]string{"pool": "gpu"}),
		node("g2", map[string]string{"pool": "gpu", "size": "big"}),
		node("b1", map[string]string{"size": "big"}),
		node("w1", map[string]string{"pool": "web"}),
	}
	cov := Cover([]*Policy{late, def, big, gpu}, nodes)
	if cov.Of["g1"] != gpu || cov.Of["b1"] != big || cov.Of["w1"] != def {
		t.Errorf("coverage %v", cov.Of)
	}
	if _, ok := cov.Of["g2"]; ok || !slices.Equal(cov.Refused["g2"], []string{"gpu", "big"}) {
		t.Errorf("g2, selected by gpu and big: covered by %v, refused by %v", cov.Of["g2"], cov.Refused["g2"])
	}
	if cov.Default != def || !slices.Equal(cov.SecondDefaults, []string{"late-default"}) {
		t.Errorf("default %v, second defaults %v: want the oldest, fallback", cov.Default.Name, cov.SecondDefaults)
	}
	if cov.Nodes["gpu"] != 1 || cov.Nodes["fallback"] != 1 || cov.Nodes["late-default"] != 0 {
		t.Errorf("node counts %v", cov.Nodes)
	}
	for _, c := range []struct {
		p      *Policy
		status metav1.ConditionStatus
		reason string
		msg    string
	}{
		{gpu, metav1.ConditionFalse, ReasonSelectorOverlap, "policy big also selects 1 of its nodes (g2, for one): tokenroll leaves those nodes alone until one policy alone selects them or a TokenRollout names one (spec.policyName); it alone covers 1 other node"},
		{big, metav1.ConditionFalse, ReasonSelectorOverlap, "policy gpu also selects 1 of its nodes (g2, for one)"},
		{def, metav1.ConditionTrue, ReasonValid, "covers 1 node"},
		{late, metav1.ConditionFalse, ReasonSecondDefault, "policy fallback is the default policy already (no nodeSelector, created first); this one selects no node (only a TokenRollout naming it in spec.policyName uses it)"},
	} {
		got := Accepted(c.p, cov)
		if got.Status != c.status || got.Reason != c.reason || !strings.Contains(got.Message, c.msg) || got.ObservedGeneration != 3 {
			t.Errorf("%s: %+v, want %s %s %q", c.p.Name, got, c.status, c.reason, c.msg)
		}
	}
}

// Assign moves the rollout's nodes to the policy it names, refused ones
// included, and counts them there; without that policy they are refused
// under its name. The overlaps stay the selectors'.
func TestCoverAssign(t *testing.T) {
	gpu := rp("gpu", 1, map[string]string{"pool": "gpu"})
	big := rp("big", 2, map[string]string{"size": "big"})
	nodes := []*corev1.Node{
		node("g1", map[string]string{"pool": "gpu"}),
		node("g2", map[string]string{"pool": "gpu", "size": "big"}),
		node("b1", map[string]string{"size": "big"}),
		node("n1", nil),
	}
	cov := Cover([]*Policy{gpu, big}, nodes)
	cov.Assign("big", big, []string{"g1", "g2", "n1"})
	got := map[string]string{}
	for n, p := range cov.Of {
		got[n] = p.Name
	}
	if want := map[string]string{"g1": "big", "g2": "big", "b1": "big", "n1": "big"}; !maps.Equal(got, want) {
		t.Errorf("Of %v; want %v", got, want)
	}
	if len(cov.Refused) != 0 || cov.Nodes["big"] != 4 || cov.Nodes["gpu"] != 0 {
		t.Errorf("refused %v, nodes %v; want none refused, big 4, gpu 0", cov.Refused, cov.Nodes)
	}
	if len(cov.Overlaps["gpu"]) != 1 {
		t.Errorf("overlaps %v; want the selectors' (gpu and big share g2)", cov.Overlaps)
	}

	cov = Cover([]*Policy{gpu, big}, nodes)
	cov.Assign("gone", nil, []string{"g1", "n1"})
	if _, ok := cov.Of["g1"]; ok || !slices.Equal(cov.Refused["g1"], []string{"gone"}) || !slices.Equal(cov.Refused["n1"], []string{"gone"}) || cov.Nodes["gpu"] != 0 {
		t.Errorf("of %v, refused %v, nodes %v; want g1 and n1 refused under gone", cov.Of, cov.Refused, cov.Nodes)
	}
}

func TestCompileProblems(t *testing.T) {
	p := rp("broken", 0, nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.Windows = []v1alpha1.MaintenanceWindow{{Start: "01:00", End: "02:00", TimeZone: "Nowhere/Land"}}
		s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "http://p", AlertNames: []string{"(unclosed"}}}
	})
	c := Accepted(p, Cover([]*Policy{p}, nil))
	if c.Status != metav1.ConditionFalse || c.Reason != ReasonInvalid {
		t.Fatalf("%+v", c)
	}
	for _, want := range []string{`time zone "Nowhere/Land"`, `alertNames[0] "(unclosed" does not compile`, "fix the spec"} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("%q lacks %q", c.Message, want)
		}
	}
}

func TestLimit(t *testing.T) {
	for _, c := range []struct {
		v     *intstr.IntOrString
		nodes int
		want  int
	}{
		{nil, 10, 1}, {ptrIOS(intstr.FromInt32(3)), 10, 3}, {ptrIOS(intstr.FromString("25%")), 10, 2},
		{ptrIOS(intstr.FromString("10%")), 5, 1}, {ptrIOS(intstr.FromString("100%")), 7, 7},
	} {
		p := rp("p", 0, nil, func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = c.v })
		if got := p.Limit(c.nodes); got != c.want {
			t.Errorf("maxUnavailable %v of %d nodes: %d, want %d", c.v, c.nodes, got, c.want)
		}
	}
}

// The deadline ceiling resolves like maxUnavailable, on the same pool,
// and is never below it: omitted, or resolving lower, it is the limit.
func TestDeadlineLimit(t *testing.T) {
	for _, c := range []struct {
		base, ceiling *intstr.IntOrString
		nodes         int
		want          int
	}{
		{nil, nil, 10, 1},
		{ptrIOS(intstr.FromInt32(2)), nil, 10, 2},
		{nil, ptrIOS(intstr.FromInt32(4)), 10, 4},
		{ptrIOS(intstr.FromInt32(1)), ptrIOS(intstr.FromString("50%")), 10, 5},
		{ptrIOS(intstr.FromInt32(3)), ptrIOS(intstr.FromString("10%")), 10, 3},
		{ptrIOS(intstr.FromString("20%")), ptrIOS(intstr.FromString("40%")), 20, 8},
	} {
		p := rp("p", 0, nil, func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable, s.DeadlineMaxUnavailable = c.base, c.ceiling })
		if got := p.DeadlineLimit(c.nodes); got != c.want {
			t.Errorf("maxUnavailable %v, deadlineMaxUnavailable %v of %d nodes: %d, want %d", c.base, c.ceiling, c.nodes, got, c.want)
		}
	}
	bad := rp("p", 0, nil, func(s *v1alpha1.RolloutPolicySpec) { s.DeadlineMaxUnavailable = ptrIOS(intstr.FromInt32(0)) })
	if len(bad.Problems) != 1 || !strings.Contains(bad.Problems[0], "deadlineMaxUnavailable") {
		t.Errorf("deadlineMaxUnavailable 0: problems %q", bad.Problems)
	}
}

func ptrIOS(v intstr.IntOrString) *intstr.IntOrString { return &v }

func TestZoneOf(t *testing.T) {
	n := node("a", map[string]string{DefaultTopologyKey: "z1", "rack": "r7"})
	if z := rp("p", 0, nil).ZoneOf(n); z != "" {
		t.Errorf("without zones: %q", z)
	}
	if z := rp("p", 0, nil, func(s *v1alpha1.RolloutPolicySpec) { s.Zones = &v1alpha1.ZonePolicy{} }).ZoneOf(n); z != "z1" {
		t.Errorf("default key: %q", z)
	}
	if z := rp("p", 0, nil, func(s *v1alpha1.RolloutPolicySpec) { s.Zones = &v1alpha1.ZonePolicy{TopologyKey: "rack"} }).ZoneOf(n); z != "r7" {
		t.Errorf("rack key: %q", z)
	}
}
