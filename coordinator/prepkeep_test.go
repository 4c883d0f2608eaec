package coordinator

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// A reboot's drain records the controllers of the pods it moves, for a
// health gate (evictedPodsReady) to wait for. When the write recording
// them meets a conflict (someone labelled the Node during the drain), the
// next sync writes the same record: it neither drains again nor lists the
// node's pods again, which the drain has emptied, and so does not lose
// the owners.
func TestRebootKeepsDrainedOwnersAcrossAConflict(t *testing.T) {
	web := pod("app", "web-1", "n1", "ReplicaSet", "web")
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport())), testNode("n2"), web, replicaSet("app", "web", 1, 1),
		rolloutConfigMap(rollout(Reboot, "n1")))
	f.sync()
	cordonedAt := started(Reboot, true, t0)
	f.expectWrites(cordonNode("n1", cordonedAt))
	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
	// The drain moved the pod, and someone labelled the node meanwhile,
	// which the leader's cache has not seen yet.
	if err := f.tracker.Delete(podsGVR, "app", "web-1"); err != nil {
		t.Fatal(err)
	}
	f.updateNode("n1", func(n *corev1.Node) { n.Labels["team"] = "web" })
	f.clock.Step(20 * time.Second)
	if _, err := f.syncStale(); !apierrors.IsConflict(err) {
		t.Fatalf("the request written on a stale Node: %v; want a conflict", err)
	}
	f.writes()

	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].NodeState == nil || got[0].NodeState.Step != protocol.StepActing {
		t.Fatalf("after the conflict: %v; want one node patch asking for the reboot", got)
	}
	want := []protocol.OwnerRef{{Kind: "ReplicaSet", Namespace: "app", Name: "web"}}
	if o := got[0].NodeState.Owners; len(o) != 1 || o[0] != want[0] {
		t.Errorf("owners recorded after the conflict: %v; want %v, the drained pod's ReplicaSet", o, want)
	}
	f.expectDrains()
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for reboot (requested by alice)",
		"Normal ActionRequested rollout r-test: drained; asked the agent to reboot (request "+got[0].Request.ID+")")
}

// The health gate (evictedPodsReady) believes a controller's status only
// as far as its pods: a ReplicaSet whose status still counts the pod the
// last node's drain moved (its controller has not seen the drain yet)
// holds the pool until a pod of its own is Ready again.
func TestPolicyHealthGateCountsTheOwnersPods(t *testing.T) {
	finished := done(started(Reboot, true, t0.Add(-2*time.Minute)), t0.Add(-time.Second))
	finished.Owners = []protocol.OwnerRef{{Kind: "ReplicaSet", Namespace: "app", Name: "web"}}
	replacement := pod("app", "web-2", "", "ReplicaSet", "web")
	replacement.Labels = map[string]string{"app": "web"}
	rs := replicaSet("app", "web", 1, 1)
	rs.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	rs.UID = replacement.OwnerReferences[0].UID
	f := newFixture(t, testNode("n1", inStep(finished)), testNode("n2", withReport(oldIssuerReport())), rs, replacement,
		rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{HealthGate: &v1alpha1.HealthGate{EvictedPodsReady: true}}))
	f.sync()
	if f.node("n2").Spec.Unschedulable {
		t.Fatal("n2 started while the ReplicaSet's only pod is not Ready")
	}
	if w := f.state().Waiting; w == nil || w.Reason != WaitHealthGate || !strings.Contains(w.Message, "ReplicaSet/app/web has 0 of 1 replicas ready") {
		t.Fatalf("waiting %+v; want the health gate naming the ReplicaSet", w)
	}
	replacement.Spec.NodeName = "n1"
	replacement.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if err := f.tracker.Update(podsGVR, replacement, "app"); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(healthPoll)
	f.sync()
	if !f.node("n2").Spec.Unschedulable {
		t.Error("n2 not started once the ReplicaSet's pod was Ready")
	}
}

// A node someone made schedulable after its drain finished halts the
// rollout before any action. The halted record still names the
// controllers of the pods the drain moved, also when its first write
// meets a conflict: an administrator reading it, and a health gate, see
// what the node's drain did.
func TestHaltKeepsAFinishedDrainsOwners(t *testing.T) {
	web := pod("app", "web-1", "n1", "ReplicaSet", "web")
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport())), testNode("n2"), web, replicaSet("app", "web", 1, 1),
		rolloutConfigMap(rollout(Reboot, "n1")))
	f.sync()
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0)))
	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
	if err := f.tracker.Delete(podsGVR, "app", "web-1"); err != nil {
		t.Fatal(err)
	}
	// Someone made the node schedulable, which the leader sees, and then
	// labelled it, which it has not seen yet.
	f.updateNode("n1", func(n *corev1.Node) { n.Spec.Unschedulable = false })
	f.catchUp()
	f.updateNode("n1", func(n *corev1.Node) { n.Labels["team"] = "web" })
	f.clock.Step(20 * time.Second)
	if _, err := f.syncStale(); !apierrors.IsConflict(err) {
		t.Fatalf("the halt written on a stale Node: %v; want a conflict", err)
	}
	f.writes()

	f.sync()
	var halted *protocol.NodeState
	for _, w := range f.writes() {
		if w.NodeState != nil && w.NodeState.Step == protocol.StepHalted {
			halted = w.NodeState
		}
	}
	if halted == nil || halted.Reason != HaltUncordoned {
		t.Fatalf("after the conflict: halted record %+v; want n1 halted (%s)", halted, HaltUncordoned)
	}
	want := []protocol.OwnerRef{{Kind: "ReplicaSet", Namespace: "app", Name: "web"}}
	if o := halted.Owners; len(o) != 1 || o[0] != want[0] {
		t.Errorf("owners on the halted record: %v; want %v, the drained pod's ReplicaSet", o, want)
	}
	f.expectDrains()
	if f.term.jobs["n1"] != nil {
		t.Error("the finished drain is still kept once the halt is recorded")
	}
}
