package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/protocol"
)

// A planned kubelet-restart rollout costs each node three Node writes
// (cordon; the request; done and uncordoned) and two Events (Cordoned,
// Verified), and the rollout one RolloutPlanned Event on its TokenRollout: the
// coordinator's requests, which its client's rate limit paces, are what a
// large fleet's rollout waits on.
func TestKubeletRestartRolloutWritesPerNode(t *testing.T) {
	const n = 6
	var objs []runtime.Object
	for i := range n {
		objs = append(objs, testNode(fmt.Sprintf("n%d", i), withReport(oldIssuerReport())))
	}
	objs = append(objs, stateConfigMap(State{}))
	f := newFixture(t, objs...)
	f.cfg.Auto, f.cfg.Strategy, f.cfg.MaxUnavailable = true, KubeletRestart, intstr.FromInt32(3)

	patches := map[string]int{}
	other := 0
	var events []string
	for range 10 * n {
		f.sync()
		for _, w := range f.writes() {
			if w.Resource == "nodes" && w.Verb == "patch" {
				patches[w.Name]++
			} else if w.Resource != "tokenrollouts" {
				other++
			}
		}
		events = append(events, f.takeEvents()...)
		// Each agent answers its request, and reports fresh tokens.
		for i := range n {
			name := fmt.Sprintf("n%d", i)
			if st := readNodeState(f.node(name), f.state().Rollout.ID); st != nil && st.Step == protocol.StepActing {
				f.updateNode(name, func(node *corev1.Node) {
					agentStatus(st.Request, protocol.PhaseDone, "")(node)
					withReport(cleanReport())(node)
				})
			}
		}
		f.clock.Step(time.Second)
		if r := f.state().Rollout; r != nil && r.Phase == RolloutDone {
			break
		}
	}
	if r := f.state().Rollout; r == nil || r.Phase != RolloutDone || len(r.Nodes) != n {
		t.Fatalf("rollout %+v; want done over %d nodes", r, n)
	}
	for i := range n {
		if name := fmt.Sprintf("n%d", i); patches[name] != 3 {
			t.Errorf("node %s: %d Node writes, want 3 (cordon, request, done)", name, patches[name])
		}
	}
	if other != 0 {
		t.Errorf("%d writes of other objects", other)
	}
	reasons := map[string]int{}
	for _, e := range events {
		if f := strings.Fields(e); len(f) > 1 {
			reasons[f[1]]++
		}
	}
	want := map[string]int{"RolloutPlanned": 1, "Cordoned": n, "Verified": n}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Errorf("Events by reason %v, want %v:\n  %s", reasons, want, strings.Join(events, "\n  "))
	}
}
