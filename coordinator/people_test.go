package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/protocol"
)

// The coordinator towards people and other controllers: what a stalled
// rollout says it waits for, a node that cannot be healed, a node a person
// excluded or uncordoned, and dry runs.

// One NotReady node that is not in the rollout fills --max-unavailable=1:
// the rollout says so, naming it, in its state and metrics, from when it
// began, and moves on when the node is back.
func TestUnrelatedNotReadyNodeIsAReportedWait(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), testNode("n9", notReady), rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
	f.sync()
	msg := "nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready (outOfService=1, maxUnavailable=1, nodesWaiting=2, outOfServiceNodes=n9 NotReady)"
	f.expectWrites(waitingOn(rollout(KubeletRestart, "n1", "n2"), WaitMaxUnavailable, msg, t0))
	for range 3 {
		f.clock.Step(10 * time.Minute)
		f.sync()
		f.expectWrites() // the same wait: not written again, its start kept
	}
	if got := f.counter("tokenroll_rollout_waiting", "reason", WaitMaxUnavailable); got != 1 {
		t.Errorf("tokenroll_rollout_waiting{reason=max-unavailable} %v; want 1", got)
	}
	if got := f.counter("tokenroll_rollout_waiting_since_timestamp_seconds", "", ""); got != float64(t0.Unix()) {
		t.Errorf("waiting since %v; want %d", got, t0.Unix())
	}
	// A new leader reads the wait from the state: same reason, same start.
	f.lead()
	f.sync()
	f.expectWrites()
	if got := f.counter("tokenroll_rollout_waiting_since_timestamp_seconds", "", ""); got != float64(t0.Unix()) {
		t.Errorf("the new leader reports waiting since %v; want %d", got, t0.Unix())
	}

	f.updateNode("n9", func(n *corev1.Node) { setReady(n, true) })
	f.sync()
	f.expectWrites(cordonNode("n1", started(KubeletRestart, true, t0.Add(30*time.Minute))), updateState(stateOf(rollout(KubeletRestart, "n1", "n2"))))
	if got := f.counter("tokenroll_rollout_waiting", "reason", WaitMaxUnavailable); got != 0 {
		t.Errorf("tokenroll_rollout_waiting{reason=max-unavailable} %v after the node came back; want 0", got)
	}
}

// The rest of a rollout NotReady, or being updated by the Machine Config
// daemon: each is a wait of its own.
func TestPlannedNodesNotReadyOrUpdatingAreReportedWaits(t *testing.T) {
	f := newFixture(t, testNode("n1", notReady), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.cfg.MaxUnavailable = intstr.FromInt32(2)
	f.sync()
	f.expectWrites(waitingOn(rollout(KubeletRestart, "n1"), WaitNodeNotReady,
		"nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready (outOfService=1, maxUnavailable=2, nodesWaiting=0, outOfServiceNodes=n1 NotReady, notReady=n1)", t0))

	f.updateNode("n1", func(n *corev1.Node) { setReady(n, true); n.Annotations[annotationMCOState] = "Working" })
	f.clock.Step(time.Minute)
	f.sync()
	f.expectWrites(waitingOn(rollout(KubeletRestart, "n1"), WaitMachineConfig,
		"nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready (outOfService=0, maxUnavailable=2, nodesWaiting=0, machineConfigUpdating=n1=Working)", t0.Add(time.Minute)))
}

// A node whose tokens are still stale after its action does not halt the
// fleet: it is uncordoned and marked unresolved with its evidence, the
// rollout goes on and finishes saying so, and the planner leaves it alone
// until its stale tokens change.
func TestUnresolvedNodeDoesNotHaltTheFleet(t *testing.T) {
	const req = "r-test-0000beef"
	stale := oldIssuerReport(protocol.PodRef{Namespace: "app", Name: "reads-once", UID: "u1"})
	st := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	f := newFixture(t, testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseDone, ""), withReport(stale)), testNode("n2"),
		rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
	f.cfg.Strategy = KubeletRestart
	f.gate.Set(GateState{Provider: GateOpenShift, Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}}})
	f.sync()
	f.expectWrites()
	f.clock.Step(19 * time.Minute) // --action-timeout plus --verify-timeout after the request
	f.sync()
	at := t0.Add(19 * time.Minute)
	msg := "the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test after 20m0s"
	u := unresolved(st, at, msg, f.node("n1"))
	if u.Evidence == "" {
		t.Fatal("no evidence recorded")
	}
	f.expectWrites(patchNode("n1", &u, ptr(false)), cordonNode("n2", started(KubeletRestart, true, at)),
		updateState(stateOf(withEstimate(rollout(KubeletRestart, "n1", "n2"),
			Estimate{At: at, Completion: at.Add(20 * time.Minute), PerNode: 20 * time.Minute, Measured: 1, Pending: 1, MaxUnavailable: 1}))))
	f.expectEvents("Warning Unresolved rollout r-test: kubelet-restart ran but "+msg+
		"; the rollout goes on without this node, which is retried when its stale tokens change or on `tokenroll rollout retry n1`",
		"Normal Cordoned rollout r-test: cordoned for kubelet-restart (requested by alice)")
	if got := f.counter("tokenroll_rollout_halts_total", "reason", HaltVerifyTimeout); got != 0 {
		t.Errorf("halts counted %v; want none", got)
	}
	f.sync()
	if got := f.counter("tokenroll_nodes_unresolved", "", ""); got != 1 {
		t.Errorf("tokenroll_nodes_unresolved %v; want 1", got)
	}
	if got := f.counter("tokenroll_rollout_nodes", "state", "unresolved"); got != 1 {
		t.Errorf("tokenroll_rollout_nodes{state=unresolved} %v; want 1", got)
	}

	// n2 restarts and verifies; the rollout is done, naming n1.
	f.answerRequests("n2")
	f.clock.Step(time.Minute)
	f.sync()
	if s := f.state(); s.Rollout.Phase != RolloutDone || !strings.Contains(s.Rollout.Message, "1 node unresolved") || !strings.Contains(s.Rollout.Message, "(n1)") {
		t.Fatalf("rollout %s: %q; want done, naming n1 unresolved", s.Rollout.Phase, s.Rollout.Message)
	}
	f.writes()
	f.takeEvents()

	// With the same evidence the planner leaves n1 alone, whatever the
	// other counts do.
	f.cfg.Auto = true
	f.lead()
	f.updateNode("n1", func(n *corev1.Node) {
		r := stale
		r.Tokens = 40
		r.Stale = map[protocol.State]int{protocol.StateIssuerMismatch: 7}
		r.Issuers = []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 33}, {Issuer: oldIssuer, Tokens: 7}}
		withReport(r)(n)
	})
	for range 3 {
		f.clock.Step(time.Hour)
		f.sync()
		f.expectWrites()
	}
	if got := f.counter("tokenroll_nodes_needing_work", "", ""); got != 0 {
		t.Errorf("nodes needing work %v; want 0 while n1's evidence is unchanged", got)
	}
	// A new stale pod is new evidence: n1 is planned again.
	f.updateNode("n1", withReport(oldIssuerReport(protocol.PodRef{Namespace: "app", Name: "reads-once", UID: "u1"}, protocol.PodRef{Namespace: "app", Name: "new", UID: "u2"})))
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil || len(got[0].State.Rollout.Nodes) != 1 || got[0].State.Rollout.Nodes[0].Name != "n1" {
		t.Fatalf("writes %v; want a rollout of n1", got)
	}
}

// `tokenroll rollout retry` makes the coordinator forget an unresolved
// node's record, so it is planned again; a node in progress is refused.
func TestRetryForgetsAnUnresolvedNode(t *testing.T) {
	const req = "r-test-0000beef"
	st := acting(started(KubeletRestart, true, t0.Add(-time.Hour)), t0.Add(-time.Hour), req)
	n1 := testNode("n1", withReport(oldIssuerReport()))
	u := unresolved(st, t0.Add(-time.Minute), "stale", n1)
	inStep(u)(n1)
	busy := acting(started(KubeletRestart, true, t0), t0, "r-test-0000cafe")
	last := finished(rollout(KubeletRestart, "n1"), RolloutDone, t0.Add(-time.Minute))
	last.Retry = []RetryRequest{{Node: "n1", RequestedAt: t0, RequestedBy: "alice"}, {Node: "n2", RequestedAt: t0, RequestedBy: "alice"}}
	f := newFixture(t, n1, testNode("n2", cordoned, inStep(busy)), stateConfigMap(last))
	f.sync()
	last.Retry = nil
	f.expectWrites(releaseNode("n1", false), updateState(last))
	f.expectEvents("Normal RetryRequested alice asked to retry this node (it was unresolved): it is planned again")
	if _, ok := f.node("n2").Annotations[protocol.AnnotationNodeState]; !ok {
		t.Error("the record of n2, in progress, was removed")
	}
}

// A node a person annotated tokenroll.io/exclude is never planned or
// cordoned; the rollout ends without it and says so.
func TestExcludedNodeIsNeverTouched(t *testing.T) {
	excluded := func(n *corev1.Node) { n.Annotations[AnnotationExclude] = "disk replacement, ticket 4711" }
	f := newFixture(t, testNode("n1", excluded, withReport(expiredReport())), testNode("n2", withReport(expiredReport())), stateConfigMap(State{}))
	f.cfg.Auto, f.cfg.Strategy = true, KubeletRestart
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil {
		t.Fatalf("writes %v; want a rollout", got)
	}
	if nodes := got[0].State.Rollout.Nodes; len(nodes) != 1 || nodes[0].Name != "n2" {
		t.Errorf("planned %+v; want n2 alone", nodes)
	}
	p := MakePlan(PlanInput{Now: t0, Issuer: newIssuer, Strategy: KubeletRestart, Nodes: []*corev1.Node{f.node("n1")}})
	if len(p.Skipped) != 1 || p.Skipped[0].Reason != "excluded (tokenroll.io/exclude): disk replacement, ticket 4711" {
		t.Errorf("plan skipped %+v; want n1 excluded with its reason", p.Skipped)
	}
	if got := f.counter("tokenroll_nodes_excluded", "", ""); got != 1 {
		t.Errorf("tokenroll_nodes_excluded %v; want 1", got)
	}

	// Excluded after it was planned: it is still never cordoned.
	g := newFixture(t, testNode("n1", excluded), testNode("n2"), rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
	g.sync()
	g.expectWrites(cordonNode("n2", started(KubeletRestart, true, t0)))
	g.answerRequests("n2")
	g.sync()
	g.answerRequests("n2")
	g.sync()
	g.writes()
	if s := g.state(); s.Rollout.Phase != RolloutDone || s.Rollout.Message != "1 node excluded (n1)" {
		t.Errorf("rollout %s: %q; want done, naming n1 excluded", s.Rollout.Phase, s.Rollout.Message)
	}
	if _, ok := g.node("n1").Annotations[protocol.AnnotationNodeState]; ok || g.node("n1").Spec.Unschedulable {
		t.Error("the excluded node was written to")
	}
}

// Excluded while we work on it: the drain stops, nothing is requested, and
// its cordon is left as it is (the person has taken it over).
func TestExcludedWhileDrainingStops(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	f.sync()
	f.drainer.holdCalls()
	f.sync()
	f.writes()
	f.takeEvents()
	f.updateNode("n1", func(n *corev1.Node) { n.Annotations[AnnotationExclude] = "mine now" })
	f.clock.Step(time.Minute)
	f.sync()
	f.awaitDrainEnd()
	ex := started(Reboot, false, t0)
	ex.Step, ex.StepAt = protocol.StepExcluded, t0.Add(time.Minute)
	ex.Message = "excluded while cordoned (mine now): tokenroll stopped and left its cordon as it was"
	fin := finished(rollout(Reboot, "n1"), RolloutDone, t0.Add(time.Minute))
	fin.Rollout.Message = "1 node excluded (n1)"
	f.expectWrites(patchNode("n1", &ex, nil), updateState(fin))
	f.expectEvents("Normal Excluded rollout r-test: " + ex.Message)
	if !f.node("n1").Spec.Unschedulable {
		t.Error("the excluded node was uncordoned")
	}
}

// Someone uncordons a node while it is drained: the drain stops, no action
// is requested, the rollout halts on it, and a cordon put back meanwhile
// is left as it is.
func TestUncordonedWhileDrainingHalts(t *testing.T) {
	for _, recordoned := range []bool{false, true} {
		t.Run(fmt.Sprintf("cordoned again %v", recordoned), func(t *testing.T) {
			f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
			f.sync()
			f.drainer.holdCalls()
			f.sync()
			f.writes()
			f.takeEvents()
			before := f.node("n1")
			f.updateNode("n1", func(n *corev1.Node) { n.Spec.Unschedulable = false })
			f.watchSees(before, f.node("n1"))
			if recordoned {
				uncordonedNode := f.node("n1")
				f.updateNode("n1", cordoned)
				f.watchSees(uncordonedNode, f.node("n1"))
			}
			f.releaseAndSync(t)
			msg := "someone made the node schedulable while tokenroll was preparing it; no action was requested, and its cordon is left as it is now"
			h := halted(started(Reboot, false, t0), t0.Add(time.Minute), HaltUncordoned, msg)
			f.expectWrites(patchNode("n1", &h, nil), updateState(haltedState(rollout(Reboot, "n1", "n2"), "n1", HaltUncordoned, msg, t0.Add(time.Minute))))
			if _, ok := f.node("n1").Annotations[protocol.AnnotationRequest]; ok {
				t.Error("a request was written on a node someone uncordoned")
			}
			if f.node("n1").Spec.Unschedulable != recordoned {
				t.Errorf("n1 unschedulable=%v; want %v, as the person left it", f.node("n1").Spec.Unschedulable, recordoned)
			}
		})
	}
}

// releaseAndSync lets a held drain end and syncs once it has.
func (f *fixture) releaseAndSync(t *testing.T) {
	t.Helper()
	f.clock.Step(time.Minute)
	f.drainer.releaseCalls(nil)
	f.awaitDrainEnd()
	f.sync()
}

// Someone uncordons and cordons again an acting node: the cordon is theirs
// now, and stays when the node is done.
func TestCordonRetakenWhileActingStays(t *testing.T) {
	const req = "r-test-0000beef"
	st := acting(started(KubeletRestart, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	f := newFixture(t, testNode("n1", cordoned, inStep(st), agentStatus(req, protocol.PhaseRunning, "")), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.sync()
	f.expectWrites()
	before := f.node("n1")
	f.updateNode("n1", func(n *corev1.Node) { n.Spec.Unschedulable = false })
	mid := f.node("n1")
	f.watchSees(before, mid)
	f.updateNode("n1", cordoned)
	f.watchSees(mid, f.node("n1"))
	f.sync()
	theirs := st
	theirs.CordonedByUs = false
	f.expectWrites(patchNode("n1", &theirs, nil))
	f.expectEvents("Normal CordonTakenOver rollout r-test: someone uncordoned this node while it was acting (it is cordoned again): tokenroll leaves its cordon as it is when done")

	f.updateNode("n1", agentStatus(req, protocol.PhaseDone, ""))
	f.sync()
	doneAt := done(theirs, t0)
	f.expectWrites(patchNode("n1", &doneAt, nil), updateState(finished(rollout(KubeletRestart, "n1"), RolloutDone, t0)))
	if !f.node("n1").Spec.Unschedulable {
		t.Error("tokenroll uncordoned a node a person cordoned again")
	}
}

// A dry run plans, records what it would do to each node and is done at
// once: nothing is cordoned, drained or requested, nothing can time out,
// and the same plan is not made again.
func TestDryRun(t *testing.T) {
	f := newFixture(t, testNode("n1", withReport(expiredReport())), testNode("n2", cordoned, withReport(expiredReport())), testNode("n3"),
		stateConfigMap(State{}))
	f.cfg.Auto, f.cfg.DryRun, f.cfg.Strategy = true, true, Reboot
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil {
		t.Fatalf("writes %v; want one dry-run rollout", got)
	}
	r := got[0].State.Rollout
	if !r.DryRun || r.Phase != RolloutDone || r.FinishedAt != t0 || r.Message != "dry run (coordinator --dry-run): nothing was cordoned, drained or requested; 2 nodes would be remediated" {
		t.Errorf("rollout %+v; want a finished dry run", r)
	}
	would := map[string]string{}
	for _, pn := range r.Nodes {
		would[pn.Name] = pn.Would
	}
	want := map[string]string{
		"n1": "cordon, drain, ask the agent to reboot, verify, uncordon",
		"n2": "keep its cordon (found cordoned), drain, ask the agent to reboot, verify",
	}
	if fmt.Sprint(would) != fmt.Sprint(want) {
		t.Errorf("would %v; want %v", would, want)
	}
	f.expectDrains()
	for range 3 {
		f.clock.Step(time.Hour)
		f.sync()
		f.expectWrites() // the same plan: no new dry run
	}
	f.updateNode("n3", withReport(expiredReport()))
	f.sync()
	if got := f.writes(); len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil || !got[0].State.Rollout.DryRun || len(got[0].State.Rollout.Nodes) != 3 {
		t.Errorf("writes %v; want a new dry run of three nodes", got)
	}
	f.expectDrains()
}

// `tokenroll rollout start --dry-run` asks for one dry run of a coordinator
// that otherwise acts.
func TestStartRequestDryRun(t *testing.T) {
	f := newFixture(t, testNode("n1"), stateConfigMap(State{
		Start: &StartRequest{Strategy: KubeletRestart, DryRun: true, RequestedAt: t0, RequestedBy: "alice"}}))
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil || !got[0].State.Rollout.DryRun || got[0].State.Start != nil {
		t.Fatalf("writes %v; want a dry run, the request cleared", got)
	}
	if w := got[0].State.Rollout.Nodes[0].Would; w != "cordon, ask the agent to kubelet-restart, verify, uncordon" {
		t.Errorf("would %q", w)
	}
	f.expectEvents("Normal DryRun dry run " + got[0].State.Rollout.ID + " (manual (alice)), requested by alice: would cordon, ask the agent to kubelet-restart, verify, uncordon")
}

// `tokenroll status` shows what the coordinator waits for and since when,
// unresolved and excluded nodes whatever the rollout, and a dry run's
// result per node.
func TestStatusShowsWaitsUnresolvedExcludedAndDryRuns(t *testing.T) {
	u := unresolved(acting(started(KubeletRestart, true, t0.Add(-time.Hour)), t0.Add(-time.Hour), "r-old-1"), t0.Add(-30*time.Minute),
		"the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test after 20m0s", testNode("n1", withReport(oldIssuerReport())))
	u.Rollout = "r-old"
	dry := rollout(Reboot, "n3")
	dry.DryRun, dry.Phase, dry.FinishedAt = true, RolloutDone, t0
	dry.Nodes[0].Would = "cordon, drain, ask the agent to reboot, verify, uncordon"
	// A start request waits: the wait is recorded on its TokenRollout.
	st := State{Rollout: dry, Start: &StartRequest{Strategy: Reboot, RequestedAt: t0.Add(-time.Hour), RequestedBy: "carol"},
		Waiting: &Wait{Reason: WaitMaxUnavailable, Message: "nodes waiting (outOfServiceNodes=n4 NotReady)", Since: t0.Add(-45 * time.Minute)},
		Retry:   []RetryRequest{{Node: "n1", RequestedBy: "bob", RequestedAt: t0.Add(-time.Minute)}}}
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport()), inStep(u)),
		testNode("n2", func(n *corev1.Node) { n.Annotations[AnnotationExclude] = "disk\x1b[2J swap" }),
		testNode("n3"), testNode("n4", notReady), stateConfigMap(st))
	rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, GateState{Provider: GateNone, Open: true, Message: "no revision gate"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	phases := map[string]string{}
	for _, n := range rep.Nodes {
		phases[n.Name] = n.Phase + ": " + n.Message
	}
	want := map[string]string{
		"n1": "unresolved: " + u.Message,
		"n2": "excluded: disk?[2J swap",
		"n3": "dry-run: would cordon, drain, ask the agent to reboot, verify, uncordon",
		"n4": ": ",
	}
	if fmt.Sprint(phases) != fmt.Sprint(want) {
		t.Errorf("phases\n%v\nwant\n%v", phases, want)
	}
	var b strings.Builder
	if err := WriteStatusTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"ROLLOUT   r-test  DRY RUN (TokenRollout spec.dryRun) DONE  strategy=reboot  trigger=manual (alice)  0/1 nodes done",
		"          retry of n1 requested by bob, waiting for the coordinator",
		"WAITING   max-unavailable for 45m0s: nodes waiting (outOfServiceNodes=n4 NotReady)",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("the table does not say %q:\n%s", line, b.String())
		}
	}
	if strings.Contains(b.String(), "\x1b") {
		t.Errorf("a control character reached the terminal:\n%q", b.String())
	}
}

// The cordon is put back between the sync's read and its write: the write
// conflicts, and the next sync, which sees the node cordoned again, still
// knows it was uncordoned.
func TestUncordonSeenOnceSurvivesAConflict(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	f.sync()
	f.drainer.holdCalls()
	f.sync()
	f.writes()
	before := f.node("n1")
	f.updateNode("n1", func(n *corev1.Node) { n.Spec.Unschedulable = false })
	uncordonedNode := f.node("n1")
	f.watchSees(before, uncordonedNode)
	f.cacheStale(uncordonedNode)
	f.updateNode("n1", cordoned) // the informer has not delivered this yet
	if _, err := f.syncStale(); err == nil {
		t.Fatal("a sync on a stale Node wrote; want a conflict")
	}
	f.watchSees(uncordonedNode, f.node("n1"))
	f.writes()
	f.releaseAndSync(t)
	if s := f.steps("n1"); s["n1"] != protocol.StepHalted {
		t.Errorf("n1 is %q; want halted", s["n1"])
	}
	if _, ok := f.node("n1").Annotations[protocol.AnnotationRequest]; ok || !f.node("n1").Spec.Unschedulable {
		t.Error("n1 was asked to reboot, or its cordon removed")
	}
}
