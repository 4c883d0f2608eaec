package actions

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/metrics"
	"github.com/tokenroll/tokenroll/protocol"
)

// DefaultBootIDFile is where Linux tells the current boot's ID.
const DefaultBootIDFile = "/proc/sys/kernel/random/boot_id"

// Reporter writes a request's status on the agent's own Node.
type Reporter interface {
	Report(ctx context.Context, s protocol.Status) error
}

// HandlerConfig configures a Handler; NewHandler checks it.
type HandlerConfig struct {
	NodeName string
	Executor Executor
	// StateDir holds the durable record (a hostPath).
	StateDir string
	// AllowVolatileStateDir accepts a StateDir in memory (tmpfs, ramfs),
	// which NewHandler otherwise refuses: test harnesses whose simulated
	// reboots do not empty it.
	AllowVolatileStateDir bool
	// BootIDFile is read for the current boot ID (DefaultBootIDFile).
	BootIDFile string
	// MaxRequestAge refuses requests older than this.
	MaxRequestAge time.Duration
	Reporter      Reporter
	// Finished, when set, is called after a request's outcome is reported:
	// the agent rescans, so the coordinator sees the effect at once.
	Finished func(Record)
	Registry prometheus.Registerer
	Log      *zap.Logger
	Clock    clock.Clock
}

// Handler decides what to do with the request on the Node, at most once per
// request ID, whatever restarts and reboots happen in between. It is not
// safe for concurrent use: the watcher calls Handle one change at a time.
type Handler struct {
	cfg   HandlerConfig
	state *stateFile
	// attempts are the requests this process started whose record still
	// says running. The record says running from before the call until the
	// outcome is recorded; only the process that made the call knows where
	// in between it stands.
	attempts map[string]*attempt

	actions *prometheus.CounterVec
	steps   *prometheus.HistogramVec

	// afterStep, when set (tests), is called after each durable step:
	// "reported-accepted", "recorded-running", "reported-running", "called", "recorded-result",
	// "reported-result". A test kills the agent there by panicking.
	afterStep func(step string)
}

// attempt is what this process knows of a request it started.
type attempt struct {
	// called: the action was called. Until then it has not happened, and
	// this process alone may still call it.
	called bool
	// outcome is the final record once the call returned, until it is
	// recorded and reported; a reboot that went ahead has none (the host
	// is going down, and the next boot reports it).
	outcome *Record
}

// NewHandler checks cfg and opens the state directory.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	var errs []error
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("actions: node name is empty"))
	}
	if cfg.Executor == nil {
		errs = append(errs, errors.New("actions: no executor"))
	}
	if cfg.Reporter == nil {
		errs = append(errs, errors.New("actions: no reporter"))
	}
	if cfg.StateDir == "" {
		errs = append(errs, errors.New("actions: state directory is empty (--state-dir)"))
	}
	if cfg.MaxRequestAge <= 0 {
		errs = append(errs, fmt.Errorf("actions: max request age %s must be positive", cfg.MaxRequestAge))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.BootIDFile == "" {
		cfg.BootIDFile = DefaultBootIDFile
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	st, err := newStateFile(cfg.StateDir, cfg.AllowVolatileStateDir)
	if err != nil {
		return nil, err
	}
	f := promauto.With(cfg.Registry)
	h := &Handler{
		cfg:      cfg,
		state:    st,
		attempts: map[string]*attempt{},
		actions: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "actions_total",
			Help: "Requests finished by this agent, by action and result (done, failed, refused).",
		}, []string{"action", "result"}),
		steps: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "action_step_duration_seconds",
			Help:    "Time in each step of a request: record (state file), call (the action itself), report (status on the Node).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"action", "step"}),
	}
	// Every series from the start, so rate() and increase() see the first
	// request.
	for _, a := range protocol.Actions() {
		for _, p := range []protocol.RequestPhase{protocol.PhaseDone, protocol.PhaseFailed, protocol.PhaseRefused} {
			h.actions.WithLabelValues(string(a), string(p))
		}
		for _, step := range []string{"record", "call", "report"} {
			h.steps.WithLabelValues(string(a), step)
		}
	}
	return h, nil
}

// bootID is the current boot's ID, "" when it cannot be read.
func (h *Handler) bootID() string {
	id, err := h.readBootID()
	if err != nil {
		h.cfg.Log.Warn("reading the boot ID", zap.String("file", h.cfg.BootIDFile), zap.Error(err))
	}
	return id
}

func (h *Handler) readBootID() (string, error) {
	b, err := os.ReadFile(h.cfg.BootIDFile)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("boot ID file %s is empty", h.cfg.BootIDFile)
	}
	return id, nil
}

func (h *Handler) step(name string) {
	if h.afterStep != nil {
		h.afterStep(name)
	}
}

// report writes s unless the Node already says exactly that.
func (h *Handler) report(ctx context.Context, current string, s protocol.Status) error {
	if cur, err := protocol.ParseStatus(current); err == nil && cur.ID == s.ID && cur.Phase == s.Phase && cur.Message == s.Message && cur.BootID == s.BootID && cur.DryRun == s.DryRun {
		return nil
	}
	s.UpdatedAt = h.cfg.Clock.Now().UTC().Truncate(time.Second)
	start := h.cfg.Clock.Now()
	err := h.cfg.Reporter.Report(ctx, s)
	h.steps.WithLabelValues(actionLabel(s.Action), "report").Observe(h.cfg.Clock.Since(start).Seconds())
	if err != nil {
		return fmt.Errorf("reporting %s of request %s: %w", s.Phase, s.ID, err)
	}
	h.cfg.Log.Info("request status", zap.String("request", s.ID), zap.String("action", string(s.Action)),
		zap.String("phase", string(s.Phase)), zap.String("message", s.Message), zap.String("bootID", s.BootID))
	return nil
}

func (h *Handler) record(rec Record) error {
	start := h.cfg.Clock.Now()
	rec.UpdatedAt = start.UTC().Truncate(time.Second)
	err := h.state.put(rec)
	h.steps.WithLabelValues(string(rec.Action), "record").Observe(h.cfg.Clock.Since(start).Seconds())
	return err
}

func (h *Handler) finish(ctx context.Context, current string, rec Record) error {
	if err := h.record(rec); err != nil {
		return err
	}
	delete(h.attempts, rec.ID) // the record has the outcome now
	h.step("recorded-result")
	h.actions.WithLabelValues(string(rec.Action), string(rec.Phase)).Inc()
	if err := h.report(ctx, current, protocol.Status{ID: rec.ID, Action: rec.Action, Phase: rec.Phase, Message: rec.Message, BootID: h.bootID(), DryRun: rec.DryRun}); err != nil {
		return err
	}
	h.step("reported-result")
	if h.cfg.Finished != nil {
		h.cfg.Finished(rec)
	}
	return nil
}

// Handle acts on the Node's request annotation (request) given its current
// status annotation (status). It is idempotent: call it on every change of
// the Node, after restarts, after relists.
func (h *Handler) Handle(ctx context.Context, request, status string) error {
	if request == "" {
		return h.settleWithdrawn(ctx, status)
	}
	req, err := protocol.ParseRequest(request)
	if err != nil {
		return h.refuse(ctx, status, req, "malformed request: "+err.Error())
	}
	if req.Node != h.cfg.NodeName {
		return h.refuse(ctx, status, req, fmt.Sprintf("request names node %q; this agent acts only for %q", req.Node, h.cfg.NodeName))
	}
	rec, err := h.state.find(req.ID)
	if err != nil {
		// Without the record the agent cannot know whether it acted.
		_ = h.report(ctx, status, protocol.Status{ID: req.ID, Action: req.Action, Phase: protocol.PhaseRefused, Message: err.Error()})
		return err
	}
	if rec == nil {
		rec = fromNodeStatus(req, status)
		if rec != nil && rec.Phase.Final() {
			// The state directory lost the record (a node reprovisioned
			// under the same name, a directory wiped): the Node's status
			// is the second record, and the request is not carried out
			// again. The record is restored so it stays known.
			h.cfg.Log.Warn("the state directory has no record of a request the Node reports finished; restoring the record, not acting again",
				zap.String("request", rec.ID), zap.String("phase", string(rec.Phase)), zap.String("stateDir", h.cfg.StateDir))
			return h.record(*rec)
		}
	}
	if rec != nil {
		return h.resume(ctx, status, req, *rec)
	}
	// A refusal is final: the coordinator has read it, and a request
	// refused for its date is not carried out once the clock catches up.
	// Nor is it refused again with a reason naming a later clock, each
	// write bringing the Node back here.
	if cur, err := protocol.ParseStatus(status); err == nil && cur.ID == req.ID && cur.Phase == protocol.PhaseRefused {
		return nil
	}
	now := h.cfg.Clock.Now()
	// A request dated ahead would never age out: refuse it unless the lead
	// is what two clocks may differ by, the tolerance the token rules give
	// an iat written by the API server.
	if ahead := req.CreatedAt.Sub(now); ahead > token.MaxClockSkew {
		return h.refuse(ctx, status, req, fmt.Sprintf("request createdAt %s is %s ahead of this agent's clock (%s), more than the %s tolerated; not acted on: check the clocks (NTP) of this node and of the coordinator's node, then request again",
			req.CreatedAt.UTC().Format(time.RFC3339), ahead.Round(time.Second), now.UTC().Format(time.RFC3339), token.MaxClockSkew))
	}
	if age := now.Sub(req.CreatedAt); age > h.cfg.MaxRequestAge {
		return h.refuse(ctx, status, req, fmt.Sprintf("request is %s old, older than --max-request-age=%s; not acted on", age.Round(time.Second), h.cfg.MaxRequestAge))
	}
	return h.act(ctx, status, req)
}

// settleWithdrawn brings to its end a request the coordinator removed while
// the Node still reports it unfinished. After a reboot the coordinator
// verifies the node by its new boot ID and fresh tokens, and removes the
// request, possibly before this agent has run again; left alone, the record
// and the Node's status would say running for ever. It ends as resume would
// end it, except that nothing is ever carried out: a request not yet
// called is refused.
func (h *Handler) settleWithdrawn(ctx context.Context, status string) error {
	cur, parseErr := protocol.ParseStatus(status)
	if parseErr != nil {
		// Nothing of ours to end: no status, or one this agent did not
		// write in this protocol's form.
		return nil //nolint:nilerr // not an error of this agent's
	}
	if cur.ID == "" || cur.Phase.Final() {
		return nil
	}
	rec, err := h.state.find(cur.ID)
	if err != nil || rec == nil {
		return err
	}
	if rec.Phase.Final() {
		return h.report(ctx, status, protocol.Status{ID: rec.ID, Action: rec.Action, Phase: rec.Phase, Message: rec.Message, BootID: h.bootID(), DryRun: rec.DryRun})
	}
	req := protocol.Request{ID: rec.ID, Action: rec.Action, Node: h.cfg.NodeName}
	switch a := h.attempts[rec.ID]; {
	case a == nil:
		// Not this process's: resume decides from the boot ID alone and
		// never calls the action for a record it did not start.
		return h.resume(ctx, status, req, *rec)
	case a.outcome != nil:
		return h.finish(ctx, status, *a.outcome)
	case a.called:
		return nil // in flight: its outcome is recorded when the call returns
	default:
		rec.Phase, rec.Message = protocol.PhaseRefused, "the coordinator withdrew the request before it was carried out; not carried out"
		return h.finish(ctx, status, *rec)
	}
}

func (h *Handler) refuse(ctx context.Context, status string, req protocol.Request, why string) error {
	if cur, err := protocol.ParseStatus(status); err == nil && cur.ID == req.ID && cur.Phase == protocol.PhaseRefused && cur.Message == why {
		return nil
	}
	h.actions.WithLabelValues(actionLabel(req.Action), string(protocol.PhaseRefused)).Inc()
	h.cfg.Log.Warn("refusing request", zap.String("request", req.ID), zap.String("reason", why))
	return h.report(ctx, status, protocol.Status{ID: req.ID, Action: req.Action, Phase: protocol.PhaseRefused, Message: why})
}

// actionLabel is the metric label of a request's action: a malformed
// request's action is whatever string the annotation held, and a label
// taken from it would let any writer of the annotation add series without
// bound.
func actionLabel(a protocol.Action) string {
	if !a.Valid() {
		return "invalid"
	}
	return string(a)
}

// fromNodeStatus reads the Node's status of req as a record, for when the
// state directory has none: a status past accepted means the request was
// recorded running, and so may have been carried out. Accepted is not: the
// action is called only once running is reported.
func fromNodeStatus(req protocol.Request, status string) *Record {
	cur, err := protocol.ParseStatus(status)
	if err != nil || cur.ID != req.ID {
		return nil
	}
	switch cur.Phase {
	case protocol.PhaseRunning, protocol.PhaseDone, protocol.PhaseFailed:
	default:
		return nil
	}
	return &Record{ID: req.ID, Action: req.Action, Phase: cur.Phase, Message: cur.Message, BootID: cur.BootID, DryRun: cur.DryRun, fromNode: true}
}

// resume finishes a request the record already knows.
func (h *Handler) resume(ctx context.Context, status string, req protocol.Request, rec Record) error {
	if rec.Phase.Final() {
		return h.report(ctx, status, protocol.Status{ID: rec.ID, Action: rec.Action, Phase: rec.Phase, Message: rec.Message, BootID: h.bootID(), DryRun: rec.DryRun})
	}
	// A reboot that happened shows as a new boot ID, whether this process
	// went down with the host or (the sandbox, a simulated node) outlived it.
	// It restarted the kubelet too, so a kubelet restart in flight is done.
	now, bootErr := h.readBootID()
	if rec.BootID != "" && now != "" && now != rec.BootID {
		rec.Phase = protocol.PhaseDone
		if rec.Action == protocol.ActionReboot {
			rec.Message = fmt.Sprintf("rebooted: boot ID %s, was %s", now, rec.BootID)
		} else {
			rec.Message = fmt.Sprintf("the node rebooted (boot ID %s, was %s) while the %s was in flight, which restarted the kubelet", now, rec.BootID, rec.Action)
		}
		return h.finish(ctx, status, rec.withOrigin())
	}
	a := h.attempts[rec.ID]
	switch {
	case a == nil && rec.Action == protocol.ActionReboot && (rec.BootID == "" || bootErr != nil):
		// Without both boot IDs nothing here tells whether the host went
		// down. Failed would halt a rollout whose reboot happened; done is
		// checked all the same, by the coordinator against the Node's own
		// boot ID. Never repeated.
		why := fmt.Sprintf("the boot ID could not be read now (%v)", bootErr)
		if rec.BootID == "" {
			why = "the boot ID could not be read when the reboot was requested"
		}
		rec.Phase, rec.Message = protocol.PhaseDone, fmt.Sprintf("the agent restarted while the reboot was in flight, and %s, so whether the node rebooted is not known here: taken as done, not repeated; the coordinator checks the Node's boot ID", why)
		return h.finish(ctx, status, rec.withOrigin())
	case a == nil:
		// Running, and not this process's: the agent stopped mid-action.
		// The action is never repeated.
		rec.Phase, rec.Message = protocol.PhaseFailed, fmt.Sprintf("the agent stopped while the %s was in flight and the outcome is unknown; not repeated (at most once per request)", rec.Action)
		return h.finish(ctx, status, rec.withOrigin())
	case a.outcome != nil:
		// The call returned, and recording or reporting its outcome failed.
		return h.finish(ctx, status, *a.outcome)
	case a.called:
		return nil // this process asked for the reboot; the host is going down
	case h.cfg.Clock.Since(req.CreatedAt) > h.cfg.MaxRequestAge:
		rec.Phase, rec.Message = protocol.PhaseFailed, fmt.Sprintf("not carried out: its running status could not be reported before the request was older than --max-request-age=%s", h.cfg.MaxRequestAge)
		return h.finish(ctx, status, rec)
	default:
		// Reporting running failed, so the action was not called: report
		// and call it now. No other process can have called it.
		return h.run(ctx, status, rec)
	}
}

// act carries out a new request: record it as running (durably) first, then
// act, then record and report the outcome.
func (h *Handler) act(ctx context.Context, status string, req protocol.Request) error {
	boot := h.bootID()
	if err := h.report(ctx, status, protocol.Status{ID: req.ID, Action: req.Action, Phase: protocol.PhaseAccepted, Message: "request accepted", BootID: boot}); err != nil {
		return err
	}
	h.step("reported-accepted")
	rec := Record{ID: req.ID, Action: req.Action, Phase: protocol.PhaseRunning, BootID: boot}
	if err := h.record(rec); err != nil {
		_ = h.report(ctx, status, protocol.Status{ID: req.ID, Action: req.Action, Phase: protocol.PhaseRefused, Message: err.Error()})
		return err
	}
	h.step("recorded-running")
	h.attempts[req.ID] = &attempt{}
	return h.run(ctx, status, rec)
}

// run reports a recorded request running, calls the action and finishes it.
// Its attempt says how far it got when a step fails.
func (h *Handler) run(ctx context.Context, status string, rec Record) error {
	msg := map[protocol.Action]string{
		protocol.ActionReboot:         "rebooting the node",
		protocol.ActionKubeletRestart: "restarting the kubelet",
	}[rec.Action]
	if err := h.report(ctx, status, protocol.Status{ID: rec.ID, Action: rec.Action, Phase: protocol.PhaseRunning, Message: msg, BootID: rec.BootID}); err != nil {
		// Not called, and not called unreported: the next Handle of this
		// process reports running and calls it; any other process finds
		// the record running and reports failed.
		return err
	}
	h.step("reported-running")
	a := h.attempts[rec.ID]
	a.called = true
	start := h.cfg.Clock.Now()
	var err error
	switch rec.Action {
	case protocol.ActionReboot:
		err = h.cfg.Executor.Reboot(ctx)
	case protocol.ActionKubeletRestart:
		err = h.cfg.Executor.RestartKubelet(ctx)
	}
	h.steps.WithLabelValues(string(rec.Action), "call").Observe(h.cfg.Clock.Since(start).Seconds())
	h.step("called")
	_, dry := h.cfg.Executor.(dryRunner)
	switch {
	case err != nil:
		rec.Phase, rec.Message = protocol.PhaseFailed, err.Error()
	case dry:
		// Nothing happened, and nothing will: no reboot will report
		// done. Said so, so the coordinator neither waits for the node
		// nor judges its tokens.
		rec.Phase, rec.DryRun = protocol.PhaseDone, true
		rec.Message = fmt.Sprintf("dry run (--dry-run): would have %s; nothing was done", map[protocol.Action]string{
			protocol.ActionReboot: "rebooted the node", protocol.ActionKubeletRestart: "restarted the kubelet"}[rec.Action])
	case rec.Action == protocol.ActionReboot:
		// The host is going down; the agent that starts after it reports
		// done with the new boot ID.
		return nil
	default:
		rec.Phase, rec.Message = protocol.PhaseDone, "kubelet restarted"
	}
	a.outcome = &rec
	return h.finish(ctx, "", rec)
}
