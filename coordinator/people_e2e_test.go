package coordinator_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/protocol"
)

// A person uncordons a node while the coordinator drains it, and cordons
// it again at once: through the real watch the coordinator notices, stops,
// halts the rollout on that node without asking for a reboot, and leaves
// the person's cordon in place.
func TestUncordonDuringDrainHaltsWithoutReboot(t *testing.T) {
	nodes := []string{"node-a", "node-b"}
	e := startEnv(t, 1, nodes...)
	// A budget that allows no eviction holds the drain of node-a.
	e.blockEvictions()
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Auto, c.DrainTimeout = false, 2*time.Minute
		c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	e.requestStart(coordinator.Reboot, "")
	e.waitNodes("node-a cordoned by the coordinator", func(m map[string]*corev1.Node) bool {
		s, err := protocol.ParseNodeState(m["node-a"].Annotations[protocol.AnnotationNodeState])
		return m["node-a"].Spec.Unschedulable && err == nil && s.Step == protocol.StepCordoned && s.CordonedByUs
	})
	e.cordon("node-a", false)
	e.cordon("node-a", true)
	st := e.waitState("the rollout halted", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutHalted
	})
	if st.Rollout.HaltReason != coordinator.HaltUncordoned || st.Rollout.HaltNode != "node-a" {
		t.Errorf("halted %s on %s (%s); want Uncordoned on node-a", st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message)
	}
	n, err := e.admin.CoreV1().Nodes().Get(e.ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Annotations[protocol.AnnotationRequest]; ok {
		t.Error("a reboot was requested of a node someone uncordoned")
	}
	s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	if err != nil || s.Step != protocol.StepHalted || s.CordonedByUs {
		t.Errorf("node-a state %+v (%v); want halted, its cordon not ours", s, err)
	}
	// A later sync has seen the halted node: a wrong uncordon would be done.
	e.syncRan()
	if n, err := e.admin.CoreV1().Nodes().Get(e.ctx, "node-a", metav1.GetOptions{}); err != nil || !n.Spec.Unschedulable {
		t.Errorf("node-a was uncordoned; the person's cordon must stay (%v)", err)
	}
	for _, name := range nodes {
		if r := e.fleet.Members[name].Reboots.Load(); r != 0 {
			t.Errorf("node %s rebooted %d times", name, r)
		}
	}
}
