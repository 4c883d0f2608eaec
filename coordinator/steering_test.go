package coordinator

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/protocol"
)

// steer asks for a pause, resume or cancel of the active rollout as
// `tokenroll rollout pause|resume|cancel` does: it checks the request
// against the rollout's phase, records it in the state and returns it;
// the coordinator applies it.
func (f *fixture) steer(verb Verb) SteerRequest {
	f.t.Helper()
	var req SteerRequest
	f.editState(func(st *State) {
		r := st.Active()
		if r == nil {
			f.t.Fatalf("%s: no rollout is active", verb)
		}
		if _, err := Steer(verb, r.Phase); err != nil {
			f.t.Fatalf("the CLI refuses to %s rollout %s: %v", verb, r.ID, err)
		}
		req = SteerRequest{Verb: verb, Rollout: r.ID, RequestedAt: f.clock.Now(), RequestedBy: "alice"}
		st.Steer = &req
	})
	return req
}

// request records a steering request as written, unchecked: by a CLI
// that saw an earlier state, or by hand.
func (f *fixture) request(req SteerRequest) {
	f.t.Helper()
	f.editState(func(st *State) { st.Steer = &req })
}

// applied is r after the coordinator applied req at at, moving it to
// phase to; what it says of it is in Steered.
func applied(r *Rollout, req SteerRequest, to RolloutPhase, at time.Time) *Rollout {
	r.Steered = fmt.Sprintf("%s requested by alice at %s: %s, was %s", req.Verb, req.RequestedAt.UTC().Format(time.RFC3339), to, r.Phase)
	r.Phase, r.UpdatedAt = to, at
	return r
}

// Pausing releases a node cordoned but not acted on; resuming starts it
// again. The coordinator writes each phase, says what it did and clears
// the request, and acts on its own write before the cache catches up.
func TestPauseReleasesAndResumeRestarts(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	f.sync()
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0)))
	f.takeEvents()

	f.clock.Step(10 * time.Second)
	pause := f.steer(VerbPause)
	f.sync()
	paused := applied(rollout(Reboot, "n1", "n2"), pause, RolloutPaused, t0.Add(10*time.Second))
	f.expectWrites(updateState(stateOf(paused)), releaseNode("n1", true))
	f.expectEvents("Normal Released rollout r-test: released before any action, the rollout is paused; it stays pending")
	f.expectDrains()
	if _, err := f.syncStale(); err != nil {
		t.Fatal(err)
	}
	f.expectWrites() // its own write read back: not applied twice
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites()

	resume := f.steer(VerbResume)
	f.sync()
	resumed := applied(paused, resume, RolloutRunning, t0.Add(70*time.Second))
	resumed.Message = "resumed by alice"
	f.expectWrites(updateState(stateOf(resumed)), cordonNode("n1", started(Reboot, true, t0.Add(70*time.Second))))
}

// A paused rollout still verifies the node it acted on, and starts no
// other.
func TestPauseFinishesTheNodeActedOn(t *testing.T) {
	const req = "r-test-0000beef"
	st := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	r := rollout(KubeletRestart, "n1", "n2")
	r.Phase = RolloutPaused
	f := newFixture(t, testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseDone, "")), testNode("n2"), rolloutConfigMap(r))
	f.sync()
	doneAt := done(st, t0)
	f.expectWrites(patchNode("n1", &doneAt, ptr(false)))
	f.sync()
	f.expectWrites()
}

// Cancelling releases a cordoned node and ends the rollout at once; a node
// being acted on is finished first.
func TestCancel(t *testing.T) {
	t.Run("cordoned", func(t *testing.T) {
		f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
		f.sync()
		f.writes()
		f.clock.Step(10 * time.Second)
		cancel := f.steer(VerbCancel)
		f.sync()
		at := t0.Add(10 * time.Second)
		cancelled := applied(rollout(Reboot, "n1", "n2"), cancel, RolloutCancelled, at)
		ended := *cancelled
		f.expectWrites(updateState(stateOf(cancelled)), releaseNode("n1", true), updateState(finished(&ended, RolloutCancelled, at)))
		f.sync()
		f.expectWrites()
	})
	t.Run("acting", func(t *testing.T) {
		const req = "r-test-0000beef"
		st := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
		r := withPhase(rollout(KubeletRestart, "n1", "n2"), RolloutCancelled)
		f := newFixture(t, testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseRunning, "")), testNode("n2"), rolloutConfigMap(r))
		f.sync()
		f.expectWrites()
		f.updateNode("n1", agentStatus(req, protocol.PhaseDone, ""))
		f.clock.Step(time.Minute)
		f.sync()
		doneAt := done(st, t0.Add(time.Minute))
		f.expectWrites(patchNode("n1", &doneAt, ptr(false)),
			updateState(finished(withPhase(rollout(KubeletRestart, "n1", "n2"), RolloutCancelled), RolloutCancelled, t0.Add(time.Minute))))
	})
}

func withPhase(r *Rollout, p RolloutPhase) *Rollout {
	r.Phase = p
	return r
}

// Resuming a halted rollout retries the node it halted on.
func TestResumeRetriesTheHaltedNode(t *testing.T) {
	h := halted(started(Reboot, true, t0.Add(-time.Hour)), t0.Add(-50*time.Minute), HaltDrainFailed, "draining node n1: refused")
	st := haltedState(rollout(Reboot, "n1", "n2"), "n1", HaltDrainFailed, "draining node n1: refused", t0.Add(-50*time.Minute))
	f := newFixture(t, testNode("n1", inStep(h)), testNode("n2"), stateConfigMap(st))
	f.sync()
	f.expectWrites()
	resume := f.steer(VerbResume)
	f.sync()
	resumed := applied(st.Rollout, resume, RolloutRunning, t0)
	resumed.HaltReason, resumed.HaltNode, resumed.Message = "", "", "resumed by alice; it had halted: DrainFailed: draining node n1: refused"
	f.expectWrites(updateState(stateOf(resumed)), cordonNode("n1", started(Reboot, true, t0)))
}

// A request the rollout's phase does not allow, or for a rollout no longer
// active, is refused: the coordinator clears it, says why on the rollout it
// names, and changes nothing else.
func TestSteerRefused(t *testing.T) {
	cases := []struct {
		name  string
		state State
		req   SteerRequest
		// steered is what the coordinator says on the rollout ("": the
		// request names another rollout: nothing).
		steered string
	}{
		// A spec that asks for the phase the rollout is in is observed,
		// and steers nothing.
		{"resume a running rollout", stateOf(rollout(Reboot, "n1")), SteerRequest{Verb: VerbResume, Rollout: rolloutID}, ""},
		{"pause a halted rollout", haltedState(rollout(Reboot, "n1"), "n1", HaltDrainFailed, "draining node n1: refused", t0.Add(-time.Minute)),
			SteerRequest{Verb: VerbPause, Rollout: rolloutID}, "pause requested by alice refused: cannot pause a rollout that is halted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n1 := testNode("n1")
			switch {
			case c.state.Rollout.Phase == RolloutHalted:
				n1 = testNode("n1", inStep(halted(started(Reboot, true, t0.Add(-time.Hour)), t0.Add(-time.Minute), HaltDrainFailed, "draining node n1: refused")))
			case c.state.Active() != nil:
				n1 = testNode("n1", cordoned, inStep(started(Reboot, true, t0.Add(-time.Minute))))
			}
			f := newFixture(t, n1, stateConfigMap(c.state))
			f.drainer.holdCalls()
			c.req.RequestedAt, c.req.RequestedBy = t0.Add(-time.Second), "alice"
			f.request(c.req)
			f.sync()
			want := c.state
			r := *want.Rollout
			r.Steered = c.steered
			want.Rollout = &r
			f.expectWrites(updateState(want))
			f.sync()
			f.expectWrites()
			if st := f.state(); st.Steer != nil {
				t.Errorf("the request is still there: %+v", st.Steer)
			}
		})
	}
}

// While the revision gate is closed no node starts, and a node cordoned
// but not acted on is released; it starts again when the gate opens.
func TestGateClosingReleasesACordonedNode(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	f.sync()
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0)))
	f.drainer.holdCalls()
	f.sync()
	f.takeEvents()

	const why = "issuer rolling out: kube-apiserver-a sign with https://new.tokenroll.test; kube-apiserver-b sign with https://old.tokenroll.test"
	f.gate.Set(GateState{Provider: GateStaticPods, Message: why})
	f.clock.Step(10 * time.Second)
	f.sync()
	gateWait := "the revision gate is closed; no node starts until it opens (gate=" + why + ")"
	f.expectWrites(releaseNode("n1", true), waitingOn(rollout(Reboot, "n1", "n2"), WaitGateClosed, gateWait, t0.Add(10*time.Second)))
	f.expectEvents("Normal Released rollout r-test: released before any action, the revision gate closed: " + why + "; it stays pending")
	if f.counter("tokenroll_rollout_waiting", "reason", WaitGateClosed) != 1 ||
		f.counter("tokenroll_rollout_waiting_since_timestamp_seconds", "", "") != float64(t0.Add(10*time.Second).Unix()) {
		t.Errorf("the metrics do not say the rollout waits for the gate since %s", t0.Add(10*time.Second))
	}
	f.awaitDrainEnd() // the drain under way was stopped
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})

	for range 3 {
		f.clock.Step(time.Minute)
		f.sync()
		f.expectWrites()
	}
	f.gate.Set(GateState{Provider: GateStaticPods, Open: true, Message: "2 kube-apiserver pods Ready, all signing with " + newIssuer})
	f.sync()
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0.Add(190*time.Second))), updateState(stateOf(rollout(Reboot, "n1", "n2"))))
	if f.counter("tokenroll_rollout_waiting", "reason", WaitGateClosed) != 0 || f.counter("tokenroll_rollout_waiting_since_timestamp_seconds", "", "") != 0 {
		t.Error("the metrics still say the rollout waits")
	}
}

// A closed gate starts nothing, but a node already acted on is verified
// and released.
func TestGateClosedStillVerifies(t *testing.T) {
	const req = "r-test-0000beef"
	st := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	f := newFixture(t, testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseRunning, "")), testNode("n2"),
		rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
	f.sync()
	f.expectWrites()
	f.gate.Set(GateState{Provider: GateStaticPods, Message: "kube-apiserver-b not Ready"})
	f.updateNode("n1", agentStatus(req, protocol.PhaseDone, ""))
	f.sync()
	doneAt := done(st, t0)
	f.expectWrites(patchNode("n1", &doneAt, ptr(false)), waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitGateClosed,
		"the revision gate is closed; no node starts until it opens (gate=kube-apiserver-b not Ready)", t0))
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites()
}

// Nodes out of service count against maxUnavailable, whoever took them
// out; a planned node already cordoned disrupts nothing more and goes ahead.
func TestMaxUnavailableCountsNodesOutOfService(t *testing.T) {
	const req = "r-test-0000beef"
	const waitMsg = "nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready"
	inFlight := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	cases := []struct {
		name  string
		limit intstr.IntOrString
		nodes []*corev1.Node
		want  []apiWrite
	}{
		{"a node cordoned by someone else", intstr.FromInt32(1), nodes(testNode("n3", cordoned)),
			[]apiWrite{waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitMaxUnavailable, waitMsg+" (outOfService=1, maxUnavailable=1, nodesWaiting=2, outOfServiceNodes=n3 cordoned)", t0)}},
		{"a NotReady node", intstr.FromInt32(1), nodes(testNode("n3", notReady)),
			[]apiWrite{waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitMaxUnavailable, waitMsg+" (outOfService=1, maxUnavailable=1, nodesWaiting=2, outOfServiceNodes=n3 NotReady)", t0)}},
		{"room for one more", intstr.FromInt32(2), nodes(testNode("n3", cordoned)),
			[]apiWrite{cordonNode("n1", started(KubeletRestart, true, t0))}},
		{"half of four nodes", intstr.FromString("50%"), nodes(testNode("n3"), testNode("n4")),
			[]apiWrite{cordonNode("n1", started(KubeletRestart, true, t0)), cordonNode("n2", started(KubeletRestart, true, t0))}},
		{"a planned node found cordoned goes ahead", intstr.FromInt32(1), nodes(testNode("n2", cordoned), testNode("n3")),
			[]apiWrite{cordonNode("n2", started(KubeletRestart, false, t0))}},
		{"two planned nodes found cordoned take turns", intstr.FromInt32(1), nodes(testNode("n1", cordoned), testNode("n2", cordoned), testNode("n3")),
			[]apiWrite{cordonNode("n1", started(KubeletRestart, false, t0))}},
		{"a planned node left cordoned as found after its turn still counts", intstr.FromInt32(1),
			nodes(testNode("n1", cordoned, inStep(done(acting(started(KubeletRestart, false, t0.Add(-time.Minute)), t0.Add(-time.Minute), req), t0.Add(-time.Second))))),
			[]apiWrite{waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitMaxUnavailable, waitMsg+" (outOfService=1, maxUnavailable=1, nodesWaiting=1)", t0),
				waitingOn(withEstimate(rollout(KubeletRestart, "n1", "n2"), Estimate{At: t0, Completion: t0.Add(59 * time.Second), PerNode: 59 * time.Second,
					Measured: 1, Pending: 1, MaxUnavailable: 1}), WaitMaxUnavailable, waitMsg+" (outOfService=1, maxUnavailable=1, nodesWaiting=1)", t0)}},
		{"a planned node the Machine Config daemon updates waits and counts", intstr.FromInt32(1),
			nodes(testNode("n1", cordoned, func(n *corev1.Node) { n.Annotations[annotationMCOState] = "Working" }), testNode("n3")),
			[]apiWrite{waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitMaxUnavailable,
				waitMsg+" (outOfService=1, maxUnavailable=1, nodesWaiting=1, outOfServiceNodes=n1 cordoned, machineConfigUpdating=n1=Working)", t0)}},
		{"a planned node NotReady waits and counts", intstr.FromInt32(2), nodes(testNode("n1", notReady), testNode("n3")),
			[]apiWrite{cordonNode("n2", started(KubeletRestart, true, t0))}},
		{"our node in flight", intstr.FromInt32(1), nodes(testNode("n1", cordoned, inStep(inFlight)), testNode("n3")), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			have := map[string]bool{}
			var objects []runtime.Object
			for _, n := range c.nodes {
				have[n.Name] = true
				objects = append(objects, n)
			}
			for _, name := range []string{"n1", "n2"} {
				if !have[name] {
					objects = append(objects, testNode(name))
				}
			}
			f := newFixture(t, append(objects, rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))...)
			f.cfg.MaxUnavailable = c.limit
			f.sync()
			f.expectWrites(c.want...)
		})
	}
}

func nodes(n ...*corev1.Node) []*corev1.Node { return n }

// steps reads each named node's step from its node-state annotation; ""
// when it has none.
func (f *fixture) steps(names ...string) map[string]protocol.Step {
	f.t.Helper()
	out := map[string]protocol.Step{}
	for _, name := range names {
		v, ok := f.node(name).Annotations[protocol.AnnotationNodeState]
		if !ok {
			out[name] = ""
			continue
		}
		ns, err := protocol.ParseNodeState(v)
		if err != nil {
			f.t.Fatalf("node %s: %v", name, err)
		}
		out[name] = ns.Step
	}
	return out
}

// answerRequests reports every request written on the named nodes done, as
// their agents would.
func (f *fixture) answerRequests(names ...string) {
	f.t.Helper()
	for _, name := range names {
		n := f.node(name)
		v, ok := n.Annotations[protocol.AnnotationRequest]
		if !ok {
			continue
		}
		req, err := protocol.ParseRequest(v)
		if err != nil {
			f.t.Fatalf("node %s: %v", name, err)
		}
		if st, err := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus]); err == nil && st.ID == req.ID {
			continue
		}
		f.updateNode(name, agentStatus(req.ID, protocol.PhaseDone, ""))
	}
}

// active is the rollout under way, or nil.
func (f *fixture) active() *Rollout {
	st := f.state()
	return st.Active()
}

// Nodes someone else cordoned are out of service already, but working on
// them is still a disruption: at max-unavailable=1 they are worked on one at
// a time, each starting only once the one before has finished.
func TestNodesCordonedBySomeoneElseTakeTurns(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4"}
	var objects []runtime.Object
	for _, name := range names {
		objects = append(objects, testNode(name, cordoned))
	}
	f := newFixture(t, append(objects, rolloutConfigMap(rollout(KubeletRestart, names...)))...)
	f.cfg.MaxUnavailable = intstr.FromInt32(1)

	var order []string
	seen := map[string]bool{}
	for i := 0; i < 40 && len(order) < len(names); i++ {
		f.sync()
		var working []string
		for name, step := range f.steps(names...) {
			if step.InProgress() {
				working = append(working, name)
				if !seen[name] {
					seen[name] = true
					order = append(order, name)
				}
			}
		}
		if len(working) > 1 {
			t.Fatalf("sync %d: %v are worked on at once; want one at a time at max-unavailable=1", i, working)
		}
		f.answerRequests(names...)
		f.clock.Step(time.Minute)
	}
	for i := 0; i < 10 && f.active() != nil; i++ {
		f.sync()
		f.answerRequests(names...)
		f.clock.Step(time.Minute)
	}
	if len(order) != len(names) {
		t.Fatalf("started %v; want all of %v, one after the other", order, names)
	}
	for name, step := range f.steps(names...) {
		if step != protocol.StepDone {
			t.Errorf("node %s ends at step %q; want %q", name, step, protocol.StepDone)
		}
		if !f.node(name).Spec.Unschedulable {
			t.Errorf("node %s was uncordoned; someone else cordoned it, so it stays cordoned", name)
		}
	}
	if r := f.active(); r != nil {
		t.Errorf("rollout still %s; want it finished", r.Phase)
	}
}

// A node the Machine Config daemon is updating is not touched while others
// go ahead; it starts once the daemon records Done.
func TestMachineConfigUpdateWaits(t *testing.T) {
	for _, found := range []string{"schedulable", "cordoned by the daemon"} {
		t.Run(found, func(t *testing.T) {
			n1 := testNode("n1", func(n *corev1.Node) { n.Annotations[annotationMCOState] = "Working" })
			if found != "schedulable" {
				cordoned(n1)
			}
			f := newFixture(t, n1, testNode("n2"), testNode("n3"), rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
			f.cfg.MaxUnavailable = intstr.FromInt32(2)
			f.sync()
			if got := f.steps("n1", "n2"); got["n1"] != "" || got["n2"] != protocol.StepCordoned {
				t.Fatalf("steps %v; want n1 untouched while the Machine Config daemon works on it, n2 cordoned", got)
			}
			f.sync()
			f.clock.Step(time.Minute)
			f.sync()
			if got := f.steps("n1"); got["n1"] != "" {
				t.Fatalf("n1 at step %q while the Machine Config daemon works on it; want untouched", got["n1"])
			}
			f.updateNode("n1", func(n *corev1.Node) { n.Annotations[annotationMCOState] = "Done" })
			f.sync()
			if got := f.steps("n1"); got["n1"] != protocol.StepCordoned {
				t.Fatalf("n1 at step %q once the Machine Config daemon is done; want %q", got["n1"], protocol.StepCordoned)
			}
		})
	}
}

// A new leader resumes from the Node annotations and the ConfigMap: it does
// not write a request already written, and repeats a drain it finds under
// way.
func TestLeaderChange(t *testing.T) {
	t.Run("after the request", func(t *testing.T) {
		f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(KubeletRestart, "n1")))
		f.sync()
		f.sync()
		got := f.writes()
		id := requestIn(t, got[len(got)-1], protocol.ActionKubeletRestart, "n1", t0)

		f.lead()
		f.clock.Step(time.Minute)
		f.sync()
		f.expectWrites()
		if r, _ := protocol.ParseRequest(f.node("n1").Annotations[protocol.AnnotationRequest]); r.ID != id {
			t.Errorf("the request on n1 is %q; want the first leader's %q", r.ID, id)
		}
		f.updateNode("n1", agentStatus(id, protocol.PhaseDone, ""))
		f.sync()
		doneAt := done(acting(started(KubeletRestart, true, t0), t0, id), t0.Add(time.Minute))
		f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(finished(rollout(KubeletRestart, "n1"), RolloutDone, t0.Add(time.Minute))))
		// Verified: the request is gone, so no agent can find it to carry
		// out again.
		if raw, ok := f.node("n1").Annotations[protocol.AnnotationRequest]; ok {
			t.Errorf("the request on n1 is still there once verified: %s", raw)
		}
	})
	t.Run("during the drain", func(t *testing.T) {
		f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
		f.sync()
		f.drainer.holdCalls()
		f.sync()
		f.writes()

		f.lead() // the first leader's drain is cancelled with its term
		f.sync()
		f.expectWrites()
		f.drainer.releaseCalls(nil)
		f.awaitDrainEnd()
		f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute}, drainCall{Node: "n1", Timeout: 10 * time.Minute})
		f.clock.Step(30 * time.Second)
		f.sync()
		got := f.writes()
		if len(got) != 1 {
			t.Fatalf("writes %v; want one request", got)
		}
		requestIn(t, got[0], protocol.ActionReboot, "n1", t0.Add(30*time.Second))
	})
	// The API server refuses a decision taken on a cache older than the
	// last leader's write (the merge patch carries the resourceVersion).
	// The fake clientset does not check it; the fixture does, as the API
	// server would.
	t.Run("on a stale cache", func(t *testing.T) {
		f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(KubeletRestart, "n1")))
		f.sync()
		before := f.node("n1")
		f.sync()
		got := f.writes()
		id := requestIn(t, got[len(got)-1], protocol.ActionKubeletRestart, "n1", t0)

		f.lead()
		f.cacheStale(before)
		_, err := f.syncStale()
		if !apierrors.IsConflict(err) {
			t.Fatalf("a request decided on a stale cache: %v; want a conflict", err)
		}
		if got := f.writes(); len(got) != 1 || got[0].Request == nil || got[0].Request.ID == id {
			t.Errorf("the refused write: %v", got)
		}
		if r, _ := protocol.ParseRequest(f.node("n1").Annotations[protocol.AnnotationRequest]); r.ID != id {
			t.Errorf("the request on n1 is %q; want the first leader's %q", r.ID, id)
		}
		f.sync()
		f.expectWrites()
	})
}

var generatedID = regexp.MustCompile(`^r-20261127-120000-[0-9a-f]{4}$`)

// An administrator's start request becomes a rollout over the nodes its
// selector matches.
func TestStartRequest(t *testing.T) {
	_, badSelector := metav1.LabelSelectorAsSelector(badLabelSelector)
	if badSelector == nil {
		t.Fatal("the bad selector is valid")
	}
	previous := finished(rollout(Reboot, "n1"), RolloutDone, t0.Add(-time.Hour)).Rollout
	cases := []struct {
		name, selector, by string
		want               func(r *Rollout)
		events             []string
	}{
		{"selector", "pool=a", "alice", func(r *Rollout) {
			r.Trigger = "manual (alice)"
			r.Nodes = []PlannedNode{{Name: "n1", Strategy: KubeletRestart, Reason: "requested by alice"}, {Name: "n3", Strategy: KubeletRestart, Reason: "requested by alice"}}
		}, []string{"n1", "n3"}},
		{"every node, nobody named", "", "", func(r *Rollout) {
			r.Trigger = "manual"
			for _, n := range []string{"n1", "n2", "n3"} {
				r.Nodes = append(r.Nodes, PlannedNode{Name: n, Strategy: KubeletRestart, Reason: "requested by an administrator"})
			}
		}, []string{"n1", "n2", "n3"}},
		{"no node matches", "pool=c", "alice", func(r *Rollout) {
			r.Trigger, r.Phase, r.FinishedAt, r.Message = "manual (alice)", RolloutDone, t0, "no node matched; nothing to do"
		}, nil},
		{"invalid selector", "pool in (a", "alice", func(r *Rollout) {
			r.Trigger, r.Phase, r.FinishedAt, r.Message = "manual (alice)", RolloutCancelled, t0, "the node selector is not valid: "+badSelector.Error()
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := stateOf(previous)
			st.Start = &StartRequest{Strategy: KubeletRestart, Selector: c.selector, RequestedAt: t0.Add(-10 * time.Second), RequestedBy: c.by}
			f := newFixture(t, testNode("n1", labeled("pool", "a")), testNode("n2", labeled("pool", "b")), testNode("n3", labeled("pool", "a")), stateConfigMap(st))
			f.sync()
			got := f.writes()
			if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil {
				t.Fatalf("writes %v; want the new rollout", got)
			}
			id := got[0].State.Rollout.ID
			if !generatedID.MatchString(id) {
				t.Errorf("rollout ID %q does not match %s", id, generatedID)
			}
			r := &Rollout{ID: id, Strategy: KubeletRestart, Phase: RolloutRunning, Issuer: newIssuer, CreatedAt: t0, UpdatedAt: t0}
			c.want(r)
			want := stateOf(r)
			want.Last = previous
			f.compareWrites(got, updateState(want))
			// One Event for the plan, on the rollout state, none per node.
			var events []string
			if len(c.events) > 0 {
				events = append(events, fmt.Sprintf("Normal RolloutPlanned rollout %s (%s) plans %d nodes (kubelet-restart %d): %s",
					id, r.Trigger, len(c.events), len(c.events), strings.Join(c.events, ",")))
			}
			f.expectEvents(events...)
			if r.Phase == RolloutRunning {
				f.sync()
				f.expectWrites(cordonNode(r.Nodes[0].Name, func() protocol.NodeState {
					s := started(KubeletRestart, true, t0)
					s.Rollout = id
					return s
				}()))
			}
		})
	}
}

// The coordinator records the issuer the API servers sign with, read
// while the gate is open, and the time it changed.
func TestObservesTheIssuer(t *testing.T) {
	f := newFixture(t, testNode("n1"))
	observed := func(iss string, at time.Time) {
		t.Helper()
		c := f.term.c
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.observedIssuer != iss || !c.observedIssuerAt.Equal(at) {
			t.Errorf("observed issuer %q at %s; want %q at %s", c.observedIssuer, c.observedIssuerAt, iss, at)
		}
	}
	f.sync()
	f.expectWrites() // nothing to record it on: it is kept in memory
	observed(newIssuer, t0)
	f.sync()
	f.expectWrites()

	const newer = "https://newer.tokenroll.test"
	f.setIssuer(newer)
	f.gate.Set(GateState{Provider: GateStaticPods, Message: "issuer rolling out"})
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites() // the API servers disagree: nothing is read

	f.setIssuer("") // discovery fails: the last issuer known stands
	f.gate.Set(GateState{Provider: GateStaticPods, Open: true})
	f.sync()
	f.expectWrites()

	f.setIssuer(newer)
	f.gate.Set(GateState{Provider: GateStaticPods})
	f.sync()
	f.gate.Set(GateState{Provider: GateStaticPods, Open: true, SigningIssuer: newer})
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites()
	observed(newer, t0.Add(2*time.Minute))
}

// With Auto the coordinator plans from the agents' reports: nodes holding
// tokens the API servers no longer trust, and nodes that need a reboot.
func TestAutoPlan(t *testing.T) {
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport())), testNode("n2"),
		testNode("n3", func(n *corev1.Node) { n.Annotations[protocol.AnnotationRebootRequired] = "true" }),
		stateConfigMap(State{}))
	f.cfg.Auto, f.cfg.Strategy = true, KubeletRestart
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil {
		t.Fatalf("writes %v; want a rollout", got)
	}
	r := &Rollout{ID: got[0].State.Rollout.ID, Trigger: "issuer,reboot-required", Strategy: KubeletRestart, Phase: RolloutRunning, Issuer: newIssuer,
		Nodes: []PlannedNode{{Name: "n1", Strategy: KubeletRestart, Reason: "2 tokens from https://old.tokenroll.test, which the API servers no longer trust"},
			{Name: "n3", Strategy: Reboot, Reason: "the node reports a required reboot"}}, CreatedAt: t0, UpdatedAt: t0}
	f.compareWrites(got, createState(stateOf(r)))
	if v := f.counter("tokenroll_nodes_needing_work", "", ""); v != 2 {
		t.Errorf("nodes needing work %v; want 2", v)
	}
}

// Within --agent-wait of an issuer change, a node whose agent still judges
// by the previous issuer is waited for, not planned.
func TestAutoPlanWaitsForTheAgents(t *testing.T) {
	rep := oldIssuerReport()
	rep.Issuer = oldIssuer
	f := newFixture(t, testNode("n1", withReport(rep)), stateConfigMap(State{}))
	f.cfg.Auto, f.cfg.Strategy, f.cfg.AgentWait = true, KubeletRestart, 10*time.Minute
	expires := t0.Add(24 * time.Hour)
	f.gate.Set(GateState{Provider: GateOpenShift, Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: expires}}})
	if d := f.sync(); d != 10*time.Minute {
		t.Errorf("next look in %s; want when the agent wait ends, 10m", d)
	}
	// No TokenRollout can hold the wait: the metrics and the log say it.
	f.expectWrites()
	if v := f.counter("tokenroll_rollout_waiting", "reason", WaitAgentReports); v != 1 {
		t.Errorf("waiting for agent reports %v; want 1", v)
	}
	f.clock.Step(10 * time.Minute)
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil {
		t.Fatalf("writes %v; want a rollout", got)
	}
	now := t0.Add(10 * time.Minute)
	r := &Rollout{ID: got[0].State.Rollout.ID, Trigger: "issuer", Strategy: KubeletRestart, Phase: RolloutRunning, Issuer: newIssuer,
		Nodes: []PlannedNode{{Name: "n1", Strategy: KubeletRestart, Deadline: expires,
			Reason: "2 tokens from https://old.tokenroll.test, trusted until 2026-11-28T12:00:00Z; when they refresh is not known"}}, CreatedAt: now, UpdatedAt: now}
	want := State{Rollout: r}
	f.compareWrites(got, createState(want))
}

// A new leader that has not read the issuer (the gate has been closed
// since it took over) judges the agents' reports by the issuer the rollout
// state records, and with none recorded waits: it never judges a report,
// plans or starts against an unknown issuer.
func TestNewLeaderWhileTheGateIsClosed(t *testing.T) {
	const req = "r-test-0000beef"
	closed := GateState{Provider: GateStaticPods, Message: "issuer rolling out"}
	open := GateState{Provider: GateStaticPods, Open: true}
	st := acting(started(KubeletRestart, true, t0.Add(-2*time.Minute)), t0.Add(-time.Minute), req)
	restarted := func() *corev1.Node {
		return testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseDone, ""))
	}

	t.Run("the issuer recorded", func(t *testing.T) {
		f := newFixture(t, restarted(), testNode("n2"), rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
		f.gate.Set(closed)
		f.sync()
		doneAt := done(st, t0)
		f.expectWrites(patchNode("n1", &doneAt, ptr(false)), waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitGateClosed,
			"the revision gate is closed; no node starts until it opens (gate=issuer rolling out)", t0))
		f.clock.Step(time.Hour)
		f.sync()
		f.expectWrites() // n2 waits for the gate
	})
	t.Run("no issuer recorded", func(t *testing.T) {
		r := rollout(KubeletRestart, "n1")
		r.Issuer = ""
		f := newFixture(t, restarted(), stateConfigMap(State{Rollout: r}))
		f.gate.Set(closed)
		f.sync()
		f.expectWrites()
		f.clock.Step(time.Hour) // past every deadline
		f.sync()
		f.expectWrites()
		f.gate.Set(open)
		f.sync()
		at := t0.Add(time.Hour)
		doneAt := done(st, at)
		ended := *r
		f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(State{Rollout: finished(&ended, RolloutDone, at).Rollout}))
	})
	t.Run("a start request, no issuer recorded", func(t *testing.T) {
		f := newFixture(t, testNode("n1"), stateConfigMap(State{Start: &StartRequest{Strategy: Reboot, RequestedAt: t0, RequestedBy: "alice"}}))
		f.gate.Set(closed)
		f.sync()
		f.expectWrites(updateState(State{Start: &StartRequest{Strategy: Reboot, RequestedAt: t0, RequestedBy: "alice"}, Waiting: &Wait{Reason: WaitIssuerUnknown, Since: t0,
			Message: "a start request waits until the API servers' issuer is known (read when the revision gate is open)"}}))
		f.gate.Set(open)
		f.sync()
		got := f.writes()
		if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil || got[0].State.Rollout.Issuer != newIssuer {
			t.Fatalf("writes %v; want a rollout for the new issuer", got)
		}
	})
}
