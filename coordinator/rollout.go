package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file is the rollout's state machine: which nodes start, when the
// rollout halts, finishes, or changes phase at a person's request. What
// happens to one node is in node.go, and what a strategy does in its
// strategy_*.go.

// nodeView is one planned node as a sync sees it.
type nodeView struct {
	plan  PlannedNode
	node  *corev1.Node // nil: deleted
	state *protocol.NodeState
}

func (t *term) views(w world, r *Rollout) []nodeView {
	views := make([]nodeView, 0, len(r.Nodes))
	for _, pn := range r.Nodes {
		v := nodeView{plan: pn, node: w.byName[pn.Name]}
		if v.node != nil {
			v.state = t.parsed.readNodeState(v.node, r.ID)
		}
		views = append(views, v)
	}
	return views
}

// refresh re-reads the views' nodes after this sync's own writes.
func (t *term) refresh(views []nodeView, id string) []nodeView {
	out := make([]nodeView, len(views))
	for i, v := range views {
		out[i] = v
		if v.node == nil {
			continue
		}
		if n := t.node(v.plan.Name); n != nil {
			out[i].node, out[i].state = n, t.parsed.readNodeState(n, id)
		}
	}
	return out
}

// advance moves the rollout on: in-flight nodes first, then, if the gate,
// the phase, the settle time and maxUnavailable allow, new nodes.
func (t *term) advance(ctx context.Context, w world, r *Rollout) (time.Duration, error) {
	views := t.views(w, r)
	var next time.Duration
	wake := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	// In-flight nodes.
	for _, v := range views {
		if v.node == nil || v.state == nil || (!v.state.Step.InProgress() && v.state.Step != protocol.StepApps) {
			continue
		}
		d, err := t.progress(ctx, w, r, v)
		if err != nil {
			return 0, err
		}
		wake(d)
	}
	t.observeRollout(w, r)

	// The end of a rollout: unresolved and excluded nodes do not hold it
	// up.
	pending, inFlight, halted := 0, 0, 0
	var unresolved, excluded, agentDryRun, policyDryRun []string
	for _, v := range t.refresh(views, r.ID) {
		switch {
		case v.node == nil:
		case v.state == nil && excludedBy(v.node) != "":
			excluded = append(excluded, v.plan.Name)
		case v.state == nil:
			pending++
		case v.state.Step.InProgress(), v.state.Step == protocol.StepApps:
			// A node whose apps are watched holds the rollout open, but
			// not the disruption budget (disrupted).
			inFlight++
		case v.state.Step == protocol.StepHalted:
			halted++
		case v.state.Step == protocol.StepUnresolved:
			unresolved = append(unresolved, v.plan.Name)
		case v.state.Step == protocol.StepExcluded:
			excluded = append(excluded, v.plan.Name)
		case v.state.Step == protocol.StepDryRun && v.state.Request != "":
			// Only an agent's answer to a request makes a node dry-run
			// with a request; a policy's dry run requests nothing.
			agentDryRun = append(agentDryRun, v.plan.Name)
		case v.state.Step == protocol.StepDryRun:
			policyDryRun = append(policyDryRun, v.plan.Name)
		}
	}
	if inFlight == 0 && (r.Phase == RolloutCancelled || (r.Phase == RolloutRunning && pending == 0 && halted == 0)) {
		var note []string
		if len(unresolved) > 0 {
			note = append(note, fmt.Sprintf("%s unresolved, tokens still stale after the action (%s): tokenroll rollout retry NODE", nodeCount(len(unresolved)), namesOf(unresolved)))
		}
		if len(excluded) > 0 {
			note = append(note, fmt.Sprintf("%s excluded (%s)", nodeCount(len(excluded)), namesOf(excluded)))
		}
		if len(agentDryRun) > 0 {
			note = append(note, fmt.Sprintf("%s dry-run by agent --dry-run: not acted on (%s)", nodeCount(len(agentDryRun)), namesOf(agentDryRun)))
		}
		if len(policyDryRun) > 0 {
			note = append(note, fmt.Sprintf("%s dry-run by RolloutPolicy spec.dryRun: nothing done (%s)", nodeCount(len(policyDryRun)), namesOf(policyDryRun)))
		}
		return 0, t.finishRollout(ctx, w, r, strings.Join(note, "; "))
	}
	if r.Phase != RolloutRunning {
		return next, nil
	}
	if !w.gate.Open {
		if inFlight == 0 {
			t.wait(WaitGateClosed, "the revision gate is closed; no node starts until it opens", zap.String("gate", w.gate.Message))
		}
		return next, nil
	}
	if w.issuer == "" {
		if inFlight == 0 {
			t.wait(WaitIssuerUnknown, "waiting to learn the API servers' issuer before starting a node")
		}
		return next, nil
	}
	t.mu.Lock()
	settleUntil := t.lastVerified.Add(t.c.cfg.Settle)
	t.mu.Unlock()
	if w.now.Before(settleUntil) {
		// A pause we chose, not a wait for something: logged, not shown,
		// so it costs no write per node.
		t.logOnChange("settling after the last verified node (--settle)", zap.Time("until", settleUntil))
		wake(settleUntil.Sub(w.now))
		return next, nil
	}
	if until := t.gateSettled(); w.now.Before(until) {
		if !TrustEnded(w.gate, w.issuer, w.now) {
			t.logOnChange("the revision gate is open; new nodes start once it has stayed open for --gate-settle", zap.Time("until", until))
			wake(until.Sub(w.now))
			return next, nil
		}
		// No previous issuer is trusted: every token it signed fails now,
		// and waiting would only make them fail longer. A flap of the gate
		// still stops new nodes, and those started finish or are released
		// once, as after the settle.
		t.logOnChange("the revision gate is open and no previous issuer is trusted: nodes start without waiting for --gate-settle", zap.Time("settleUntil", until))
	}
	d, err := t.startNodes(ctx, w, r, t.refresh(views, r.ID))
	wake(d)
	return next, err
}

// annotationMCOState is where the OpenShift Machine Config daemon records
// its work on a node; any value but "Done" means it may drain or reboot the
// node itself.
const annotationMCOState = "machineconfiguration.openshift.io/state"

// mcoBusy returns the Machine Config daemon's state when it is working on
// the node, or "".
func mcoBusy(n *corev1.Node) string {
	if s, ok := n.Annotations[annotationMCOState]; ok && s != "Done" {
		return s
	}
	return ""
}

// AnnotationExclude, set by a person to any value (the reason, shown in
// status), keeps tokenroll off a node: it is never planned, cordoned or
// acted on, and work in progress on it stops with its cordon left as it
// is. It is a person's word to the coordinator, not part of the protocol
// between the agent and the coordinator: anyone who may patch Nodes may
// set it, and neither component writes it.
const AnnotationExclude = protocol.Prefix + "exclude"

// excludedBy returns the reason a person gave for excluding the node from
// tokenroll (AnnotationExclude), or "".
func excludedBy(n *corev1.Node) string {
	v, ok := n.Annotations[AnnotationExclude]
	if !ok {
		return ""
	}
	v = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(strings.TrimSpace(v), "?"))
	if v == "" {
		v = "no reason given"
	}
	return truncate(v, 128)
}

// foundCordoned tells whether a planned node is one someone else cordoned,
// that we have not started (or that halted and may start again), and that
// we may act on.
func foundCordoned(v nodeView, lock kuredLock) bool {
	return v.node != nil && v.node.Spec.Unschedulable && nodeutil.Ready(v.node) && mcoBusy(v.node) == "" && excludedBy(v.node) == "" &&
		!lock.held(v.plan.Name) && (v.state == nil || v.state.Step == protocol.StepHalted)
}

// disrupted counts nodes out of service: ours in flight, and any other node
// NotReady or unschedulable. found counts apart the planned nodes someone
// else cordoned that we are not working on (not started yet, or finished
// and left cordoned as they were found): they hold up the nodes we would
// cordon ourselves, but not each other, or a plan of such nodes would wait
// on itself.
// others names the other nodes out of service, each with why. A node
// holding kured's lock is out of service whatever it looks like: kured
// may cordon, drain and reboot it at any moment.
func disrupted(views []nodeView, all []*corev1.Node, lock kuredLock) (busy, found int, others []string) {
	ours := map[string]bool{}
	for _, v := range views {
		switch {
		case v.node == nil:
		case v.state != nil && v.state.Step.InProgress() && !startedUncordoned(v):
			ours[v.plan.Name] = true
			busy++
		case foundCordoned(v, lock) || (v.state != nil && (v.state.Step == protocol.StepDone || v.state.Step == protocol.StepUnresolved || v.state.Step == protocol.StepDryRun ||
			v.state.Step == protocol.StepApps) && !v.state.CordonedByUs && v.node.Spec.Unschedulable):
			ours[v.plan.Name] = true
			found++
		}
	}
	for _, node := range all {
		switch {
		case ours[node.Name]:
		case lock.held(node.Name):
			busy++
			others = append(others, node.Name+" holds kured's lock")
		case !nodeutil.Ready(node):
			busy++
			others = append(others, node.Name+" NotReady")
		case node.Spec.Unschedulable:
			busy++
			others = append(others, node.Name+" cordoned")
		}
	}
	return busy, found, others
}

func (t *term) startNodes(ctx context.Context, w world, r *Rollout, views []nodeView) (time.Duration, error) {
	if r.Policy != "" {
		// Its nodes follow no other policy, nor the flags: while the one
		// it names cannot be used, none starts; nodes acting finish.
		todo := "cancel it (tokenroll rollout cancel) and start a rollout without spec.policyName"
		if why := t.namedPolicyProblem(r.ID, r.Policy, todo); why != "" {
			if slices.ContainsFunc(views, func(v nodeView) bool { return v.node != nil && v.state != nil && v.state.Step.InProgress() }) {
				t.logOnChange(why)
			} else {
				t.wait(WaitPolicyRefused, why)
			}
			return 0, nil
		}
	}
	limit, err := t.maxUnavailable(ctx, w, r, views)
	if err != nil {
		return 0, err
	}
	// A planned node someone else cordoned is out of service already: it
	// goes first, taking a slot of --max-unavailable while we work on it,
	// and it counts against the nodes we would cordon ourselves.
	lock := t.readKuredLock(w.now)
	busy, found, others := disrupted(views, t.listNodes(), lock)
	inFlight := 0
	for _, v := range views {
		if v.node != nil && v.state != nil && v.state.Step.InProgress() {
			inFlight++
		}
	}
	if lock.err != nil {
		// Any node may be the one kured is rebooting: none starts.
		msg := "no node starts while who holds kured's reboot lock is unknown: " + lock.err.Error()
		if inFlight > 0 {
			t.logOnChange(msg)
		} else {
			t.wait(WaitKuredLock, msg)
		}
		return 0, nil
	}
	// With RolloutPolicies, each node's pool (and zone) bounds it instead
	// of limit, which then bounds the nodes no policy covers.
	pg := t.policyGate(ctx, w, r, views, lock, limit)
	var held []policy.Block
	var blocked, mco, kured, notReady []string
	// Once the previous issuer is no longer trusted, auto starts its
	// kubelet restarts without a cordon, outside --max-unavailable
	// (startUncordoned), a canary first, then up to --max-kubelet-restarts at
	// once (uncordonedSlots). A
	// RolloutPolicy's pools bound every node they cover.
	noCordon := TrustEnded(w.gate, w.issuer, w.now)
	policyCovers := func(name string) bool {
		if pg == nil {
			return false
		}
		_, covered := pg.cov.Of[name]
		_, refused := pg.cov.Refused[name]
		return covered || refused
	}
	var ev appEvidence
	slots := 0
	if noCordon {
		restarts, err := ResolveMaxUnavailable(t.c.cfg.MaxKubeletRestarts, len(w.nodes))
		if err != nil {
			return 0, fmt.Errorf("kubelet restarts at once: %w", err)
		}
		ev, slots = t.appEvidence(w.now), uncordonedSlots(views, restarts)
	}
	for _, already := range []bool{true, false} {
		for _, v := range views {
			if v.node == nil || (v.state != nil && v.state.Step != protocol.StepHalted) || v.node.Spec.Unschedulable != already {
				continue
			}
			if excludedBy(v.node) != "" {
				continue
			}
			if !nodeutil.Ready(v.node) {
				notReady = append(notReady, v.plan.Name)
				continue // it may come back; it counts as disrupted meanwhile
			}
			if s := mcoBusy(v.node); s != "" {
				mco = append(mco, v.plan.Name+"="+s)
				continue
			}
			if lock.held(v.plan.Name) {
				kured = append(kured, v.plan.Name)
				continue
			}
			if noCordon && !already && v.plan.Strategy == Auto && !policyCovers(v.plan.Name) {
				if rung := (auto{}).firstRung(t.parsed, v.node, w.issuer, ev); rung == KubeletRestart || rung == rungNone {
					if slots <= 0 {
						continue // a kubelet restart in flight wakes us once verified
					}
					if err := t.startUncordoned(ctx, w, r, v, rung); err != nil {
						return 0, err
					}
					slots--
					inFlight++
					continue
				}
			}
			ahead := busy
			if !already {
				ahead += found
			}
			if pg != nil {
				blk, dryRun := pg.admit(ctx, v, already)
				if blk != nil {
					held = append(held, *blk)
					continue
				}
				if dryRun {
					if err := t.dryRunNode(ctx, w, r, v, pg.cov.Of[v.plan.Name].Name); err != nil {
						return 0, err
					}
					continue
				}
			} else if ahead >= limit {
				blocked = append(blocked, v.plan.Name)
				continue
			}
			var p *policy.Policy
			if pg != nil {
				p = pg.cov.Of[v.plan.Name]
			}
			if err := t.cordon(ctx, w, r, v, p); err != nil {
				return 0, err
			}
			busy++
			inFlight++
			if already {
				found--
			}
		}
	}
	if len(held) > 0 && len(mco) == 0 && len(kured) == 0 && len(notReady) == 0 {
		if inFlight > 0 {
			t.logOnChange(heldMessage(held))
		} else {
			t.wait(held[0].Reason, heldMessage(held))
		}
		return pg.after(), nil
	}
	if len(mco) == 0 && len(kured) == 0 && len(notReady) == 0 && (len(blocked) == 0 || busy+found == 0) {
		return pg.after(), nil
	}
	// One message, so that logOnChange logs it again only when it changes.
	msg, fields := "nodes waiting for max-unavailable, the Machine Config daemon, kured's lock or to be Ready",
		[]zap.Field{zap.Int("outOfService", busy+found), zap.Int("maxUnavailable", limit), zap.Int("nodesWaiting", len(blocked))}
	for _, f := range []struct {
		key   string
		names []string
	}{{"outOfServiceNodes", others}, {"machineConfigUpdating", mco}, {"kuredLock", kured}, {"notReady", notReady}} {
		if len(f.names) > 0 {
			fields = append(fields, zap.String(f.key, namesOf(f.names)))
		}
	}
	reason := WaitMaxUnavailable
	switch {
	case inFlight > 0:
		// Our own nodes fill the budget: the rollout moves on.
		t.logOnChange(msg, fields...)
		return 0, nil
	case len(blocked) > 0:
	case len(mco) > 0:
		reason = WaitMachineConfig
	case len(kured) > 0:
		reason = WaitKuredLock
	default:
		reason = WaitNodeNotReady
	}
	t.wait(reason, msg, fields...)
	return 0, nil
}

// applySteer applies an administrator's pause, resume or cancel, or
// refuses it, and clears it; it returns the state written.
func (t *term) applySteer(ctx context.Context, w world) (State, error) {
	var outcome string
	var refused bool
	st, err := t.updateState(ctx, func(st *State) error {
		req := st.Steer
		if req == nil {
			return nil
		}
		st.Steer = nil
		who := orUnknown(req.RequestedBy)
		r := st.Active()
		if r == nil || r.ID != req.Rollout {
			refused = true
			outcome = fmt.Sprintf("%s requested by %s refused: rollout %s is no longer active", req.Verb, who, req.Rollout)
			if st.Rollout != nil && st.Rollout.ID == req.Rollout {
				st.Rollout.Steered = outcome
			}
			return nil
		}
		if (req.Verb == VerbResume && r.Phase == RolloutRunning) || (req.Verb == VerbPause && r.Phase == RolloutPaused) ||
			(req.Verb == VerbCancel && r.Phase == RolloutCancelled) {
			// A spec change that asks for the phase the rollout is in
			// (a retry added, say): nothing to steer.
			return nil
		}
		next, err := Steer(req.Verb, r.Phase)
		if err != nil {
			refused = true
			outcome = fmt.Sprintf("%s requested by %s refused: %v", req.Verb, who, err)
			r.Steered = outcome
			return nil
		}
		from := r.Phase
		r.Phase, r.UpdatedAt = next, w.now
		if req.Verb == VerbResume {
			msg := "resumed by " + who
			if r.HaltReason != "" {
				msg += "; it had halted: " + r.HaltReason + ": " + r.Message
			}
			r.Message = msg
			r.HaltReason, r.HaltNode = "", ""
		}
		outcome = fmt.Sprintf("%s requested by %s: %s, was %s", req.Verb, who, next, from)
		if !req.RequestedAt.IsZero() {
			outcome = fmt.Sprintf("%s requested by %s at %s: %s, was %s", req.Verb, who, req.RequestedAt.UTC().Format(time.RFC3339), next, from)
		}
		r.Steered = outcome
		return nil
	})
	if err != nil {
		return State{}, err
	}
	if refused {
		t.c.cfg.Log.Warn("administrator's request refused", zap.String("outcome", outcome))
	} else {
		t.c.cfg.Log.Info("administrator's request applied", zap.String("outcome", outcome))
	}
	return st, nil
}

// halt stops the rollout on a node's failure: the node is uncordoned (if we
// cordoned it) and marked halted, the rollout halted with the reason, and
// nothing more starts until an administrator resumes or cancels.
func (t *term) halt(ctx context.Context, w world, r *Rollout, v nodeView, reason, msg string) error {
	finished := t.stopUnfinishedPreparation(v.plan.Name)
	if v.node != nil {
		ns := protocol.NodeState{Rollout: r.ID, Strategy: v.plan.Strategy}
		if v.state != nil {
			ns = *v.state
		}
		ns.Step, ns.StepAt, ns.Reason, ns.Message = protocol.StepHalted, w.now, reason, msg
		if finished != nil {
			// What a finished drain or eviction did is added to the
			// halted node's record: the pods it moved and their owners.
			ns.Evicted = append(slices.Clone(ns.Evicted), finished.prep.evicted...)
			ns.Owners = mergeOwners(ns.Owners, finished.prep.owners)
		}
		var unsched *bool
		if ns.CordonedByUs && v.node.Spec.Unschedulable {
			unsched = boolPtr(false)
		}
		if err := t.writeNode(ctx, v.node, &ns, unsched, nil); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		t.event(v.node, corev1.EventTypeWarning, "RolloutHalted", "Halt", "rollout %s halted on this node (%s): %s", r.ID, reason, msg)
	}
	if finished != nil {
		t.forgetJob(v.plan.Name, finished)
	}
	if _, err := t.updateState(ctx, func(st *State) error {
		if st.Rollout == nil || st.Rollout.ID != r.ID {
			return errors.New("the rollout changed while halting")
		}
		if st.Rollout.Phase == RolloutRunning || st.Rollout.Phase == RolloutPaused {
			st.Rollout.Phase = RolloutHalted
		}
		st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message, st.Rollout.UpdatedAt = reason, v.plan.Name, msg, w.now
		return nil
	}); err != nil {
		return err
	}
	r.Phase, r.HaltReason, r.HaltNode, r.Message = RolloutHalted, reason, v.plan.Name, msg
	t.c.m.halts.WithLabelValues(reason).Inc()
	t.notify(ctx, v1alpha1.NotifyRolloutHalted, r, "", fmt.Sprintf("halted on node %s (%s): %s; tokenroll rollout resume|cancel", v.plan.Name, reason, msg))
	t.c.cfg.Log.Error("rollout halted; waiting for an administrator (tokenroll rollout resume|cancel)", zap.String("rollout", r.ID),
		zap.String("node", v.plan.Name), zap.String("reason", reason), zap.String("message", msg))
	return nil
}

// finishRollout ends the rollout; note, when set, says what it left
// undone.
func (t *term) finishRollout(ctx context.Context, w world, r *Rollout, note string) error {
	if _, err := t.updateState(ctx, func(st *State) error {
		if st.Rollout == nil || st.Rollout.ID != r.ID {
			return errors.New("the rollout changed while finishing it")
		}
		if st.Rollout.Phase == RolloutRunning {
			st.Rollout.Phase = RolloutDone
		}
		if note != "" {
			st.Rollout.Message = note
		}
		st.Rollout.FinishedAt, st.Rollout.UpdatedAt = w.now, w.now
		return nil
	}); err != nil {
		return err
	}
	if r.Phase == RolloutRunning {
		done := "complete: " + nodeCount(len(r.Nodes))
		if note != "" {
			done += "; " + note
		}
		t.notify(ctx, v1alpha1.NotifyRolloutComplete, r, "", done)
	}
	t.c.cfg.Log.Info("rollout finished", zap.String("rollout", r.ID), zap.String("phase", string(r.Phase)), zap.Duration("took", w.now.Sub(r.CreatedAt)))
	return nil
}

// observeRollout exports the rollout's phase and node counts.
func (t *term) observeRollout(w world, r *Rollout) {
	t.observeEstimate(w, r)
	m := t.c.m
	if r == nil {
		m.setPhase("none")
		for _, st := range nodeCountLabels {
			m.nodes.WithLabelValues(st).Set(0)
		}
		return
	}
	m.setPhase(string(r.Phase))
	counts := map[string]int{}
	for _, pn := range r.Nodes {
		if r.DryRun {
			break // a dry run touched no node
		}
		n := w.byName[pn.Name]
		if n == nil {
			counts["skipped"]++
			continue
		}
		st := t.parsed.readNodeState(n, r.ID)
		switch {
		case st == nil && excludedBy(n) != "":
			counts["excluded"]++
		case st == nil:
			counts["pending"]++
		case st.Step == protocol.StepUnresolved:
			counts["unresolved"]++
		case st.Step == protocol.StepExcluded:
			counts["excluded"]++
		case st.Step == protocol.StepDryRun:
			counts["dry_run"]++
		case st.Step.InProgress(), st.Step == protocol.StepApps:
			counts["in_progress"]++
		case st.Step == protocol.StepDone:
			counts["done"]++
		case st.Step == protocol.StepHalted:
			counts["halted"]++
		}
	}
	for _, st := range nodeCountLabels {
		m.nodes.WithLabelValues(st).Set(float64(counts[st]))
	}
}

// applyRetries carries out the administrators' retry requests: the record
// of a node that is not in progress is removed, so the node is pending
// again in the current rollout, or planned again like any other. It then
// clears the requests.
func (t *term) applyRetries(ctx context.Context, w world) error {
	for _, req := range w.state.Retry {
		who := orUnknown(req.RequestedBy)
		n := w.byName[req.Node]
		var st *protocol.NodeState
		if n != nil {
			if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil {
				st = &s
			}
		}
		switch {
		case n == nil:
			t.c.cfg.Log.Warn("retry refused: no such node", zap.String("node", req.Node), zap.String("requestedBy", who))
		case st != nil && st.Step.InProgress():
			t.c.cfg.Log.Warn("retry refused: the node is in progress", zap.String("node", req.Node), zap.String("step", string(st.Step)), zap.String("requestedBy", who))
		case st == nil:
			t.c.cfg.Log.Info("retry: tokenroll holds no record of the node; nothing to forget", zap.String("node", req.Node), zap.String("requestedBy", who))
		default:
			if err := t.writeNode(ctx, n, nil, nil, nil); err != nil {
				return err
			}
			t.c.cfg.Log.Info("retry: the node's record is forgotten; it is planned again", zap.String("node", req.Node),
				zap.String("was", string(st.Step)), zap.String("requestedBy", who))
			t.event(n, corev1.EventTypeNormal, "RetryRequested", "Retry", "%s asked to retry this node (it was %s): it is planned again", who, st.Step)
		}
	}
	_, err := t.updateState(ctx, func(st *State) error {
		st.Retry = slices.DeleteFunc(st.Retry, func(r RetryRequest) bool {
			return slices.ContainsFunc(w.state.Retry, func(o RetryRequest) bool { return o == r })
		})
		return nil
	})
	return err
}

// wouldDo says what a rollout would do to a node, for a dry run; it reads
// what a strategy's preparation would read and writes nothing.
func (t *term) wouldDo(ctx context.Context, w world, pn PlannedNode) string {
	n := w.byName[pn.Name]
	impl, ok := remediationFor(pn.Strategy)
	if n == nil || !ok {
		return "nothing: no such node or strategy"
	}
	var steps []string
	if !nodeutil.Ready(n) {
		steps = append(steps, "wait until it is Ready")
	}
	if s := mcoBusy(n); s != "" {
		steps = append(steps, "wait for the Machine Config daemon ("+annotationMCOState+"="+s+")")
	}
	if t.readKuredLock(w.now).held(n.Name) {
		steps = append(steps, "wait until it no longer holds kured's reboot lock")
	}
	prep, wait, err := t.prepareNode(ctx, impl, n, w.issuer, w.now)
	noCordon := !n.Spec.Unschedulable && pn.Strategy == Auto && TrustEnded(w.gate, w.issuer, w.now) && prep != nil && (prep.rung == KubeletRestart || prep.rung == rungNone)
	switch {
	case n.Spec.Unschedulable:
		steps = append(steps, "keep its cordon (found cordoned)")
	case noCordon:
		steps = append(steps, "no cordon (the previous issuer is no longer trusted, and a kubelet restart evicts no pod)")
	default:
		steps = append(steps, "cordon")
	}
	switch {
	case err != nil:
		steps = append(steps, "fail to prepare: "+err.Error())
	case wait != "":
		steps = append(steps, "wait: "+wait)
	case prep != nil && prep.kind == "evict":
		steps = append(steps, "evict "+plural.Count(prep.pods, "pod"))
	case prep != nil && prep.run != nil:
		steps = append(steps, prep.kind)
	}
	if a := actionFor(impl, prep); a != "" {
		steps = append(steps, "ask the agent to "+string(a))
	}
	steps = append(steps, "verify")
	if !n.Spec.Unschedulable && !noCordon {
		steps = append(steps, "uncordon")
	}
	if prep != nil && (prep.rung == KubeletRestart || prep.rung == rungNone) {
		steps = append(steps, "watch its apps for --app-stale-grace and evict the pods whose apps present stale credentials or fail to authenticate")
	}
	return strings.Join(steps, ", ")
}

// samePlan tells whether two plans name the same nodes and strategies.
func samePlan(a, b []PlannedNode) bool {
	return slices.EqualFunc(a, b, func(x, y PlannedNode) bool { return x.Name == y.Name && x.Strategy == y.Strategy })
}
