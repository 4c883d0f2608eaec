package replicasim

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

func readyNode(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": "a"}},
		Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
	}
}

func TestSchedulable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(*corev1.Node)
		selector map[string]string
		want     bool
	}{
		{"ready", func(*corev1.Node) {}, nil, true},
		{"not ready", func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionFalse }, nil, false},
		{"no Ready condition", func(n *corev1.Node) { n.Status.Conditions = nil }, nil, false},
		{"cordoned", func(n *corev1.Node) { n.Spec.Unschedulable = true }, nil, false},
		{"tainted NoSchedule", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}}
		}, nil, false},
		{"tainted NoExecute", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "dedicated", Effect: corev1.TaintEffectNoExecute}}
		}, nil, false},
		{"tainted PreferNoSchedule", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "dedicated", Effect: corev1.TaintEffectPreferNoSchedule}}
		}, nil, true},
		// TaintNodesByCondition's taint, which no lifecycle controller lifts
		// in the sandbox: the Ready condition decides.
		{"stale not-ready taint on a Ready node", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule}}
		}, nil, true},
		{"memory pressure", func(n *corev1.Node) {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionTrue})
		}, nil, false},
		{"nodeSelector matches", func(*corev1.Node) {}, map[string]string{"zone": "a"}, true},
		{"nodeSelector does not match", func(*corev1.Node) {}, map[string]string{"zone": "b"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := readyNode("n")
			tc.change(n)
			if got := schedulable(n, tc.selector); got != tc.want {
				t.Errorf("schedulable = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPickNodeSpreadsTiesByName(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	counts := map[string]int{}
	var got []string
	for range 5 {
		n := pickNode(nodes, counts)
		counts[n]++
		got = append(got, n)
	}
	if strings.Join(got, ",") != "a,b,c,a,b" {
		t.Errorf("placed on %v, want a,b,c,a,b", got)
	}
	if n := pickNode(nodes, map[string]int{"a": 2, "b": 1, "c": 1}); n != "b" {
		t.Errorf("picked %s, want b (fewest, first by name)", n)
	}
}

func pod(name, node string, phase corev1.PodPhase, ready bool, created time.Time) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(created), Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
	if ready {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(created)}}
	}
	return p
}

func TestPodsToDelete(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	pods := []*corev1.Pod{
		pod("a-alone", "n4", corev1.PodRunning, true, t0),
		pod("crowded-old", "n2", corev1.PodRunning, true, t0),
		pod("crowded-new", "n2", corev1.PodRunning, true, t0.Add(time.Minute)),
		pod("pending", "n3", corev1.PodPending, false, t0),
		pod("running-not-ready", "n1", corev1.PodRunning, false, t0),
	}
	var got []string
	for _, p := range podsToDelete(pods, 4) {
		got = append(got, p.Name)
	}
	if want := "pending,running-not-ready,crowded-new,crowded-old"; strings.Join(got, ",") != want {
		t.Errorf("deletion order %v, want %s", got, want)
	}
}

func TestComputeStatus(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Generation: 4},
		Spec: appsv1.ReplicaSetSpec{
			MinReadySeconds: 30,
			Template:        corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web", "tier": "front"}}},
		},
	}
	relabelled := pod("relabelled", "n1", corev1.PodRunning, true, now.Add(-time.Hour))
	relabelled.Labels["tier"] = "front"
	active := []*corev1.Pod{
		pod("available", "n1", corev1.PodRunning, true, now.Add(-time.Minute)),
		pod("ready-10s", "n1", corev1.PodRunning, true, now.Add(-10*time.Second)),
		pod("pending", "n2", corev1.PodPending, false, now),
		relabelled,
	}
	status, recheck := computeStatus(rs, active, now)
	want := appsv1.ReplicaSetStatus{Replicas: 4, FullyLabeledReplicas: 1, ReadyReplicas: 3, AvailableReplicas: 2, ObservedGeneration: 4}
	if status.Replicas != want.Replicas || status.FullyLabeledReplicas != want.FullyLabeledReplicas || status.ReadyReplicas != want.ReadyReplicas ||
		status.AvailableReplicas != want.AvailableReplicas || status.ObservedGeneration != want.ObservedGeneration {
		t.Errorf("status %+v, want %+v", status, want)
	}
	if recheck != 20*time.Second {
		t.Errorf("recheck in %s, want 20s (when ready-10s has been ready for minReadySeconds)", recheck)
	}
}

func TestActivePodsCountsOnlyOwnLivePods(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps", UID: "rs-uid"}}
	own := func(p *corev1.Pod, uid types.UID) *corev1.Pod {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: uid, Controller: ptr.To(true)}}
		return p
	}
	now := time.Now()
	deleting := own(pod("deleting", "n1", corev1.PodRunning, true, now), "rs-uid")
	deleting.DeletionTimestamp = ptr.To(metav1.NewTime(now))
	pods := []*corev1.Pod{
		own(pod("mine", "n1", corev1.PodRunning, true, now), "rs-uid"),
		own(pod("previous-web", "n1", corev1.PodRunning, true, now), "other-uid"),
		pod("orphan", "n1", corev1.PodRunning, true, now),
		deleting,
		own(pod("failed", "n1", corev1.PodFailed, false, now), "rs-uid"),
	}
	got := activePods(rs, pods)
	if len(got) != 1 || got[0].Name != "mine" {
		t.Errorf("active %v, want only mine", got)
	}
}

func TestExpectations(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	e := newExpectations(clk)
	key := cache.NewObjectName("apps", "web")
	if !e.satisfied(key) {
		t.Fatal("no expectations: want satisfied")
	}
	e.expectCreations(key, 2)
	e.creationObserved(key)
	if e.satisfied(key) {
		t.Error("one of two creations seen: want unsatisfied")
	}
	e.creationObserved(key)
	if !e.satisfied(key) {
		t.Error("both creations seen: want satisfied")
	}
	e.expectDeletions(key, []string{"web-a"})
	e.deletionObserved(key, "web-other") // an eviction of another pod
	if e.satisfied(key) {
		t.Error("another pod's deletion satisfied ours")
	}
	clk.Step(expectationsTTL + time.Second)
	if !e.satisfied(key) {
		t.Error("expectations older than the TTL still block")
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New(Config{Selector: "app in (", Workers: -1, Namespaces: []string{""}})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"Client is nil", "Selector", "Workers is -1", "empty name"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := New(Config{Client: fake.NewClientset(), Selector: "app=web"}); err != nil {
		t.Errorf("good config: %v", err)
	}
}
