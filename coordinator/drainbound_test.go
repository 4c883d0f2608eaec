package coordinator

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// deafDrainer ignores its context and timeout: each call blocks until the
// test ends.
type deafDrainer struct {
	called chan struct{}
	stop   chan struct{}
}

func newDeafDrainer(t *testing.T) *deafDrainer {
	d := &deafDrainer{called: make(chan struct{}, 8), stop: make(chan struct{})}
	t.Cleanup(func() { close(d.stop) })
	return d
}

func (d *deafDrainer) Drain(context.Context, string, DrainOptions) error {
	d.called <- struct{}{}
	<-d.stop
	return nil
}

func (d *deafDrainer) Evict(context.Context, []corev1.Pod, DrainOptions) error {
	d.called <- struct{}{}
	<-d.stop
	return nil
}

func (d *deafDrainer) awaitCall(t *testing.T) {
	t.Helper()
	select {
	case <-d.called:
	case <-time.After(10 * time.Second):
		t.Fatal("the drainer was not called")
	}
}

func TestBoundedDrain(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	d := newDeafDrainer(t)
	call := func(ctx context.Context) error { return d.Drain(ctx, "n1", DrainOptions{Timeout: time.Minute}) }

	res := make(chan error, 1)
	go func() { res <- boundedDrain(context.Background(), clk, time.Minute, call) }()
	d.awaitCall(t)
	clk.Step(time.Minute + drainerGrace - time.Second)
	select {
	case err := <-res:
		t.Fatalf("gave up before the grace passed: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	clk.Step(time.Second)
	select {
	case err := <-res:
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ignoring its context") {
			t.Errorf("past the grace: %v; want a deadline error saying the drainer ignored its context", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still waiting for a drainer past its timeout and the grace")
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { res <- boundedDrain(ctx, clk, time.Minute, call) }()
	d.awaitCall(t)
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still waiting for a drainer whose context ended")
	}

	boom := errors.New("boom")
	if err := boundedDrain(context.Background(), clk, time.Minute, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("a call that returns: %v, want its own error", err)
	}
}

// A Drainer that ignores its context halts its node with DrainTimeout once
// its timeout and the grace have passed, and the leader's term still ends
// at once.
func TestDeafDrainerHaltsTheNode(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	d := newDeafDrainer(t)
	f.cfg.Drainer = d
	f.sync() // cordoned
	f.sync() // the drain starts
	d.awaitCall(t)
	f.writes()
	f.clock.Step(f.cfg.DrainTimeout + drainerGrace)
	f.awaitDrainEnd()
	f.sync()
	s := f.state()
	if s.Rollout.Phase != RolloutHalted || s.Rollout.HaltReason != HaltDrainTimeout || s.Rollout.HaltNode != "n1" ||
		!strings.Contains(s.Rollout.Message, "ignoring its context") {
		t.Errorf("rollout %s %s on %s: %q; want halted, DrainTimeout on n1, saying the drainer ignores its context",
			s.Rollout.Phase, s.Rollout.HaltReason, s.Rollout.HaltNode, s.Rollout.Message)
	}
	st, err := protocol.ParseNodeState(f.node("n1").Annotations[protocol.AnnotationNodeState])
	if err != nil || st.Step != protocol.StepHalted || st.Reason != HaltDrainTimeout {
		t.Errorf("n1: %+v %v; want halted with DrainTimeout", st, err)
	}

	// Another drain the deaf drainer holds: the term ends without it.
	f.editState(func(s *State) { s.Rollout.Phase = RolloutRunning; s.Rollout.HaltReason, s.Rollout.HaltNode = "", "" })
	f.updateNode("n1", func(n *corev1.Node) {
		delete(n.Annotations, protocol.AnnotationNodeState)
		n.Spec.Unschedulable = false
	})
	f.sync()
	f.sync()
	d.awaitCall(t)
	term := f.term
	f.term = nil
	ended := make(chan struct{})
	go func() {
		term.stopPreparations()
		term.queue.ShutDown()
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the term did not end: it waits for a drainer that ignores its context")
	}
}
