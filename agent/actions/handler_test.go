package actions

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/protocol"
)

// countingExecutor counts calls; it stands for the host in unit tests (the
// D-Bus tests use a real bus).
type countingExecutor struct {
	mu               sync.Mutex
	reboots, restart int
	err              error
	// during, when set, runs inside each call (a host that fails under it).
	during func()
}

func (e *countingExecutor) Reboot(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reboots++
	if e.during != nil {
		e.during()
	}
	return e.err
}

func (e *countingExecutor) RestartKubelet(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.restart++
	if e.during != nil {
		e.during()
	}
	return e.err
}

// nodeAnnotations stands for the Node's status annotation. Reports of a
// phase named in failures fail that many times, as writes to an API server
// that is unreachable would.
type nodeAnnotations struct {
	mu       sync.Mutex
	status   string
	writes   int
	failures map[protocol.RequestPhase]int
	// attempts, when set, receives the phase of every report, failed or not.
	attempts chan protocol.RequestPhase
}

func (n *nodeAnnotations) failNext(phase protocol.RequestPhase, times int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.failures == nil {
		n.failures = map[protocol.RequestPhase]int{}
	}
	n.failures[phase] += times
}

func (n *nodeAnnotations) Report(_ context.Context, s protocol.Status) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.attempts != nil {
		n.attempts <- s.Phase
	}
	if n.failures[s.Phase] > 0 {
		n.failures[s.Phase]--
		return errors.New("patching node node-a: the API server is unreachable")
	}
	b, _ := json.Marshal(s)
	n.status = string(b)
	n.writes++
	return nil
}

func (n *nodeAnnotations) get(t *testing.T) protocol.Status {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := protocol.ParseStatus(n.status)
	if err != nil {
		t.Fatalf("status annotation: %v", err)
	}
	return s
}

type env struct {
	dir    string
	bootID string
	exec   *countingExecutor
	node   *nodeAnnotations
	clock  *clocktesting.FakeClock
}

func newEnv(t *testing.T) *env {
	e := &env{dir: t.TempDir(), exec: &countingExecutor{}, node: &nodeAnnotations{}, clock: clocktesting.NewFakeClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))}
	e.setBoot(t, "boot-1")
	return e
}

func (e *env) setBoot(t *testing.T, id string) {
	e.bootID = id
	if err := os.WriteFile(filepath.Join(e.dir, "boot_id"), []byte(id+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// agent is a fresh agent process over the same node, state and host.
func (e *env) agent(t *testing.T) *Handler {
	t.Helper()
	h, err := NewHandler(HandlerConfig{
		NodeName: "node-a", Executor: e.exec, StateDir: filepath.Join(e.dir, "state"), BootIDFile: filepath.Join(e.dir, "boot_id"),
		MaxRequestAge: time.Hour, Reporter: e.node, Clock: e.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func request(id string, action protocol.Action, node string, at time.Time) string {
	b, _ := json.Marshal(protocol.Request{ID: id, Action: action, Node: node, Rollout: "r1", CreatedAt: at})
	return string(b)
}

type killed struct{ step string }

// handleUntilKilled runs Handle, killing the agent at step (a panic the
// test recovers, as a SIGKILL would stop it there).
func handleUntilKilled(h *Handler, step, req, status string) (died bool, err error) {
	h.afterStep = func(s string) {
		if s == step {
			panic(killed{s})
		}
	}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(killed); !ok {
				panic(r)
			}
			died = true
		}
	}()
	return false, h.Handle(context.Background(), req, status)
}

func TestKubeletRestartHappensOnceWhereverTheAgentDies(t *testing.T) {
	for _, step := range []string{"reported-accepted", "recorded-running", "reported-running", "called", "recorded-result", "reported-result", ""} {
		t.Run("killed after "+step, func(t *testing.T) {
			e := newEnv(t)
			req := request("req-1", protocol.ActionKubeletRestart, "node-a", e.clock.Now())
			died, err := handleUntilKilled(e.agent(t), step, req, "")
			if !died && step != "" || err != nil {
				t.Fatalf("died=%v err=%v", died, err)
			}
			// A new agent sees the same request, again and again (relists,
			// re-applied annotations).
			for range 3 {
				if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			calls := e.exec.restart
			if step == "reported-accepted" {
				// Nothing was recorded yet: the new agent acts, once.
				if s := e.node.get(t); calls != 1 || s.Phase != protocol.PhaseDone {
					t.Errorf("died after accepting: %d restarts, status %+v", calls, s)
				}
				return
			}
			if step == "recorded-running" || step == "reported-running" {
				// Killed before the call: the record says running, so the
				// restart is never made (at most once), and reported failed.
				if calls != 0 {
					t.Errorf("restarted %d times after dying before the call", calls)
				}
				if s := e.node.get(t); s.Phase != protocol.PhaseFailed || !strings.Contains(s.Message, "not repeated") {
					t.Errorf("status %+v", s)
				}
				return
			}
			if calls != 1 {
				t.Errorf("restarted %d times, want exactly once", calls)
			}
			want := protocol.PhaseDone
			if step == "called" {
				// Died after the call but before recording it: the outcome is
				// unknown, and it is not repeated.
				want = protocol.PhaseFailed
			}
			if s := e.node.get(t); s.ID != "req-1" || s.Phase != want || s.BootID != "boot-1" {
				t.Errorf("status %+v, want %s", s, want)
			}
		})
	}
}

func TestRebootHappensOnceAndReportsTheNewBoot(t *testing.T) {
	for _, step := range []string{"reported-accepted", "recorded-running", "reported-running", "called"} {
		t.Run("killed after "+step, func(t *testing.T) {
			e := newEnv(t)
			req := request("req-r", protocol.ActionReboot, "node-a", e.clock.Now())
			if died, err := handleUntilKilled(e.agent(t), step, req, ""); !died || err != nil {
				t.Fatalf("died=%v err=%v", died, err)
			}
			rebooted := e.exec.reboots == 1
			if rebooted {
				e.setBoot(t, "boot-2") // the host came back
			}
			// Two hours later (older than --max-request-age): the record,
			// not the request's age, decides.
			e.clock.Step(2 * time.Hour)
			for range 3 {
				if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			if e.exec.reboots > 1 {
				t.Fatalf("rebooted %d times", e.exec.reboots)
			}
			s := e.node.get(t)
			switch {
			case rebooted && (s.Phase != protocol.PhaseDone || s.BootID != "boot-2" || !strings.Contains(s.Message, "boot-1")):
				t.Errorf("after the reboot: %+v", s)
			case step == "reported-accepted":
				// Nothing was recorded, and two hours on the request is too
				// old: refused, never carried out.
				if e.exec.reboots != 0 || s.Phase != protocol.PhaseRefused {
					t.Errorf("died after accepting: %d reboots, status %+v", e.exec.reboots, s)
				}
			case !rebooted && s.Phase != protocol.PhaseFailed:
				t.Errorf("died before the call: %+v, want failed and not rebooted", s)
			}
		})
	}
}

func TestRebootRequestedThenRunningUntilTheNodeComesBack(t *testing.T) {
	e := newEnv(t)
	req := request("req-r", protocol.ActionReboot, "node-a", e.clock.Now())
	h := e.agent(t)
	if err := h.Handle(context.Background(), req, ""); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseRunning || e.exec.reboots != 1 {
		t.Fatalf("after the reboot call: %+v, %d reboots", s, e.exec.reboots)
	}
	// The host has not gone yet and the Node changes (it reports NotReady):
	// the same agent waits; nothing is written, nothing repeated.
	writes := e.node.writes
	if err := h.Handle(context.Background(), req, e.node.status); err != nil {
		t.Fatal(err)
	}
	if e.exec.reboots != 1 || e.node.writes != writes {
		t.Errorf("while going down: reboots %d, status writes %d -> %d", e.exec.reboots, writes, e.node.writes)
	}
	// A new agent in the same boot means the agent restarted before the
	// host went down: reported failed, never rebooted again.
	if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); e.exec.reboots != 1 || s.Phase != protocol.PhaseFailed {
		t.Errorf("restarted agent in the same boot: reboots %d, status %+v", e.exec.reboots, s)
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	h := e.agent(t)
	ctx := context.Background()
	cases := []struct{ req, want string }{
		{"{not json", "malformed request"},
		{`{"id":"x","action":"format-disk","node":"node-a","createdAt":"2026-11-27T12:00:00Z"}`, `action "format-disk"`},
		{request("y", protocol.ActionReboot, "node-b", e.clock.Now()), `names node "node-b"`},
		{request("z", protocol.ActionReboot, "node-a", e.clock.Now().Add(-2*time.Hour)), "older than --max-request-age"},
	}
	for _, c := range cases {
		if err := h.Handle(ctx, c.req, e.node.status); err != nil {
			t.Fatal(err)
		}
		if s := e.node.get(t); s.Phase != protocol.PhaseRefused || !strings.Contains(s.Message, c.want) {
			t.Errorf("%s: %+v, want refused with %q", c.req, s, c.want)
		}
		// Seen again: no second write.
		writes := e.node.writes
		if err := h.Handle(ctx, c.req, e.node.status); err != nil || e.node.writes != writes {
			t.Errorf("%s: refused twice (%v)", c.req, err)
		}
	}
	if e.exec.reboots+e.exec.restart != 0 {
		t.Errorf("acted on a refused request")
	}
	if got := testutil.ToFloat64(h.actions.WithLabelValues("reboot", "refused")); got != 2 {
		t.Errorf("refused reboots counted %v, want 2", got)
	}
	// A malformed action is counted, but never becomes a label of its own:
	// whoever writes the annotation must not be able to add series.
	if got := testutil.ToFloat64(h.actions.WithLabelValues("invalid", "refused")); got != 2 {
		t.Errorf("refused malformed requests counted %v, want 2 (no JSON, format-disk)", got)
	}
	for _, vec := range []*prometheus.MetricVec{h.actions.MetricVec, h.steps.MetricVec} {
		if vec.DeleteLabelValues("format-disk", "refused") || vec.DeleteLabelValues("format-disk", "report") {
			t.Errorf("a series labelled with the request's malformed action")
		}
	}
}

// A request dated ahead of the agent's clock would never age out; within
// the clock skew the token rules tolerate it is carried out.
func TestRequestCreatedAtIsCheckedAgainstTheAgentsClock(t *testing.T) {
	cases := []struct {
		name string
		// offset is createdAt minus the agent's clock.
		offset time.Duration
		// want is the final phase; refusals name what the message must say.
		want protocol.RequestPhase
		says []string
	}{
		{name: "just now", offset: 0, want: protocol.PhaseDone},
		{name: "within tolerance ahead", offset: token.MaxClockSkew, want: protocol.PhaseDone},
		{name: "beyond tolerance ahead", offset: token.MaxClockSkew + time.Second, want: protocol.PhaseRefused,
			says: []string{"createdAt 2026-11-27T12:01:01Z", "1m1s ahead", "agent's clock (2026-11-27T12:00:00Z)", "check the clocks"}},
		{name: "far future", offset: 365 * 24 * time.Hour, want: protocol.PhaseRefused,
			says: []string{"createdAt 2027-11-27T12:00:00Z", "agent's clock (2026-11-27T12:00:00Z)", "check the clocks"}},
		{name: "too old", offset: -2 * time.Hour, want: protocol.PhaseRefused, says: []string{"older than --max-request-age=1h0m0s"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			h := e.agent(t)
			req := request("r-"+strings.ReplaceAll(c.name, " ", "-"), protocol.ActionKubeletRestart, "node-a", e.clock.Now().Add(c.offset))
			if err := h.Handle(context.Background(), req, e.node.status); err != nil {
				t.Fatal(err)
			}
			s := e.node.get(t)
			if s.Phase != c.want {
				t.Fatalf("phase %s (%q), want %s", s.Phase, s.Message, c.want)
			}
			for _, w := range c.says {
				if !strings.Contains(s.Message, w) {
					t.Errorf("message %q does not say %q", s.Message, w)
				}
			}
			wantCalls := 1
			if c.want == protocol.PhaseRefused {
				wantCalls = 0
			}
			if e.exec.restart+e.exec.reboots != wantCalls {
				t.Errorf("executor called %d times, want %d", e.exec.restart+e.exec.reboots, wantCalls)
			}
			if c.want != protocol.PhaseRefused {
				return
			}
			// Seen again later, when the reason's clock and age read
			// differently: refused once, not rewritten on every change.
			writes := e.node.writes
			e.clock.Step(30 * time.Second)
			if err := h.Handle(context.Background(), req, e.node.status); err != nil || e.node.writes != writes || e.exec.restart != 0 {
				t.Errorf("seen again: %d writes, want %d; %d restarts (%v)", e.node.writes, writes, e.exec.restart, err)
			}
		})
	}
}

func TestCorruptStateRefusesToAct(t *testing.T) {
	e := newEnv(t)
	h := e.agent(t)
	if err := os.WriteFile(filepath.Join(e.dir, "state", StateFileName), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := h.Handle(context.Background(), request("q", protocol.ActionKubeletRestart, "node-a", e.clock.Now()), "")
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("got %v, want a corrupt-state error", err)
	}
	if e.exec.restart != 0 {
		t.Error("acted without a readable record")
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseRefused || !strings.Contains(s.Message, "refusing to act") {
		t.Errorf("status %+v", s)
	}
}

func TestFailedActionIsReportedAndNotRetried(t *testing.T) {
	e := newEnv(t)
	e.exec.err = errors.New("job failed")
	req := request("f", protocol.ActionKubeletRestart, "node-a", e.clock.Now())
	for range 2 {
		if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
			t.Fatal(err)
		}
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseFailed || s.Message != "job failed" || e.exec.restart != 1 {
		t.Errorf("status %+v after %d calls", s, e.exec.restart)
	}
}

// A report or record that fails must not leave the request in limbo: the
// next Handle of the same process (the watcher retries) finishes it, and
// the action still happens at most once.
func TestFailedReportIsFinishedByTheNextHandle(t *testing.T) {
	cases := []struct {
		action protocol.Action
		fail   protocol.RequestPhase
	}{
		{protocol.ActionKubeletRestart, protocol.PhaseAccepted},
		{protocol.ActionKubeletRestart, protocol.PhaseRunning},
		{protocol.ActionKubeletRestart, protocol.PhaseDone},
		{protocol.ActionReboot, protocol.PhaseAccepted},
		{protocol.ActionReboot, protocol.PhaseRunning},
	}
	for _, c := range cases {
		t.Run(string(c.action)+" reporting "+string(c.fail), func(t *testing.T) {
			e := newEnv(t)
			h := e.agent(t)
			req := request("req-1", c.action, "node-a", e.clock.Now())
			e.node.failNext(c.fail, 1)
			if err := h.Handle(context.Background(), req, e.node.status); err == nil {
				t.Fatalf("reporting %s failed, and Handle returned no error to retry on", c.fail)
			}
			for range 3 {
				if err := h.Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			s := e.node.get(t)
			calls := e.exec.restart + e.exec.reboots
			if calls != 1 {
				t.Fatalf("acted %d times, want exactly once; status %+v", calls, s)
			}
			if c.action == protocol.ActionKubeletRestart {
				if s.ID != "req-1" || s.Phase != protocol.PhaseDone {
					t.Errorf("status %+v, want done", s)
				}
				return
			}
			// The reboot is under way in this process: running until the
			// host comes back, then done from the new boot.
			if s.Phase != protocol.PhaseRunning {
				t.Errorf("status %+v, want running while the host goes down", s)
			}
			e.setBoot(t, "boot-2")
			if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
				t.Fatal(err)
			}
			if s := e.node.get(t); s.Phase != protocol.PhaseDone || s.BootID != "boot-2" || e.exec.reboots != 1 {
				t.Errorf("after the reboot: %+v, %d reboots", s, e.exec.reboots)
			}
		})
	}
}

func TestFailedResultRecordIsFinishedByTheNextHandle(t *testing.T) {
	e := newEnv(t)
	h := e.agent(t)
	statePath := filepath.Join(e.dir, "state", StateFileName)
	// The disk fails while the kubelet restarts: the outcome cannot be
	// recorded (a directory now stands where the record was).
	e.exec.during = func() {
		if err := os.Rename(statePath, statePath+".saved"); err != nil {
			t.Error(err)
		}
		if err := os.Mkdir(statePath, 0o700); err != nil {
			t.Error(err)
		}
	}
	req := request("req-1", protocol.ActionKubeletRestart, "node-a", e.clock.Now())
	if err := h.Handle(context.Background(), req, e.node.status); err == nil {
		t.Fatal("recording the outcome failed, and Handle returned no error to retry on")
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseRunning {
		t.Fatalf("status %+v, want running until the outcome is recorded", s)
	}
	e.exec.during = nil
	if err := os.Remove(statePath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(statePath+".saved", statePath); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := h.Handle(context.Background(), req, e.node.status); err != nil {
			t.Fatal(err)
		}
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseDone || e.exec.restart != 1 {
		t.Errorf("status %+v after %d restarts, want done after exactly one", s, e.exec.restart)
	}
	if got := testutil.ToFloat64(h.actions.WithLabelValues("kubelet-restart", "done")); got != 1 {
		t.Errorf("done counted %v times, want 1", got)
	}
	// A new agent reads the outcome from the record.
	if rec, err := e.agent(t).state.find("req-1"); err != nil || rec == nil || rec.Phase != protocol.PhaseDone {
		t.Errorf("record %+v, %v; want done", rec, err)
	}
}

func TestUnreportedRequestTooOldIsNotCarriedOut(t *testing.T) {
	e := newEnv(t)
	h := e.agent(t)
	req := request("req-1", protocol.ActionKubeletRestart, "node-a", e.clock.Now())
	e.node.failNext(protocol.PhaseRunning, 1)
	if err := h.Handle(context.Background(), req, e.node.status); err == nil {
		t.Fatal("reporting running failed, and Handle returned no error")
	}
	// The API server is back only after --max-request-age: the coordinator
	// has given up on the request, so it is not carried out late.
	e.clock.Step(2 * time.Hour)
	if err := h.Handle(context.Background(), req, e.node.status); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseFailed || !strings.Contains(s.Message, "not carried out") || e.exec.restart != 0 {
		t.Errorf("status %+v after %d restarts, want failed and not carried out", s, e.exec.restart)
	}
}

// With the dry-run executor the request ends done with the status saying
// the agent did not act, for a reboot too (no new boot will ever report
// it), and a second Handle, or a new process, says the same and does
// nothing more.
func TestDryRunStatusSaysNothingWasDone(t *testing.T) {
	for _, tc := range []struct {
		action protocol.Action
		would  string
	}{{protocol.ActionReboot, "rebooted the node"}, {protocol.ActionKubeletRestart, "restarted the kubelet"}} {
		t.Run(string(tc.action), func(t *testing.T) {
			e := newEnv(t)
			h, err := NewHandler(HandlerConfig{
				NodeName: "node-a", Executor: DryRun{Log: zaptest.NewLogger(t)}, StateDir: filepath.Join(e.dir, "state"), BootIDFile: filepath.Join(e.dir, "boot_id"),
				MaxRequestAge: time.Hour, Reporter: e.node, Clock: e.clock,
			})
			if err != nil {
				t.Fatal(err)
			}
			req := request("d", tc.action, "node-a", e.clock.Now())
			for range 2 {
				if err := h.Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			want := "dry run (--dry-run): would have " + tc.would + "; nothing was done"
			if s := e.node.get(t); s.Phase != protocol.PhaseDone || !s.DryRun || s.Message != want || s.ID != "d" {
				t.Errorf("status %+v; want done, dryRun, %q", s, want)
			}
			if !strings.Contains(e.node.status, `"dryRun":true`) || !strings.HasPrefix(e.node.status, `{"version":1,`) {
				t.Errorf("status on the wire %s; want the version first and dryRun true", e.node.status)
			}
			// A restarted agent reads its record and reports the same.
			e.node.status = ""
			if err := e.agent(t).Handle(context.Background(), req, ""); err != nil {
				t.Fatal(err)
			}
			if s := e.node.get(t); s.Phase != protocol.PhaseDone || !s.DryRun || e.exec.reboots+e.exec.restart != 0 {
				t.Errorf("after a restart: status %+v, host calls %d; want done and dryRun, no call", s, e.exec.reboots+e.exec.restart)
			}
		})
	}
}

// The coordinator verifies a reboot by the Node's new boot ID and removes
// the request, possibly before the agent has run again: the agent then
// finds no request, and still ends the record and the Node's status as
// done, instead of leaving them running.
func TestRebootVerifiedBeforeTheAgentReturnsEndsDone(t *testing.T) {
	e := newEnv(t)
	req := request("req-r", protocol.ActionReboot, "node-a", e.clock.Now())
	if err := e.agent(t).Handle(context.Background(), req, ""); err != nil {
		t.Fatal(err)
	}
	e.setBoot(t, "boot-2")
	h := e.agent(t)
	if err := h.Handle(context.Background(), "", e.node.status); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); s.ID != "req-r" || s.Phase != protocol.PhaseDone || s.BootID != "boot-2" {
		t.Errorf("status %+v after the request was withdrawn; want req-r done in boot-2", s)
	}
	if rec, err := h.state.find("req-r"); err != nil || rec == nil || rec.Phase != protocol.PhaseDone {
		t.Errorf("record %+v (%v); want done", rec, err)
	}
	// Nothing more happens on later Node changes.
	writes := e.node.writes
	if err := h.Handle(context.Background(), "", e.node.status); err != nil || e.node.writes != writes || e.exec.reboots != 1 {
		t.Errorf("again: err %v, writes %d -> %d, reboots %d", err, writes, e.node.writes, e.exec.reboots)
	}
}

// A request withdrawn while its running status could not be reported (the
// action not yet called) is never carried out.
func TestWithdrawnRequestIsNeverCarriedOut(t *testing.T) {
	e := newEnv(t)
	req := request("req-k", protocol.ActionKubeletRestart, "node-a", e.clock.Now())
	h := e.agent(t)
	e.node.failNext(protocol.PhaseRunning, 1)
	if err := h.Handle(context.Background(), req, ""); err == nil {
		t.Fatal("Handle succeeded with the running report failing")
	}
	if err := h.Handle(context.Background(), "", e.node.status); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); e.exec.restart != 0 || s.Phase != protocol.PhaseRefused {
		t.Errorf("withdrawn before the call: %d kubelet restarts, status %+v; want none, refused", e.exec.restart, s)
	}
}
