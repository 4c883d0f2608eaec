package coordinator

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/protocol"
)

// A rollout's TokenRollout is written at most once per sync (its creation
// apart), however many of its nodes move in that sync: its status carries
// every node, so a write per node transition would rewrite it thousands of
// times on a large fleet. TOKENROLL_STATUS_WRITES_NODES sets the fleet
// (default 200; 5000 measures the fleet tokenroll is built for).
func TestTokenRolloutWritesAtMostOncePerSync(t *testing.T) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("TOKENROLL_STATUS_WRITES_NODES")); err == nil && v > 0 {
		n = v
	}
	var objs []runtime.Object
	for i := range n {
		objs = append(objs, testNode(fmt.Sprintf("n%04d", i), withReport(oldIssuerReport())))
	}
	objs = append(objs, stateConfigMap(State{}))
	f := newFixture(t, objs...)
	f.cfg.Auto, f.cfg.Strategy, f.cfg.MaxUnavailable = true, KubeletRestart, intstr.FromString("2%")

	syncs, creates, updates, most := 0, 0, 0, 0
	for range 20 * n {
		f.sync()
		syncs++
		k := 0
		for _, w := range f.writes() {
			switch {
			case w.Resource == "tokenrollouts" && w.Verb == "create":
				creates++
			case w.Resource == "tokenrollouts":
				updates++
				k++
			}
		}
		most = max(most, k)
		f.takeEvents()
		r := f.state().Rollout
		if r != nil && r.Phase == RolloutDone {
			break
		}
		for i := range n {
			name := fmt.Sprintf("n%04d", i)
			if r == nil {
				break
			}
			if st := readNodeState(f.node(name), r.ID); st != nil && st.Step == protocol.StepActing {
				f.updateNode(name, func(node *corev1.Node) {
					agentStatus(st.Request, protocol.PhaseDone, "")(node)
					withReport(cleanReport())(node)
				})
			}
		}
		f.clock.Step(time.Second)
	}
	if r := f.state().Rollout; r == nil || r.Phase != RolloutDone || len(r.Nodes) != n {
		t.Fatalf("rollout %+v; want done over %d nodes", r, n)
	}
	t.Logf("%d nodes: %d syncs, %d TokenRollout creations, %d status writes, at most %d in one sync", n, syncs, creates, updates, most)
	if creates != 1 || most > 1 {
		t.Errorf("%d creations, at most %d status writes in one sync; want 1 creation and at most 1 write per sync", creates, most)
	}
}
