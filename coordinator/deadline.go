package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file holds the rollout against the previous issuer's trust
// deadline: the completion estimate (estimate.go) as the leader exports and
// records it, and the raise of the nodes disrupted at once, up to the
// ceiling an administrator set, when the rollout would end after the
// deadline.

// Raise records that the coordinator raised a rollout's nodes disrupted at
// once above --max-unavailable to meet the trust deadline. It holds for
// the rest of the rollout (within the ceiling in force), so that the
// concurrency does not swing with each node's time.
type Raise struct {
	// MaxUnavailable is the nodes at once it allows; From what was allowed
	// before and Ceiling what --deadline-max-unavailable allowed.
	MaxUnavailable int       `json:"maxUnavailable"`
	From           int       `json:"from"`
	Ceiling        int       `json:"ceiling"`
	At             time.Time `json:"at"`
	// Message says why, for people.
	Message string `json:"message"`
}

// ReasonMaxUnavailableRaised is the Event on the TokenRollout when
// the coordinator raises the nodes disrupted at once.
const ReasonMaxUnavailableRaised = "MaxUnavailableRaised"

// limits resolves --max-unavailable and --deadline-max-unavailable for a
// fleet of nodes; the ceiling is never below the base.
func (c *Coordinator) limits(nodes int) (base, ceiling int, err error) {
	base, err = ResolveMaxUnavailable(c.cfg.MaxUnavailable, nodes)
	if err != nil {
		return 0, 0, err
	}
	ceiling = base
	if c.cfg.DeadlineMaxUnavailable != (intstr.IntOrString{}) {
		cl, err := ResolveMaxUnavailable(c.cfg.DeadlineMaxUnavailable, nodes)
		if err != nil {
			return 0, 0, fmt.Errorf("deadline %w", err)
		}
		ceiling = max(cl, base)
	}
	return base, ceiling, nil
}

// inForce is the nodes at once a rollout may disrupt before this sync
// decides: the base, or what an earlier raise set, within the ceiling now
// in force (an administrator may have lowered it since).
func inForce(r *Rollout, base, ceiling int) int {
	if r.Raised == nil {
		return base
	}
	return max(base, min(r.Raised.MaxUnavailable, ceiling))
}

// estimateInput reads what the estimate needs from the rollout's nodes. A
// halted node is pending: it starts again when the rollout is resumed.
func (t *term) estimateInput(w world, views []nodeView, maxUnavailable int, uncordoned func(nodeView) bool) EstimateInput {
	in := EstimateInput{Now: w.now, MaxUnavailable: maxUnavailable, Settle: t.c.cfg.Settle, Deadline: TrustDeadline(w.gate, w.now)}
	if uncordoned != nil {
		in.UncordonedAtOnce, _ = ResolveMaxUnavailable(t.c.cfg.MaxKubeletRestarts, len(w.nodes))
		in.CanaryPending = !canaryVerified(views)
	}
	var watched []time.Duration
	for _, v := range views {
		switch {
		case v.node == nil:
		case v.state == nil && excludedBy(v.node) != "":
		case (v.state == nil || v.state.Step == protocol.StepHalted) && uncordoned != nil && uncordoned(v):
			in.Uncordoned++
		case v.state == nil || v.state.Step == protocol.StepHalted:
			in.Pending++
		case startedUncordoned(v):
			in.UncordonedInProgress = append(in.UncordonedInProgress, v.state.StartedAt)
		case v.state.Step.InProgress():
			in.InProgress = append(in.InProgress, v.state.StartedAt)
		case v.state.Step == protocol.StepApps:
			// Its own remediation is done: what it cost is measured.
			in.Finished = append(in.Finished, v.state.StepAt.Sub(v.state.StartedAt))
			in.Watching = append(in.Watching, v.state.StepAt)
		case !v.state.AppsAt.IsZero() && v.state.Step == protocol.StepDone:
			in.Finished = append(in.Finished, v.state.AppsAt.Sub(v.state.StartedAt))
			watched = append(watched, v.state.StepAt.Sub(v.state.AppsAt))
		case v.state.Step == protocol.StepDone || v.state.Step == protocol.StepUnresolved || v.state.Step == protocol.StepDryRun:
			in.Finished = append(in.Finished, v.state.StepAt.Sub(v.state.StartedAt))
		}
	}
	switch {
	case len(watched) > 0:
		in.Watch = UpperMedian(watched)
	case t.c.cfg.Apps != nil && slices.ContainsFunc(views, func(v nodeView) bool { return v.plan.Strategy == Auto }):
		// Not measured yet: the watch lasts the grace and the settle at
		// least.
		in.Watch = AppsWatch(t.c.cfg.Apps.Grace)
	}
	return in
}

// uncordonedStarts tells, once no previous issuer is trusted, which of
// views' nodes startNodes would start without a cordon: those with auto
// that no RolloutPolicy covers, schedulable, whose first rung is a kubelet
// restart (or nothing). nil: none would.
func (t *term) uncordonedStarts(w world, r *Rollout, views []nodeView) func(nodeView) bool {
	if !TrustEnded(w.gate, w.issuer, w.now) {
		return nil
	}
	ev := t.appEvidence(w.now)
	free := map[string]bool{}
	for _, v := range t.flagViews(w, r, views) {
		if v.node == nil || v.plan.Strategy != Auto || v.node.Spec.Unschedulable {
			continue
		}
		rung := (auto{}).firstRung(t.parsed, v.node, w.issuer, ev)
		free[v.plan.Name] = rung == KubeletRestart || rung == rungNone
	}
	return func(v nodeView) bool { return free[v.plan.Name] }
}

// observeEstimate exports the nodes at once in force for a running
// rollout and its estimate, and keeps the estimate for publishEstimate. A
// rollout that is not running has neither, and there is no estimate while
// the revision gate is closed: no node starts then, for as long as the API
// servers take, which nothing here measures (TokenrollGateClosedTooLong
// alerts on it).
func (t *term) observeEstimate(w world, r *Rollout) {
	if r == nil || r.DryRun || !r.FinishedAt.IsZero() || r.Phase != RolloutRunning {
		t.setEstimate(nil, 0)
		return
	}
	base, ceiling, err := t.c.limits(len(w.nodes))
	if err != nil {
		t.setEstimate(nil, 0)
		return
	}
	limit := inForce(r, base, ceiling)
	if !w.gate.Open {
		t.setEstimate(nil, limit)
		return
	}
	views := t.views(w, r)
	est := EstimateCompletion(t.estimateInput(w, views, limit, t.uncordonedStarts(w, r, views)))
	t.setEstimate(&est, limit)
}

// setEstimate exports e (nil: none) and the nodes at once in force, and
// keeps e as this sync's.
func (t *term) setEstimate(e *Estimate, maxUnavailable int) {
	m := t.c.m
	m.maxUnavailable.Set(float64(maxUnavailable))
	if e == nil {
		m.estimate.Set(0)
	} else {
		m.estimate.Set(float64(unixOrZero(e.Completion)))
	}
	t.mu.Lock()
	t.syncEstimate = e
	t.mu.Unlock()
}

// maxUnavailable is how many nodes the rollout may disrupt at once now:
// --max-unavailable, raised as far as needed (never above
// --deadline-max-unavailable) when at that the rollout is expected to end
// after the previous issuer's trust does. A raise is recorded in the
// rollout, logged and told in an Event on the rollout's ConfigMap. Only
// the nodes no RolloutPolicy covers are raised (each pool has its own
// ceiling: poolLimit); the estimate recorded is the whole rollout's.
func (t *term) maxUnavailable(ctx context.Context, w world, r *Rollout, views []nodeView) (int, error) {
	base, ceiling, err := t.c.limits(len(w.nodes))
	if err != nil {
		return 0, err
	}
	limit := inForce(r, base, ceiling)
	starts := t.uncordonedStarts(w, r, views)
	in := t.estimateInput(w, views, limit, starts)
	before := EstimateCompletion(in)
	need := limit
	fv := t.flagViews(w, r, views)
	switch {
	case len(fv) == len(views):
		need = NeededMaxUnavailable(in, ceiling)
	case len(fv) > 0:
		need = NeededMaxUnavailable(t.estimateInput(w, fv, limit, starts), ceiling)
	}
	ended := ceiling > limit && len(fv) > 0 && issuerRollout(r) && TrustEnded(w.gate, w.issuer, w.now)
	if ended {
		// The deadline has passed (or there was no window): the pods on
		// every node left fail to authenticate now, and each node waiting
		// for another prolongs their outage. No estimate is needed to
		// know that the rollout ends after a deadline that is past.
		need = ceiling
	}
	if need <= limit {
		t.setEstimate(&before, limit)
		return limit, nil
	}
	in.MaxUnavailable = need
	after := EstimateCompletion(in)
	msg := fmt.Sprintf("at %s at once the rollout would end at %s, after the previous issuer's trust ends at %s; raised to %s at once (--deadline-max-unavailable allows %d)",
		nodeCount(limit), stamp(before.Completion), stamp(in.Deadline), nodeCount(need), ceiling)
	if ended {
		msg = fmt.Sprintf("the API servers no longer trust the previous issuer, so the pods still holding its tokens fail to authenticate until their node is remediated; raised from %s to %s at once (--deadline-max-unavailable allows %d)",
			nodeCount(limit), nodeCount(need), ceiling)
	}
	typ := corev1.EventTypeNormal
	switch {
	case ended:
	case after.MissesDeadline():
		typ = corev1.EventTypeWarning
		msg += fmt.Sprintf(", and even so it is expected to end at %s, after the deadline: raise --deadline-max-unavailable or expect the pods on the nodes left then to fail to authenticate", stamp(after.Completion))
	default:
		msg += fmt.Sprintf(", and is now expected to end at %s", stamp(after.Completion))
	}
	raise := &Raise{MaxUnavailable: need, From: limit, Ceiling: ceiling, At: w.now, Message: msg}
	if _, err := t.updateState(ctx, func(st *State) error {
		if st.Rollout == nil || st.Rollout.ID != r.ID {
			return errors.New("the rollout changed while raising the nodes it may disrupt at once")
		}
		st.Rollout.Raised, st.Rollout.Estimate = raise, &after
		return nil
	}); err != nil {
		return 0, err
	}
	r.Raised, r.Estimate = raise, &after
	t.setEstimate(&after, need)
	t.c.cfg.Log.Warn("raising the nodes disrupted at once to meet the previous issuer's trust deadline", zap.String("rollout", r.ID),
		zap.Int("from", limit), zap.Int("to", need), zap.Int("ceiling", ceiling), zap.Time("deadline", in.Deadline),
		zap.Time("estimatedCompletion", after.Completion), zap.Duration("perNode", after.PerNode))
	t.rolloutEvent(typ, ReasonMaxUnavailableRaised, "Raise", "rollout %s: %s", r.ID, msg)
	if after.MissesDeadline() {
		t.notify(ctx, v1alpha1.NotifyDeadlineAtRisk, r, "", msg)
	}
	return need, nil
}

// publishEstimate records this sync's estimate in the active rollout when
// it moved enough since the one recorded (estimateMoved): tokenroll status
// shows it. Only a made estimate is recorded, so a rollout writes nothing
// for it until a node has finished.
func (t *term) publishEstimate(ctx context.Context) error {
	t.mu.Lock()
	cur := t.syncEstimate
	t.syncEstimate = nil
	t.mu.Unlock()
	if cur == nil || !cur.Known() {
		return nil
	}
	st := StateOf(t.recordList())
	r := st.Active()
	if r == nil || r.Phase != RolloutRunning || !estimateMoved(r.Estimate, cur) {
		return nil
	}
	id, risk := r.ID, cur.MissesDeadline() && (r.Estimate == nil || !r.Estimate.MissesDeadline())
	_, err := t.updateState(ctx, func(st *State) error {
		if r := st.Active(); r != nil && r.ID == id {
			r.Estimate = cur
		}
		return nil
	})
	if err == nil && risk {
		// Told once, when the estimate first passes the deadline: the
		// alert TokenrollRolloutWillMissTrustDeadline keeps saying it.
		t.notify(ctx, v1alpha1.NotifyDeadlineAtRisk, r, "", fmt.Sprintf("rollout %s is expected to end at %s, after the previous issuer's trust ends at %s", id, stamp(cur.Completion), stamp(cur.Deadline)))
	}
	return err
}

// issuerRollout reports whether the coordinator planned r for tokens of an
// issuer the API servers do not sign with: a rollout a person started, or
// one for expired tokens alone, is not raised when that issuer's trust
// ends.
func issuerRollout(r *Rollout) bool {
	return slices.Contains(strings.Split(r.Trigger, ","), TriggerIssuer)
}

// TrustEnded reports whether the API servers are known to trust, at now,
// no issuer but the one they sign with (issuer): a token of any other has
// stopped working. The trust deadline has passed, or there was none (the
// previous issuer was dropped at once). OpenShift lists the signing issuer
// among the trusted ones, without an expiration time.
func TrustEnded(g GateState, issuer string, now time.Time) bool {
	if !g.TrustKnown || issuer == "" {
		return false
	}
	for _, ti := range g.Trusted {
		if ti.Name != issuer && (ti.Expires.IsZero() || ti.Expires.After(now)) {
			return false
		}
	}
	return true
}

// rolloutEvent records an Event on the current TokenRollout: what concerns
// the whole rollout rather than one node.
func (t *term) rolloutEvent(typ, reason, action, note string, args ...any) {
	st := StateOf(t.recordList())
	if st.Rollout == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "TokenRollout", Name: st.Rollout.ID, APIVersion: v1alpha1.SchemeGroupVersion.String()}
	if o := t.record(st.Rollout.ID); o != nil {
		ref.UID = o.UID
	}
	t.recorder.Eventf(ref, nil, typ, reason, action, note, args...)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func nodeCount(n int) string { return plural.Count(n, "node") }
