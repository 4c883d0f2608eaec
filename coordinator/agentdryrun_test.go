package coordinator

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// agentDryRunStatus is the answer of an agent running with --dry-run.
func agentDryRunStatus(id, msg string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Annotations[protocol.AnnotationStatus] = mustJSON(protocol.Status{ID: id, Phase: protocol.PhaseDone, Message: msg, DryRun: true, UpdatedAt: t0})
	}
}

// An agent in --dry-run answers a reboot done without acting: the node
// is recorded dry-run and uncordoned at once, not waited for (its boot ID
// never changes) nor verified, nothing halts, the rollout goes on and ends
// saying so, and the planner does not plan the node again for the same
// stale tokens.
func TestAgentDryRunEndsTheNodeWithoutVerifying(t *testing.T) {
	const req = "r-test-0000d00d"
	const agentMsg = "dry run (--dry-run): would have rebooted the node; nothing was done"
	st := acting(started(Reboot, true, t0.Add(-time.Minute)), t0.Add(-time.Minute), req)
	f := newFixture(t, testNode("n1", cordoned, inStep(st), withReport(expiredReport()), agentDryRunStatus(req, agentMsg),
		func(n *corev1.Node) { n.Annotations[protocol.AnnotationRequest] = "{}" }),
		testNode("n2", withReport(expiredReport())), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	f.sync()
	dry := st
	dry.Step, dry.StepAt = protocol.StepDryRun, t0
	dry.Message = "the agent runs with --dry-run and did not act: " + agentMsg
	dry.Evidence = evidenceOf(f.node("n1"), newIssuer)
	if dry.Evidence == "" {
		t.Fatal("no evidence on n1")
	}
	f.expectWrites(
		apiWrite{Verb: "patch", Resource: "nodes", Name: "n1", NodeState: &dry, Unschedulable: ptr(false), RequestCleared: true},
		cordonNode("n2", started(Reboot, true, t0)),
		updateState(stateOf(withEstimate(rollout(Reboot, "n1", "n2"),
			Estimate{At: t0, Completion: t0.Add(time.Minute), PerNode: time.Minute, Measured: 1, Pending: 1, MaxUnavailable: 1}))))
	f.expectEvents("Normal DryRun rollout r-test: "+dry.Message+"; uncordoned",
		"Normal Cordoned rollout r-test: cordoned for reboot (requested by alice)")

	// n2 is drained, asked, and answers the same way, long after any
	// --action-timeout: no halt, and the rollout is done.
	f.sync()
	f.awaitDrainEnd()
	f.sync()
	got := f.writes()
	id := requestIn(t, got[len(got)-1], protocol.ActionReboot, "n2", t0)
	f.updateNode("n2", agentDryRunStatus(id, agentMsg))
	f.clock.Step(time.Hour)
	f.sync()
	s := f.state()
	if s.Rollout.Phase != RolloutDone || s.Rollout.HaltReason != "" ||
		s.Rollout.Message != "2 nodes dry-run by agent --dry-run: not acted on (n1,n2)" {
		t.Fatalf("rollout %s %s: %q; want done, saying both nodes were dry-run", s.Rollout.Phase, s.Rollout.HaltReason, s.Rollout.Message)
	}
	for _, n := range []string{"n1", "n2"} {
		if f.node(n).Spec.Unschedulable {
			t.Errorf("%s left cordoned", n)
		}
		if _, ok := f.node(n).Annotations[protocol.AnnotationRequest]; ok {
			t.Errorf("%s: the answered request is still there", n)
		}
	}
	if got := f.counter("tokenroll_rollout_halts_total", "reason", HaltNodeNotBack); got != 0 {
		t.Errorf("NodeNotBack halts %v; want none", got)
	}
	f.sync()
	if got := f.counter("tokenroll_rollout_nodes", "state", "dry_run"); got != 2 {
		t.Errorf("tokenroll_rollout_nodes{state=dry_run} %v; want 2", got)
	}

	rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, GateState{Provider: GateNone, Open: true, Message: "no revision gate"}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := WriteStatusTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	if want := "DRY RUN DONE  strategy=reboot  trigger=manual (alice)  0/2 nodes done, 2 dry-run (agent --dry-run)"; !strings.Contains(b.String(), want) {
		t.Errorf("the status table does not say %q:\n%s", want, b.String())
	}
	f.writes()
	f.takeEvents()

	// The same stale tokens: not planned again.
	f.cfg.Auto = true
	f.lead()
	for range 3 {
		f.clock.Step(time.Hour)
		f.sync()
		f.expectWrites()
	}
}

// A rollout whose nodes were dry-run ends saying by what: a RolloutPolicy
// in dry run, not agents with --dry-run, which nothing here runs.
func TestPolicyDryRunEndMessage(t *testing.T) {
	f := newFixture(t, testNode("n1", withReport(expiredReport())), rolloutConfigMap(rollout(Reboot, "n1")))
	f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{DryRun: true}))
	f.sync()
	f.sync()
	s := f.state()
	if want := "1 node dry-run by RolloutPolicy spec.dryRun: nothing done (n1)"; s.Rollout.Phase != RolloutDone || s.Rollout.Message != want {
		t.Errorf("rollout %s: %q; want done: %q", s.Rollout.Phase, s.Rollout.Message, want)
	}
}
