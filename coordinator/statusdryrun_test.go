package coordinator

import (
	"strings"
	"testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// tokenroll status says whose dry run made nodes dry-run: the coordinator's
// --dry-run, the rollout's spec.dryRun, a RolloutPolicy's dryRun or an
// agent's --dry-run; each reads differently to the person who must turn it
// off.
func TestStatusTableSaysWhoseDryRun(t *testing.T) {
	gate := GateState{Provider: GateNone, Open: true, Message: "no revision gate"}
	table := func(f *fixture) string {
		t.Helper()
		rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, gate, f.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		if err := WriteStatusTable(&b, rep); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	policyDry := protocol.NodeState{Rollout: rolloutID, Step: protocol.StepDryRun, Strategy: Reboot, StepAt: t0, StartedAt: t0,
		Message: "dry run (RolloutPolicy canary): would cordon, drain, ask the agent to reboot, verify, uncordon"}
	agentDry := policyDry
	agentDry.Request, agentDry.Message = "req-1", "the agent runs with --dry-run and did not act: would reboot"
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) *fixture
		want  []string
		not   []string
	}{{
		name: "the coordinator's flag, on a rollout it planned",
		setup: func(t *testing.T) *fixture {
			f := newFixture(t, testNode("n1", withReport(expiredReport())), stateConfigMap(State{}))
			f.cfg.Auto, f.cfg.DryRun = true, true
			f.sync()
			return f
		},
		want: []string{"DRY RUN (coordinator --dry-run) DONE", "0/1 nodes done"},
		not:  []string{"spec.dryRun", "agent --dry-run", "policy dryRun"},
	}, {
		// The request did not ask for one: the coordinator's flag made it a
		// dry run, and its nodes stay dry-run once read back.
		name: "the coordinator's flag, on a person's start request",
		setup: func(t *testing.T) *fixture {
			f := newFixture(t, testNode("n1"), stateConfigMap(State{Start: &StartRequest{Strategy: Reboot, RequestedBy: "alice"}}))
			f.cfg.DryRun = true
			f.sync()
			return f
		},
		want: []string{"DRY RUN (coordinator --dry-run) DONE", "dry-run  reboot"},
		not:  []string{"spec.dryRun", "pending"},
	}, {
		name: "the rollout's spec.dryRun",
		setup: func(t *testing.T) *fixture {
			f := newFixture(t, testNode("n1"), stateConfigMap(State{Start: &StartRequest{Strategy: Reboot, RequestedBy: "alice", DryRun: true}}))
			f.sync()
			return f
		},
		want: []string{"DRY RUN (TokenRollout spec.dryRun) DONE"},
		not:  []string{"coordinator --dry-run", "agent --dry-run"},
	}, {
		name: "a policy's dryRun and an agent's --dry-run, in a real rollout",
		setup: func(t *testing.T) *fixture {
			r := rollout(Reboot, "n1", "n2", "n3")
			done := policyDry
			done.Step, done.Message = protocol.StepDone, "verified"
			return newFixture(t, testNode("n1", inStep(policyDry)), testNode("n2", inStep(agentDry)), testNode("n3", inStep(done)),
				rolloutConfigMap(r))
		},
		want: []string{"RUNNING", "1/3 nodes done, 1 dry-run (policy dryRun), 1 dry-run (agent --dry-run)"},
		not:  []string{"DRY RUN", "coordinator --dry-run", "spec.dryRun"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			out := table(tc.setup(t))
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the table does not say %q:\n%s", w, out)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(out, w) {
					t.Errorf("the table says %q:\n%s", w, out)
				}
			}
		})
	}
}
