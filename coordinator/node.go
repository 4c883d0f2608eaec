package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file is the per-node protocol: cordon, prepare, request the action,
// verify, uncordon (or release, or halt), each step recorded on the Node.
// What a step does for a given strategy is the strategy's (strategy.go).

// cordon starts a node: unschedulable (remembering whether it already was)
// and its state recorded, in one write.
// p is the RolloutPolicy that covers it (nil: none, or none read): its
// name and drain settings are recorded with the cordon, so that its drain
// follows them whatever becomes of the policy.
func (t *term) cordon(ctx context.Context, w world, r *Rollout, v nodeView, p *policy.Policy) error {
	ns := protocol.NodeState{Rollout: r.ID, Step: protocol.StepCordoned, Strategy: v.plan.Strategy,
		CordonedByUs: !v.node.Spec.Unschedulable, StepAt: w.now, StartedAt: w.now}
	if p != nil {
		ns.Policy, ns.Drain = p.Name, drainSettingsOf(p)
	}
	if err := t.writeNode(ctx, v.node, &ns, boolPtr(true), nil); err != nil {
		if apierrors.IsConflict(err) {
			return err // a newer Node: decide again
		}
		return t.halt(ctx, w, r, v, HaltCordonFailed, fmt.Sprintf("cordoning: %v", err))
	}
	t.mu.Lock()
	delete(t.uncordoned, v.plan.Name)
	if !t.lastVerified.IsZero() {
		t.c.m.overhead.Observe(w.now.Sub(t.lastVerified).Seconds())
		t.lastVerified = time.Time{}
	}
	t.mu.Unlock()
	how := "cordoned"
	if !ns.CordonedByUs {
		how = "already cordoned; left cordoned afterwards"
	}
	t.c.cfg.Log.Info("node started", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("strategy", string(v.plan.Strategy)), zap.String("cordon", how),
		zap.String("drain", DescribeDrain(ns.Policy, ns.Drain)))
	t.event(v.node, corev1.EventTypeNormal, "Cordoned", "Cordon", "rollout %s: %s for %s (%s)", r.ID, how, v.plan.Strategy, v.plan.Reason)
	return nil
}

func boolPtr(b bool) *bool { return &b }

// progress moves one in-flight node on; it returns when to look again.
func (t *term) progress(ctx context.Context, w world, r *Rollout, v nodeView) (time.Duration, error) {
	if why := excludedBy(v.node); why != "" {
		return 0, t.exclude(ctx, w, r, v, why)
	}
	impl, ok := remediationFor(v.state.Strategy)
	if !ok {
		return 0, t.halt(ctx, w, r, v, HaltActionFailed, fmt.Sprintf("the node state names strategy %q, which this coordinator does not know (%v)", v.state.Strategy, Strategies()))
	}
	// Someone made the node schedulable while we held it (and may have
	// cordoned it again since): our cordon is gone, and what cordons it now
	// is theirs.
	uncordoned := t.sawUncordoned(v.plan.Name) || !v.node.Spec.Unschedulable
	switch v.state.Step {
	case protocol.StepCordoned:
		if uncordoned {
			v.state.CordonedByUs = false
			if r.Phase != RolloutRunning || !w.gate.Open {
				return 0, t.forgetUncordoned(v.plan.Name, t.release(ctx, w, r, v))
			}
			// Pods may have been scheduled on it meanwhile, which the
			// drain did not list: no action on it.
			return 0, t.forgetUncordoned(v.plan.Name, t.halt(ctx, w, r, v, HaltUncordoned, "someone made the node schedulable while tokenroll was preparing it; "+
				"no action was requested, and its cordon is left as it is now"))
		}
		if r.Phase != RolloutRunning || !w.gate.Open {
			return 0, t.release(ctx, w, r, v)
		}
		if w.issuer == "" {
			t.logOnChange("waiting to learn the API servers' issuer before preparing the node", zap.String("node", v.plan.Name))
			return 0, nil
		}
		if lock := t.readKuredLock(w.now); lock.mayHold(v.plan.Name) {
			// kured took the node after we cordoned it: it drains and
			// reboots it itself, and our action would be a second one.
			// Nothing is requested until kured lets go (a change of its
			// DaemonSet wakes us).
			t.logOnChange("the node holds kured's reboot lock, or who does is unknown; no action is requested on it until kured lets go",
				zap.String("node", v.plan.Name), zap.NamedError("lockError", lock.err))
			return 0, nil
		}
		if blk := t.alertsHold(ctx, w, r, v.plan.Name); blk != nil {
			// Checked before each disruptive step, the drain and the
			// request: the node stays cordoned, nothing more happens to it.
			t.logOnChange(blk.Message, zap.String("node", v.plan.Name))
			return blk.Until.Sub(w.now), nil
		}
		return t.prepare(ctx, w, r, v, impl)
	case protocol.StepActing:
		if uncordoned && v.state.CordonedByUs {
			return 0, t.forgetUncordoned(v.plan.Name, t.disown(ctx, w, r, v))
		}
		if w.issuer == "" {
			// A report judged against no issuer would fail and, in time,
			// halt a healthy node.
			t.logOnChange("waiting to learn the API servers' issuer before verifying the node", zap.String("node", v.plan.Name))
			return 0, nil
		}
		if wrote, err := t.evictKnownStaleEarly(ctx, w, r, v); wrote || err != nil {
			return 0, err
		}
		return t.verify(ctx, w, r, v, impl)
	case protocol.StepApps:
		return t.watchApps(ctx, w, r, v)
	}
	return 0, nil
}

// release undoes a node that was cordoned but not yet acted on, when the
// rollout pauses, halts, is cancelled or the gate closes: uncordoned (if we
// cordoned it) and pending again.
func (t *term) release(ctx context.Context, w world, r *Rollout, v nodeView) error {
	t.stopPreparation(v.plan.Name)
	var unsched *bool
	if v.state.CordonedByUs {
		unsched = boolPtr(false)
	}
	if err := t.writeNode(ctx, v.node, nil, unsched, nil); err != nil {
		return err
	}
	why := "the rollout is " + string(r.Phase)
	if !w.gate.Open {
		why = "the revision gate closed: " + w.gate.Message
	}
	t.c.cfg.Log.Info("node released before its action", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("why", why))
	t.event(v.node, corev1.EventTypeNormal, "Released", "Uncordon", "rollout %s: released before any action, %s; it stays pending", r.ID, why)
	return nil
}

// stopUnfinishedPreparation is stopPreparation for a halt: a preparation
// that finished without error is left in place and returned, so that the
// halted node's record can carry what it evicted; the caller forgets it
// once that record lands (a write that fails is tried again at the next
// sync, with it). Otherwise it returns nil.
func (t *term) stopUnfinishedPreparation(node string) *prepJob {
	t.mu.Lock()
	defer t.mu.Unlock()
	j := t.jobs[node]
	if j == nil {
		return nil
	}
	if j.done && j.err == nil {
		return j
	}
	j.cancel()
	delete(t.jobs, node)
	return nil
}

func (t *term) stopPreparation(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if j := t.jobs[node]; j != nil {
		j.cancel()
		delete(t.jobs, node)
	}
}

// prepareWaitPoll is how soon a node whose preparation waits for app
// detection is looked at again, at the latest.
const prepareWaitPoll = 5 * time.Second

// prepare runs the strategy's preparation (a drain, evictions) in the
// background, bounded by --drain-timeout, and requests the action when it
// is done; with nothing to prepare, at once.
func (t *term) prepare(ctx context.Context, w world, r *Rollout, v nodeView, impl remediation) (time.Duration, error) {
	cfg := t.c.cfg
	name := v.plan.Name
	opts, from := t.drainOptions(v.state)
	deadline := v.state.StepAt.Add(opts.Timeout)
	t.mu.Lock()
	j := t.jobs[name]
	t.mu.Unlock()
	if j == nil {
		remaining := deadline.Sub(w.now)
		if remaining <= 0 {
			return 0, t.halt(ctx, w, r, v, HaltDrainTimeout, "not drained within "+from)
		}
		prep, wait, err := t.prepareNode(ctx, impl, v.node, w.issuer, w.now)
		switch {
		case err != nil:
			return 0, t.halt(ctx, w, r, v, HaltDrainFailed, err.Error())
		case wait != "":
			t.logOnChange(wait, zap.String("node", name))
			if _, ok := impl.(appsAware); ok {
				// What it waits for (app detection starting) changes no
				// Node: looked at again soon.
				return min(remaining, prepareWaitPoll), nil
			}
			return remaining, nil
		case prep == nil || prep.run == nil:
			return 0, t.requestAction(ctx, w, r, v, impl, prep)
		}
		jctx, cancel := context.WithCancel(ctx)
		j = &prepJob{cancel: cancel, prep: prep}
		t.mu.Lock()
		t.jobs[name] = j
		t.mu.Unlock()
		cfg.Log.Info("preparing", zap.String("rollout", r.ID), zap.String("node", name), zap.String("strategy", string(v.state.Strategy)),
			zap.String("work", prep.kind), zap.Int("pods", prep.pods), zap.Duration("timeout", opts.Timeout))
		opts.Timeout = remaining
		t.drains.Go(func() {
			err := boundedDrain(jctx, cfg.Clock, remaining, func(ctx context.Context) error { return prep.run(ctx, cfg.Drainer, opts) })
			t.mu.Lock()
			j.done, j.err = true, err
			t.mu.Unlock()
			t.queue.Add(syncKey)
		})
		return remaining, nil
	}
	t.mu.Lock()
	done, err := j.done, j.err
	t.mu.Unlock()
	if !done {
		return deadline.Sub(w.now), nil
	}
	if err != nil {
		t.forgetJob(name, j)
		reason := HaltDrainFailed
		if errors.Is(err, context.DeadlineExceeded) || !w.now.Before(deadline) {
			reason = HaltDrainTimeout
		}
		return 0, t.halt(ctx, w, r, v, reason, fmt.Sprintf("draining node %s: %v", name, err))
	}
	if t.firstTold(j) {
		t.c.m.stepDuration.WithLabelValues(string(v.state.Strategy), "drain").Observe(w.now.Sub(v.state.StepAt).Seconds())
		if j.prep.doneEvent != "" {
			t.event(v.node, corev1.EventTypeNormal, j.prep.doneEvent, "Evict", "rollout %s: %s", r.ID, j.prep.doneNote)
		}
	}
	// The finished preparation is kept until the write recording what it
	// did lands: a write that fails (a conflict with someone's change of
	// the Node during the drain) is decided again at the next sync, and a
	// preparation run again then would find the pods gone and record no
	// evicted pods or owners, which verify and a health gate wait for.
	if err := t.requestAction(ctx, w, r, v, impl, j.prep); err != nil {
		return 0, err
	}
	t.forgetJob(name, j)
	return 0, nil
}

// forgetJob drops node's preparation j once what it did is recorded (or
// it failed); a newer preparation of the node is left alone.
func (t *term) forgetJob(node string, j *prepJob) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.jobs[node] == j {
		delete(t.jobs, node)
	}
}

// firstTold reports whether the end of j is told for the first time: a
// finished preparation whose record failed to land is told once, not at
// each try.
func (t *term) firstTold(j *prepJob) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	first := !j.told
	j.told = true
	return first
}

// requestAction writes the request for the agent, when the strategy asks
// it for an action, and the node state acting, with what the preparation
// evicted, in the same write.
func (t *term) requestAction(ctx context.Context, w world, r *Rollout, v nodeView, impl remediation, p *preparation) error {
	if !v.node.Spec.Unschedulable {
		// The write below carries the resourceVersion of this Node: the
		// request is written only on a node that is still cordoned.
		v.state.CordonedByUs = false
		return t.halt(ctx, w, r, v, HaltUncordoned, "the node is schedulable: no action was requested on it")
	}
	ns := *v.state
	ns.Step, ns.StepAt, ns.BootID = protocol.StepActing, w.now, v.node.Status.NodeInfo.BootID
	ns.Evicted, ns.Owners = nil, nil
	note := ""
	if p != nil {
		ns.Evicted, ns.Owners, note = p.evicted, p.owners, p.requestNote
		if p.rung != "" {
			ns.Rung = p.rung
		}
	}
	action := actionFor(impl, p)
	extra := map[string]any{}
	if action != "" {
		req := protocol.Request{ID: r.ID + "-" + randHex(4), Action: action, Node: v.plan.Name, Rollout: r.ID, CreatedAt: w.now}
		raw, err := json.Marshal(req)
		if err != nil {
			return err
		}
		ns.Request = req.ID
		extra[protocol.AnnotationRequest] = string(raw)
	}
	if err := t.writeNode(ctx, v.node, &ns, nil, extra); err != nil {
		return err
	}
	if action != "" {
		t.c.cfg.Log.Info("action requested", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("action", string(action)), zap.String("request", ns.Request))
		// One Event for the preparation and the request: they happen
		// together. Without a preparation the request follows the cordon at
		// once, and the Cordoned Event named the strategy already.
		if p != nil {
			t.event(v.node, corev1.EventTypeNormal, "ActionRequested", "Request", "rollout %s: %sasked the agent to %s (request %s)", r.ID, note, action, ns.Request)
		}
	}
	return nil
}

// verify checks an acting node as its strategy says; an agent reporting
// its action failed or refused halts the rollout whatever the strategy.
func (t *term) verify(ctx context.Context, w world, r *Rollout, v nodeView, impl remediation) (time.Duration, error) {
	n, ns := v.node, v.state
	in := verifyInput{node: n, state: ns, issuer: w.issuer, ready: nodeutil.Ready(n), parsed: t.parsed}
	if ns.Request != "" {
		st, err := t.parsed.agentStatus(n)
		if err == nil && st.ID == ns.Request {
			in.status = &st
		}
		if protocol.IsVersionError(err) {
			return 0, t.halt(ctx, w, r, v, HaltActionFailed, "the agent's answer cannot be read: "+err.Error())
		}
	}
	if in.status != nil && in.status.Phase == protocol.PhaseDone && in.status.DryRun {
		return 0, t.agentDryRun(ctx, w, r, v, in.status.Message)
	}
	if in.status != nil && (in.status.Phase == protocol.PhaseFailed || in.status.Phase == protocol.PhaseRefused) {
		return 0, t.halt(ctx, w, r, v, HaltActionFailed, fmt.Sprintf("the agent reports the %s %s: %s", ns.Strategy, in.status.Phase, in.status.Message))
	}
	vd, err := impl.verify(ctx, t.c.cfg.Client, in)
	if err != nil {
		return 0, err
	}
	switch {
	case vd.ok && vd.watchApps:
		return 0, t.startApps(ctx, w, r, v)
	case vd.ok:
		return 0, t.finishNode(ctx, w, r, v)
	case vd.climb != "" && vd.climbNow:
		return 0, t.climb(ctx, w, r, v, vd.climb, vd.waiting)
	}
	deadline := ns.StepAt.Add(t.c.cfg.ActionTimeout)
	if !vd.withinAction {
		deadline = deadline.Add(t.c.cfg.VerifyTimeout)
	}
	if !w.now.Before(deadline) {
		msg := fmt.Sprintf("%s after %s", vd.waiting, w.now.Sub(ns.StepAt).Round(time.Second))
		if vd.stale && vd.climb != "" {
			return 0, t.climb(ctx, w, r, v, vd.climb, msg)
		}
		if vd.stale {
			return 0, t.unresolve(ctx, w, r, v, msg)
		}
		return 0, t.halt(ctx, w, r, v, vd.reason, msg)
	}
	next := deadline.Sub(w.now)
	if vd.poll > 0 {
		next = min(next, vd.poll)
	}
	return next, nil
}

// finishNode uncordons (if we cordoned) and records the node done.
func (t *term) finishNode(ctx context.Context, w world, r *Rollout, v nodeView) error {
	ns := *v.state
	strategy := string(ns.Strategy)
	t.c.m.stepDuration.WithLabelValues(strategy, "action").Observe(w.now.Sub(ns.StepAt).Seconds())
	ns.Step, ns.StepAt, ns.Message = protocol.StepDone, w.now, "verified"
	var unsched *bool
	if ns.CordonedByUs {
		unsched = boolPtr(false)
	}
	// The request goes once verified: an agent that lost its record and
	// the Node's status too finds nothing to carry out again.
	var clear map[string]any
	if ns.Request != "" {
		clear = map[string]any{protocol.AnnotationRequest: nil}
	}
	if err := t.writeNode(ctx, v.node, &ns, unsched, clear); err != nil {
		return err
	}
	t.c.m.stepDuration.WithLabelValues(strategy, "total").Observe(w.now.Sub(ns.StartedAt).Seconds())
	t.mu.Lock()
	t.lastVerified = w.now
	t.mu.Unlock()
	t.c.cfg.Log.Info("node done", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("strategy", strategy),
		zap.Duration("took", w.now.Sub(ns.StartedAt)))
	t.notify(ctx, v1alpha1.NotifyNodeDone, r, v.plan.Name, fmt.Sprintf("%s verified in %s", strategy, w.now.Sub(ns.StartedAt).Round(time.Second)))
	t.event(v.node, corev1.EventTypeNormal, "Verified", "Uncordon", "rollout %s: %s verified in %s; %s", r.ID, strategy,
		w.now.Sub(ns.StartedAt).Round(time.Second), map[bool]string{true: "uncordoned", false: "left cordoned as it was found"}[ns.CordonedByUs])
	return nil
}

// writeNode patches the node-state annotation (nil: removed), the
// unschedulable field (nil: unchanged) and extra annotations in one JSON
// merge patch carrying the resourceVersion the decision was taken on, so a
// decision on a stale cache fails with a conflict instead of acting twice.
func (t *term) writeNode(ctx context.Context, n *corev1.Node, ns *protocol.NodeState, unschedulable *bool, extra map[string]any) error {
	ann := map[string]any{}
	for k, v := range extra {
		ann[k] = v
	}
	if ns != nil {
		raw, err := json.Marshal(ns)
		if err != nil {
			return err
		}
		ann[protocol.AnnotationNodeState] = string(raw)
	} else {
		ann[protocol.AnnotationNodeState] = nil
	}
	build := func(resourceVersion string) ([]byte, error) {
		patch := map[string]any{"metadata": map[string]any{"annotations": ann, "resourceVersion": resourceVersion}}
		if unschedulable != nil {
			patch["spec"] = map[string]any{"unschedulable": *unschedulable}
		}
		return json.Marshal(patch)
	}
	out, err := t.patchNode(ctx, n, build, func(fresh *corev1.Node) bool { return holdsWrite(fresh, ann, unschedulable) })
	if err != nil {
		return fmt.Errorf("updating node %s: %w", n.Name, err)
	}
	_, _ = trimNode(out)
	t.nodes.Mutation(out)
	return nil
}

// unresolve gives up on a node whose action ran and whose tokens are still
// stale: uncordoned (if we cordoned it) and marked unresolved with the
// evidence it was judged on, so the rollout goes on with the other nodes
// and the planner leaves this one alone until that evidence changes or a
// person asks for a retry. Halting here would let one node that cannot
// be healed (or a tenant's file that looks stale) stop the whole fleet.
func (t *term) unresolve(ctx context.Context, w world, r *Rollout, v nodeView, msg string) error {
	ns := *v.state
	ns.Step, ns.StepAt, ns.Reason, ns.Message = protocol.StepUnresolved, w.now, HaltVerifyTimeout, msg
	ns.Evidence = evidenceOf(v.node, w.issuer)
	var unsched *bool
	if ns.CordonedByUs && v.node.Spec.Unschedulable {
		unsched = boolPtr(false)
	}
	if err := t.writeNode(ctx, v.node, &ns, unsched, nil); err != nil {
		return err
	}
	t.c.cfg.Log.Warn("node unresolved: its tokens are still stale after the action; going on with the other nodes",
		zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("strategy", string(ns.Strategy)), zap.String("message", msg))
	t.event(v.node, corev1.EventTypeWarning, "Unresolved", "Verify",
		"rollout %s: %s ran but %s; the rollout goes on without this node, which is retried when its stale tokens change or on `tokenroll rollout retry %s`",
		r.ID, ns.Strategy, msg, v.plan.Name)
	return nil
}

// agentDryRun ends the work on a node whose agent answered that it runs
// with --dry-run: nothing happened, so there is nothing to verify and no
// node to wait for. It is uncordoned (if we cordoned it) and recorded
// dry-run with its evidence, so the rollout goes on and the planner does
// not plan it again for the same stale tokens.
func (t *term) agentDryRun(ctx context.Context, w world, r *Rollout, v nodeView, agentMsg string) error {
	ns := *v.state
	ns.Step, ns.StepAt = protocol.StepDryRun, w.now
	ns.Message = "the agent runs with --dry-run and did not act: " + truncate(agentMsg, 256)
	ns.Evidence = evidenceOf(v.node, w.issuer)
	var unsched *bool
	if ns.CordonedByUs && v.node.Spec.Unschedulable {
		unsched = boolPtr(false)
	}
	// The request is answered: cleared, as once verified.
	if err := t.writeNode(ctx, v.node, &ns, unsched, map[string]any{protocol.AnnotationRequest: nil}); err != nil {
		return err
	}
	t.c.cfg.Log.Info("node dry-run: its agent runs with --dry-run and did not act; going on with the other nodes",
		zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("strategy", string(ns.Strategy)))
	t.event(v.node, corev1.EventTypeNormal, "DryRun", "Verify", "rollout %s: %s; %s", r.ID, ns.Message,
		map[bool]string{true: "uncordoned", false: "its cordon left as it was"}[ns.CordonedByUs])
	return nil
}

// evidenceOf is the node's stale-token evidence ("" without a report).
func evidenceOf(n *corev1.Node, issuer string) string {
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		return ""
	}
	return rep.Evidence(issuer)
}

// exclude ends our work on a node a person excluded while we worked on it:
// a preparation stops, nothing more is requested, and its cordon is left
// as it is, ours or not (the person has taken the node over).
func (t *term) exclude(ctx context.Context, w world, r *Rollout, v nodeView, why string) error {
	t.stopPreparation(v.plan.Name)
	ns := *v.state
	was := ns.Step
	ns.Step, ns.StepAt, ns.CordonedByUs = protocol.StepExcluded, w.now, false
	ns.Message = fmt.Sprintf("excluded while %s (%s): tokenroll stopped and left its cordon as it was", was, why)
	if err := t.writeNode(ctx, v.node, &ns, nil, nil); err != nil {
		return err
	}
	t.c.cfg.Log.Info("node excluded while in progress; work on it stopped", zap.String("rollout", r.ID), zap.String("node", v.plan.Name),
		zap.String("step", string(was)), zap.String("exclude", why), zap.Bool("requested", ns.Request != ""))
	t.event(v.node, corev1.EventTypeNormal, "Excluded", "Exclude", "rollout %s: %s", r.ID, ns.Message)
	return nil
}

// disown records that the cordon of an acting node is no longer ours:
// someone uncordoned it, and may have cordoned it again. Then it is not
// uncordoned when the node is done.
func (t *term) disown(ctx context.Context, w world, r *Rollout, v nodeView) error {
	ns := *v.state
	ns.CordonedByUs = false
	if err := t.writeNode(ctx, v.node, &ns, nil, nil); err != nil {
		return err
	}
	now := "schedulable"
	if v.node.Spec.Unschedulable {
		now = "cordoned again"
	}
	t.c.cfg.Log.Info("someone uncordoned an acting node; its cordon is no longer tokenroll's", zap.String("rollout", r.ID),
		zap.String("node", v.plan.Name), zap.String("now", now))
	t.event(v.node, corev1.EventTypeNormal, "CordonTakenOver", "Cordon",
		"rollout %s: someone uncordoned this node while it was acting (it is %s): tokenroll leaves its cordon as it is when done", r.ID, now)
	return nil
}

// nodeUpdated notes a node that went from unschedulable to schedulable
// while in progress: a sync may see only the node as it is after it was
// cordoned again.
func (t *term) nodeUpdated(oldObj, newObj any) {
	o, ok1 := oldObj.(*corev1.Node)
	n, ok2 := newObj.(*corev1.Node)
	if !ok1 || !ok2 || !o.Spec.Unschedulable || n.Spec.Unschedulable {
		return
	}
	st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	if err != nil || !st.Step.InProgress() {
		return
	}
	t.mu.Lock()
	t.uncordoned[n.Name] = true
	t.mu.Unlock()
}

// sawUncordoned tells whether nodeUpdated saw node uncordoned.
func (t *term) sawUncordoned(node string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.uncordoned[node]
}

// forgetUncordoned forgets that node was seen uncordoned once what was
// done about it is written (err nil); a write that failed (a conflict with
// the cordon put back) is decided again on the next sync, which must still
// know.
func (t *term) forgetUncordoned(node string, err error) error {
	if err == nil {
		t.mu.Lock()
		delete(t.uncordoned, node)
		t.mu.Unlock()
	}
	return err
}
