package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/protocol"
)

// nodeView is one planned node as a sync sees it.
type nodeView struct {
	plan  PlannedNode
	node  *corev1.Node // nil: deleted
	state *protocol.NodeState
}

// advance moves the rollout on: in-flight nodes first, then, if the gate,
// the phase, the settle time and maxUnavailable allow, new nodes.
func (c *Coordinator) advance(ctx context.Context, s snapshot, r *Rollout) (time.Duration, error) {
	views := make([]nodeView, 0, len(r.Nodes))
	for _, pn := range r.Nodes {
		v := nodeView{plan: pn, node: s.byName[pn.Name]}
		if v.node != nil {
			v.state = nodeState(v.node, r.ID)
		}
		views = append(views, v)
	}
	var next time.Duration
	wake := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	// In-flight nodes.
	for _, v := range views {
		if v.node == nil || v.state == nil || !v.state.Step.InProgress() {
			continue
		}
		d, err := c.progress(ctx, s, r, v)
		if err != nil {
			return 0, err
		}
		wake(d)
	}
	c.observeRollout(s, r)

	// The end of a rollout.
	pending, inFlight, halted := 0, 0, 0
	for _, v := range c.refresh(views, r.ID) {
		switch {
		case v.node == nil:
		case v.state == nil:
			pending++
		case v.state.Step.InProgress():
			inFlight++
		case v.state.Step == protocol.StepHalted:
			halted++
		}
	}
	if inFlight == 0 && (r.Phase == PhaseCancelled || (r.Phase == PhaseRunning && pending == 0 && halted == 0)) {
		return 0, c.finishRollout(ctx, s, r)
	}
	if r.Phase != PhaseRunning || !s.gate.Open {
		return next, nil
	}
	c.mu.Lock()
	settleUntil := c.lastVerified.Add(c.cfg.Settle)
	c.mu.Unlock()
	if s.now.Before(settleUntil) {
		wake(settleUntil.Sub(s.now))
		return next, nil
	}
	d, err := c.startNodes(ctx, s, r, c.refresh(views, r.ID))
	wake(d)
	return next, err
}

// refresh re-reads node states after this sync's own writes.
func (c *Coordinator) refresh(views []nodeView, id string) []nodeView {
	out := slices.Clone(views)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, v := range out {
		if f, ok := c.freshNodes[v.plan.Name]; ok && v.node != nil && newerRV(f.ResourceVersion, v.node.ResourceVersion) {
			out[i].node = f
			out[i].state = nodeState(f, id)
		}
	}
	return out
}

// disrupted counts nodes out of service: ours in flight, and any other node
// NotReady or unschedulable.
func disrupted(views []nodeView, all []*corev1.Node, id string) int {
	ours := map[string]bool{}
	n := 0
	for _, v := range views {
		if v.node != nil && v.state != nil && v.state.Step.InProgress() {
			ours[v.plan.Name] = true
			n++
		}
	}
	for _, node := range all {
		if !ours[node.Name] && (node.Spec.Unschedulable || !nodeReady(node)) {
			n++
		}
	}
	return n
}

func (c *Coordinator) startNodes(ctx context.Context, s snapshot, r *Rollout, views []nodeView) (time.Duration, error) {
	limit, err := resolveMaxUnavailable(c.cfg.MaxUnavailable, len(s.nodes))
	if err != nil {
		return 0, err
	}
	// Replace the nodes in s with the ones this sync wrote.
	all := make([]*corev1.Node, 0, len(s.nodes))
	fresh := map[string]*corev1.Node{}
	for _, v := range views {
		if v.node != nil {
			fresh[v.node.Name] = v.node
		}
	}
	for _, n := range s.nodes {
		if f := fresh[n.Name]; f != nil {
			n = f
		}
		all = append(all, n)
	}
	busy := disrupted(views, all, r.ID)
	var blocked []string
	for _, v := range views {
		if v.node == nil || (v.state != nil && v.state.Step != protocol.StepHalted) {
			continue
		}
		if !nodeReady(v.node) {
			continue // it may come back; it counts as disrupted meanwhile
		}
		// A node cordoned by someone else is out of service already: working
		// on it disrupts nothing more, so it may go ahead of the others.
		already := v.node.Spec.Unschedulable
		if !already && busy >= limit {
			blocked = append(blocked, v.plan.Name)
			continue
		}
		if err := c.cordon(ctx, s, r, v); err != nil {
			return 0, err
		}
		if !already {
			busy++
		}
	}
	if len(blocked) > 0 && busy > 0 {
		c.noteOnce("waiting for max-unavailable", zap.Int("outOfService", busy), zap.Int("maxUnavailable", limit), zap.Int("nodesWaiting", len(blocked)))
	}
	return 0, nil
}

// noteOnce logs msg at info level when it differs from the last note, so a
// wait is logged when it begins, not on every sync.
func (c *Coordinator) noteOnce(msg string, fields ...zap.Field) {
	key := msg + fmt.Sprint(fields)
	c.mu.Lock()
	same := c.lastNote == key
	c.lastNote = key
	c.mu.Unlock()
	if !same {
		c.cfg.Log.Info(msg, fields...)
	}
}

// cordon starts a node: unschedulable (remembering whether it already was)
// and its state recorded, in one write.
func (c *Coordinator) cordon(ctx context.Context, s snapshot, r *Rollout, v nodeView) error {
	ns := protocol.NodeState{Rollout: r.ID, Step: protocol.StepCordoned, Action: string(v.plan.Action),
		CordonedByUs: !v.node.Spec.Unschedulable, StepAt: s.now, StartedAt: s.now}
	if err := c.writeNode(ctx, v.node, &ns, boolPtr(true), nil); err != nil {
		if apierrors.IsConflict(err) {
			return err // a newer Node: decide again
		}
		return c.halt(ctx, s, r, v, HaltCordonFailed, fmt.Sprintf("cordoning: %v", err))
	}
	c.mu.Lock()
	if !c.lastVerified.IsZero() {
		c.m.overhead.Observe(s.now.Sub(c.lastVerified).Seconds())
		c.lastVerified = time.Time{}
	}
	c.mu.Unlock()
	how := "cordoned"
	if !ns.CordonedByUs {
		how = "already cordoned; left cordoned afterwards"
	}
	c.cfg.Log.Info("node started", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("action", string(v.plan.Action)), zap.String("cordon", how))
	c.event(v.node, corev1.EventTypeNormal, "Cordoned", "Cordon", "rollout %s: %s for %s (%s)", r.ID, how, v.plan.Action, v.plan.Reason)
	return nil
}

func boolPtr(b bool) *bool { return &b }

// progress moves one in-flight node on; it returns when to look again.
func (c *Coordinator) progress(ctx context.Context, s snapshot, r *Rollout, v nodeView) (time.Duration, error) {
	switch v.state.Step {
	case protocol.StepCordoned:
		if r.Phase != PhaseRunning || !s.gate.Open {
			return 0, c.release(ctx, s, r, v)
		}
		switch Strategy(v.state.Action) {
		case KubeletRestart:
			return 0, c.requestAction(ctx, s, r, v, protocol.ActionKubeletRestart, nil, nil)
		default:
			return c.drainStep(ctx, s, r, v)
		}
	case protocol.StepActing:
		return c.verify(ctx, s, r, v)
	}
	return 0, nil
}

// release undoes a node that was cordoned but not yet acted on, when the
// rollout pauses, halts, is cancelled or the gate closes: uncordoned (if we
// cordoned it) and pending again.
func (c *Coordinator) release(ctx context.Context, s snapshot, r *Rollout, v nodeView) error {
	c.stopDrain(v.plan.Name)
	var unsched *bool
	if v.state.CordonedByUs {
		unsched = boolPtr(false)
	}
	if err := c.writeNode(ctx, v.node, nil, unsched, nil); err != nil {
		return err
	}
	why := "the rollout is " + string(r.Phase)
	if !s.gate.Open {
		why = "the revision gate closed: " + s.gate.Message
	}
	c.cfg.Log.Info("node released before its action", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("why", why))
	c.event(v.node, corev1.EventTypeNormal, "Released", "Uncordon", "rollout %s: released before any action, %s; it stays pending", r.ID, why)
	return nil
}

func (c *Coordinator) stopDrain(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if j := c.drains[node]; j != nil {
		j.cancel()
		delete(c.drains, node)
	}
}

// drainStep runs the drain (reboot) or the stale pods' evictions (pod
// restart) in the background, and requests the action when it is done.
func (c *Coordinator) drainStep(ctx context.Context, s snapshot, r *Rollout, v nodeView) (time.Duration, error) {
	name := v.plan.Name
	deadline := v.state.StepAt.Add(c.cfg.DrainTimeout)
	c.mu.Lock()
	j := c.drains[name]
	c.mu.Unlock()
	if j == nil {
		remaining := deadline.Sub(s.now)
		if remaining <= 0 {
			return 0, c.halt(ctx, s, r, v, HaltDrainTimeout, fmt.Sprintf("not drained within --drain-timeout=%s", c.cfg.DrainTimeout))
		}
		var pods []corev1.Pod
		var owners []string
		if Strategy(v.state.Action) == PodRestart {
			if rep, err := protocol.ParseTokenReport(v.node.Annotations[protocol.AnnotationTokens]); err == nil && rep.Issuer != s.issuer {
				// The agent still judges by the previous issuer: its list of
				// stale pods is not complete yet. Its next report wakes us.
				c.noteOnce("waiting for the agent to judge by the current issuer before evicting", zap.String("node", name), zap.String("agentIssuer", rep.Issuer))
				return remaining, nil
			}
			var err error
			if pods, owners, err = c.stalePods(ctx, v.node); err != nil {
				return 0, c.halt(ctx, s, r, v, HaltDrainFailed, err.Error())
			}
		}
		jctx, cancel := context.WithCancel(ctx)
		j = &drainJob{cancel: cancel}
		c.mu.Lock()
		c.drains[name] = j
		c.mu.Unlock()
		c.cfg.Log.Info("draining", zap.String("rollout", r.ID), zap.String("node", name), zap.String("action", v.state.Action), zap.Int("pods", len(pods)))
		queue := c.queue // this leadership term's
		go func() {
			var err error
			if Strategy(v.state.Action) == PodRestart {
				err = c.cfg.Drainer.Evict(jctx, pods, remaining)
			} else {
				err = c.cfg.Drainer.Drain(jctx, name, remaining)
			}
			c.mu.Lock()
			j.done, j.err = true, err
			c.mu.Unlock()
			queue.Add(syncKey)
		}()
		if Strategy(v.state.Action) == PodRestart {
			c.mu.Lock()
			c.evictions[name] = evicted{pods: pods, owners: owners}
			c.mu.Unlock()
		}
		return remaining, nil
	}
	c.mu.Lock()
	done, err := j.done, j.err
	ev := c.evictions[name]
	c.mu.Unlock()
	if !done {
		return deadline.Sub(s.now), nil
	}
	c.mu.Lock()
	delete(c.drains, name)
	delete(c.evictions, name)
	c.mu.Unlock()
	if err != nil {
		reason := HaltDrainFailed
		if isTimeout(err) || !s.now.Before(deadline) {
			reason = HaltDrainTimeout
		}
		return 0, c.halt(ctx, s, r, v, reason, drainError(name, err).Error())
	}
	c.m.stepDuration.WithLabelValues(v.state.Action, "drain").Observe(s.now.Sub(v.state.StepAt).Seconds())
	if Strategy(v.state.Action) == PodRestart {
		refs := make([]protocol.PodRef, 0, len(ev.pods))
		for _, p := range ev.pods {
			refs = append(refs, protocol.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
		}
		c.event(v.node, corev1.EventTypeNormal, "PodsEvicted", "Evict", "rollout %s: evicted %d pods holding stale tokens", r.ID, len(refs))
		return 0, c.requestAction(ctx, s, r, v, "", refs, ev.owners)
	}
	return 0, c.requestAction(ctx, s, r, v, protocol.ActionReboot, nil, nil)
}

// evicted remembers what a pod restart evicts, between its start and end.
type evicted struct {
	pods   []corev1.Pod
	owners []string
}

// stalePods are the pods the node's agent reports holding stale tokens; a
// pod no controller would recreate is not evicted: the step fails and says
// which.
func (c *Coordinator) stalePods(ctx context.Context, n *corev1.Node) ([]corev1.Pod, []string, error) {
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		return nil, nil, fmt.Errorf("pod restart needs the agent's report on node %s: %w", n.Name, err)
	}
	var pods []corev1.Pod
	var unmanaged []string
	owners := map[string]bool{}
	for _, ref := range rep.StalePods {
		p, err := c.cfg.Client.CoreV1().Pods(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading pod %s: %w", ref, err)
		}
		if string(p.UID) != ref.UID || p.Spec.NodeName != n.Name || p.DeletionTimestamp != nil {
			continue // already replaced, or on its way out
		}
		ctrl := metav1.GetControllerOf(p)
		if ctrl == nil {
			unmanaged = append(unmanaged, ref.String())
			continue
		}
		owners[ctrl.Kind+"/"+p.Namespace+"/"+ctrl.Name] = true
		pods = append(pods, *p)
	}
	if len(unmanaged) > 0 {
		return nil, nil, fmt.Errorf("pods %s are not managed by a controller, so an eviction would lose them; restart them yourself, or use --strategy kubelet-restart", strings.Join(unmanaged, ", "))
	}
	out := make([]string, 0, len(owners))
	for o := range owners {
		out = append(out, o)
	}
	slices.Sort(out)
	return pods, out, nil
}

// requestAction writes the request for the agent (reboot, kubelet restart)
// or, for a pod restart, the record of the evictions, moving the node to
// acting in the same write.
func (c *Coordinator) requestAction(ctx context.Context, s snapshot, r *Rollout, v nodeView, action protocol.Action, evicted []protocol.PodRef, owners []string) error {
	ns := *v.state
	ns.Step, ns.StepAt, ns.BootID = protocol.StepActing, s.now, v.node.Status.NodeInfo.BootID
	ns.Evicted, ns.Owners = evicted, owners
	extra := map[string]any{}
	if action != "" {
		req := protocol.Request{ID: r.ID + "-" + randHex(4), Action: action, Node: v.plan.Name, Rollout: r.ID, CreatedAt: s.now}
		raw, err := json.Marshal(req)
		if err != nil {
			return err
		}
		ns.Request = req.ID
		extra[protocol.AnnotationRequest] = string(raw)
	}
	if err := c.writeNode(ctx, v.node, &ns, nil, extra); err != nil {
		return err
	}
	if action != "" {
		c.cfg.Log.Info("action requested", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("action", string(action)), zap.String("request", ns.Request))
		// One Event for the drain and the request: they happen together.
		drained := ""
		if Strategy(v.state.Action) == Reboot {
			drained = "drained; "
		}
		c.event(v.node, corev1.EventTypeNormal, "ActionRequested", "Request", "rollout %s: %sasked the agent to %s (request %s)", r.ID, drained, action, ns.Request)
	}
	return nil
}

// verify checks an acting node: a reboot is verified by a new boot ID and
// Ready; a kubelet restart by the agent's done and every token fresh under
// the current issuer; a pod restart by the tokens and the evicted pods'
// controllers reporting every replica ready.
func (c *Coordinator) verify(ctx context.Context, s snapshot, r *Rollout, v nodeView) (time.Duration, error) {
	n, ns := v.node, v.state
	var status *protocol.Status
	if ns.Request != "" {
		if st, err := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus]); err == nil && st.ID == ns.Request {
			status = &st
		}
	}
	if status != nil && (status.Phase == protocol.PhaseFailed || status.Phase == protocol.PhaseRefused) {
		return 0, c.halt(ctx, s, r, v, HaltActionFailed, fmt.Sprintf("the agent reports the %s %s: %s", ns.Action, status.Phase, status.Message))
	}
	ready := nodeReady(n)
	actionDeadline := ns.StepAt.Add(c.cfg.ActionTimeout)
	deadline := actionDeadline.Add(c.cfg.VerifyTimeout)
	var ok bool
	var waiting, reason string
	switch Strategy(ns.Action) {
	case Reboot:
		back := n.Status.NodeInfo.BootID != "" && n.Status.NodeInfo.BootID != ns.BootID
		ok = back && ready
		if !ok {
			waiting, reason = "the node is not back with a new boot ID and Ready", HaltNodeNotBack
			deadline = actionDeadline
		} else if clean, why := reportClean(n, s.issuer); !clean {
			// The report may be from before the reboot (the agent went down
			// with the node): wait for the new agent's, or the planner
			// starts another rollout for this node on the stale one.
			ok, waiting, reason = false, why, HaltVerifyTimeout
		}
	case KubeletRestart:
		done := status != nil && status.Phase == protocol.PhaseDone
		switch clean, why := reportClean(n, s.issuer); {
		case !done:
			waiting, reason, deadline = "the agent has not reported the kubelet restarted", HaltActionTimeout, actionDeadline
		case !ready:
			waiting, reason = "the node is not Ready", HaltVerifyTimeout
		case !clean:
			waiting, reason = why, HaltVerifyTimeout
		default:
			ok = true
		}
	case PodRestart:
		clean, why := reportClean(n, s.issuer)
		switch {
		case !clean:
			waiting, reason = why, HaltVerifyTimeout
		default:
			var err error
			if ok, why, err = c.ownersReady(ctx, ns.Owners); err != nil {
				return 0, err
			}
			waiting, reason = why, HaltVerifyTimeout
		}
	}
	if ok {
		return 0, c.finishNode(ctx, s, r, v)
	}
	if !s.now.Before(deadline) {
		return 0, c.halt(ctx, s, r, v, reason, fmt.Sprintf("%s after %s", waiting, s.now.Sub(ns.StepAt).Round(time.Second)))
	}
	if Strategy(ns.Action) == PodRestart {
		// The controllers' status is read, not watched: look again soon.
		return min(deadline.Sub(s.now), 2*time.Second), nil
	}
	return deadline.Sub(s.now), nil
}

// reportClean: the agent reports no expired or overdue token, and every
// token from the current issuer.
func reportClean(n *corev1.Node, iss string) (bool, string) {
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		return false, "no token report from the agent"
	}
	if k := rep.Count(protocol.State.NotRefreshed); k > 0 {
		return false, fmt.Sprintf("the agent reports %d tokens expired or overdue", k)
	}
	for _, it := range rep.Issuers {
		if it.Issuer != iss && it.Tokens > 0 {
			return false, fmt.Sprintf("the agent reports %d tokens from %s, not %s", it.Tokens, it.Issuer, iss)
		}
	}
	return true, ""
}

// ownersReady reads each controller of the evicted pods: ready when its
// ready replicas reach the desired count.
func (c *Coordinator) ownersReady(ctx context.Context, owners []string) (bool, string, error) {
	for _, o := range owners {
		kind, rest, _ := strings.Cut(o, "/")
		ns, name, _ := strings.Cut(rest, "/")
		var want, ready int32
		switch kind {
		case "ReplicaSet":
			rs, err := c.cfg.Client.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return false, "", err
			}
			want, ready = ptrOr(rs.Spec.Replicas, 1), rs.Status.ReadyReplicas
		case "StatefulSet":
			ss, err := c.cfg.Client.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return false, "", err
			}
			want, ready = ptrOr(ss.Spec.Replicas, 1), ss.Status.ReadyReplicas
		case "DaemonSet":
			ds, err := c.cfg.Client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return false, "", err
			}
			want, ready = ds.Status.DesiredNumberScheduled, ds.Status.NumberReady
		default:
			continue // Jobs and others: nothing to wait for
		}
		if ready < want {
			return false, fmt.Sprintf("%s has %d of %d replicas ready", o, ready, want), nil
		}
	}
	return true, "", nil
}

func ptrOr(p *int32, d int32) int32 {
	if p == nil {
		return d
	}
	return *p
}

// finishNode uncordons (if we cordoned) and records the node done.
func (c *Coordinator) finishNode(ctx context.Context, s snapshot, r *Rollout, v nodeView) error {
	ns := *v.state
	c.m.stepDuration.WithLabelValues(ns.Action, "action").Observe(s.now.Sub(ns.StepAt).Seconds())
	ns.Step, ns.StepAt, ns.Message = protocol.StepDone, s.now, "verified"
	var unsched *bool
	if ns.CordonedByUs {
		unsched = boolPtr(false)
	}
	if err := c.writeNode(ctx, v.node, &ns, unsched, nil); err != nil {
		return err
	}
	c.m.stepDuration.WithLabelValues(ns.Action, "total").Observe(s.now.Sub(ns.StartedAt).Seconds())
	c.mu.Lock()
	c.lastVerified = s.now
	c.mu.Unlock()
	c.cfg.Log.Info("node done", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("action", ns.Action),
		zap.Duration("took", s.now.Sub(ns.StartedAt)))
	c.event(v.node, corev1.EventTypeNormal, "Verified", "Uncordon", "rollout %s: %s verified in %s; %s", r.ID, ns.Action,
		s.now.Sub(ns.StartedAt).Round(time.Second), map[bool]string{true: "uncordoned", false: "left cordoned as it was found"}[ns.CordonedByUs])
	return nil
}

// halt stops the rollout on a node's failure: the node is uncordoned (if we
// cordoned it) and marked halted, the rollout halted with the reason, and
// nothing more starts until an administrator resumes or cancels.
func (c *Coordinator) halt(ctx context.Context, s snapshot, r *Rollout, v nodeView, reason, msg string) error {
	c.stopDrain(v.plan.Name)
	if v.node != nil {
		ns := protocol.NodeState{Rollout: r.ID, Action: string(v.plan.Action)}
		if v.state != nil {
			ns = *v.state
		}
		ns.Step, ns.StepAt, ns.Reason, ns.Message = protocol.StepHalted, s.now, reason, msg
		var unsched *bool
		if ns.CordonedByUs && v.node.Spec.Unschedulable {
			unsched = boolPtr(false)
		}
		if err := c.writeNode(ctx, v.node, &ns, unsched, nil); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		c.event(v.node, corev1.EventTypeWarning, "RolloutHalted", "Halt", "rollout %s halted on this node (%s): %s", r.ID, reason, msg)
	}
	if _, err := c.updateState(ctx, func(st *State) error {
		if st.Rollout == nil || st.Rollout.ID != r.ID {
			return errors.New("the rollout changed while halting")
		}
		if st.Rollout.Phase == PhaseRunning || st.Rollout.Phase == PhasePaused {
			st.Rollout.Phase = PhaseHalted
		}
		st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message, st.Rollout.UpdatedAt = reason, v.plan.Name, msg, s.now
		return nil
	}); err != nil {
		return err
	}
	r.Phase, r.HaltReason, r.HaltNode, r.Message = PhaseHalted, reason, v.plan.Name, msg
	c.m.halts.WithLabelValues(reason).Inc()
	c.cfg.Log.Error("rollout halted; waiting for an administrator (tokenroll rollout resume|cancel)", zap.String("rollout", r.ID),
		zap.String("node", v.plan.Name), zap.String("reason", reason), zap.String("message", msg))
	return nil
}

func (c *Coordinator) finishRollout(ctx context.Context, s snapshot, r *Rollout) error {
	if _, err := c.updateState(ctx, func(st *State) error {
		if st.Rollout == nil || st.Rollout.ID != r.ID {
			return errors.New("the rollout changed while finishing it")
		}
		if st.Rollout.Phase == PhaseRunning {
			st.Rollout.Phase = PhaseDone
		}
		st.Rollout.FinishedAt, st.Rollout.UpdatedAt = s.now, s.now
		return nil
	}); err != nil {
		return err
	}
	c.cfg.Log.Info("rollout finished", zap.String("rollout", r.ID), zap.String("phase", string(r.Phase)), zap.Duration("took", s.now.Sub(r.CreatedAt)))
	return nil
}

// writeNode patches the node-state annotation (nil: removed), the
// unschedulable field (nil: unchanged) and extra annotations in one JSON
// merge patch carrying the resourceVersion the decision was taken on, so a
// decision on a stale cache fails with a conflict instead of acting twice.
func (c *Coordinator) writeNode(ctx context.Context, n *corev1.Node, ns *protocol.NodeState, unschedulable *bool, extra map[string]any) error {
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
	patch := map[string]any{"metadata": map[string]any{"annotations": ann, "resourceVersion": n.ResourceVersion}}
	if unschedulable != nil {
		patch["spec"] = map[string]any{"unschedulable": *unschedulable}
	}
	raw, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	out, err := c.cfg.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, raw, metav1.PatchOptions{FieldManager: "tokenroll-coordinator"})
	if err != nil {
		return fmt.Errorf("updating node %s: %w", n.Name, err)
	}
	_, _ = trimNode(out)
	c.mu.Lock()
	c.freshNodes[n.Name] = out
	c.mu.Unlock()
	return nil
}

func nodeReady(n *corev1.Node) bool { return nodeutil.Ready(n) }

// observeRollout exports the rollout's phase and node counts.
func (c *Coordinator) observeRollout(s snapshot, r *Rollout) {
	if r == nil {
		c.m.setPhase("none")
		for _, st := range nodeStates {
			c.m.nodes.WithLabelValues(st).Set(0)
		}
		return
	}
	c.m.setPhase(string(r.Phase))
	counts := map[string]int{}
	for _, pn := range r.Nodes {
		n := s.byName[pn.Name]
		if n == nil {
			counts["skipped"]++
			continue
		}
		st := nodeState(n, r.ID)
		switch {
		case st == nil:
			counts["pending"]++
		case st.Step.InProgress():
			counts["in_progress"]++
		case st.Step == protocol.StepDone:
			counts["done"]++
		case st.Step == protocol.StepHalted:
			counts["halted"]++
		}
	}
	for _, st := range nodeStates {
		c.m.nodes.WithLabelValues(st).Set(float64(counts[st]))
	}
}
