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
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// Auto climbs, per node and from evidence, the least disruptive ladder
// that ends with every app authenticating: restart the kubelet (every
// projected token rewritten, no pod restarted); then watch the node's apps
// and evict only the pods whose apps still present a stale credential
// (app-stale) or fail to authenticate (app-failing); reboot only when the
// kubelet restart did not refresh the files or the node asks for a reboot.
//
// The watch costs --app-stale-grace, and is not paid once per node in
// series: once a node's kubelet restart is verified the node is uncordoned
// and leaves the disruption budget (StepApps is not a disruptive step), so
// the next node starts while the first one's apps are still watched. The
// watches of many nodes overlap; the rollout ends when the last one does.
// What the watch evicts is a handful of pods through the eviction API, so
// PodDisruptionBudgets, not --max-unavailable, bound it.
//
// Without an audit source nothing tells which apps reload their token: the
// kubelet restart would make every file fresh and hide which pods still
// run on an old one. auto then evicts, as pod-restart does, every pod
// holding a token of an untrusted issuer, and says that no app was
// verified: it never counts an app healthy without evidence.
const Auto protocol.Strategy = "auto"

// rungNone is auto's rung for a node whose tokens are all fresh already
// (its app-stale pods alone planned it): nothing is done to the node
// itself, and its apps are watched.
const rungNone protocol.Strategy = "none"

// appsSettle is how long a node's apps are watched past the grace, and
// how late the first judgement of them comes after the watch begins: an
// audit event reaches the coordinator late (the API server's webhook
// batches wait up to 30 s), and an app that reloads its token after a 401
// must have been heard succeeding before it is judged.
const appsSettle = 30 * time.Second

// AppsWatch is how long auto watches a node's apps, at least, once the
// node's own remediation is verified, with --app-stale-grace grace. The
// node is out of the disruption budget meanwhile, so a rollout pays it
// once, after its last node, not once per node.
func AppsWatch(grace time.Duration) time.Duration { return grace + appsSettle }

// appsStartWait is how long a new leader waits for its app detection to
// start (read every pod), and for a first audit event, before auto takes
// it that there is no audit source.
const appsStartWait = 2 * time.Minute

type auto struct{}

func (auto) name() protocol.Strategy { return Auto }

// prepare without app evidence is the fallback: the node protocol calls
// prepareWith.
func (a auto) prepare(ctx context.Context, client kubernetes.Interface, n *corev1.Node, issuer string) (*preparation, string, error) {
	return a.prepareWith(ctx, client, n, issuer, appEvidence{missing: "no app evidence was given"})
}

// prepareWith chooses the node's first rung: a reboot when the node asks
// for one (or a kubelet restart did not help), pod-restart's evictions
// without an audit source, nothing when its files are fresh already, else
// a kubelet restart.
func (a auto) prepareWith(ctx context.Context, client kubernetes.Interface, n *corev1.Node, issuer string, ev appEvidence) (*preparation, string, error) {
	switch rung := a.firstRung(nil, n, issuer, ev); rung {
	case Reboot:
		p, wait, err := reboot{}.prepare(ctx, client, n, issuer)
		if p != nil {
			p.rung = Reboot
		}
		return p, wait, err
	case "":
		return nil, ev.pending, nil
	case PodRestart:
		p, wait, err := podRestart{}.prepare(ctx, client, n, issuer)
		if p != nil {
			p.rung = PodRestart
			p.doneNote += "; apps are not verified: " + ev.missing
		}
		return p, wait, err
	default:
		return &preparation{kind: "none", rung: rung}, "", nil
	}
}

// firstRung is the rung prepareWith chooses for n: "" while app detection
// may soon tell (ev.pending).
// The annotations are parsed through parsed (nil: anew).
func (auto) firstRung(parsed *parsedNodes, n *corev1.Node, issuer string, ev appEvidence) protocol.Strategy {
	rr, _ := protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired])
	st, _ := parsed.nodeState(n)
	switch {
	case rr || st.Rung == Reboot:
		return Reboot
	case ev.pending != "":
		return ""
	case ev.missing != "":
		return PodRestart
	}
	if clean, _ := reportClean(parsed, n, issuer); clean {
		return rungNone
	}
	return KubeletRestart
}

// action is the first rung's: prepareWith names the rung it chose.
func (auto) action() protocol.Action { return protocol.ActionKubeletRestart }

// verify judges the rung the node is on. A kubelet restart whose tokens
// stay stale climbs to a reboot (a wedged kubelet), as does a node that
// asks for one; a verified kubelet restart hands the node to the watch of
// its apps.
func (auto) verify(ctx context.Context, client kubernetes.Interface, in verifyInput) (verdict, error) {
	switch in.state.Rung {
	case PodRestart:
		return podRestart{}.verify(ctx, client, in)
	case Reboot:
		return reboot{}.verify(ctx, client, in)
	case rungNone:
		if tv := tokensVerdict(in); !tv.ok {
			return tv, nil
		}
		return verdict{ok: true, watchApps: true}, nil
	}
	done := in.status != nil && in.status.Phase == protocol.PhaseDone
	if rr, _ := protocol.ParseRebootRequired(in.node.Annotations[protocol.AnnotationRebootRequired]); done && rr {
		return verdict{waiting: "the node reports a required reboot", climb: Reboot, climbNow: true}, nil
	}
	v, err := kubeletRestart{}.verify(ctx, client, in)
	if v.stale {
		v.climb = Reboot
	}
	v.watchApps = v.ok
	return v, err
}

// appEvidence is what app detection can tell when auto asks.
type appEvidence struct {
	// missing says why it can tell nothing (no audit source); pending,
	// that it may soon (it is starting).
	missing, pending string
	// started is when the detector started: it knows no token issued
	// before.
	started time.Time
	last    *apps.Result
	grace   time.Duration
	// interval is how often the detector judges.
	interval time.Duration
}

// appEvidence reads this leader's app detection at now.
func (t *term) appEvidence(now time.Time) appEvidence {
	c := t.c
	if c.cfg.Apps == nil {
		return appEvidence{missing: "app detection is off (--app-detection=false)"}
	}
	ev := appEvidence{grace: c.cfg.Apps.Grace, interval: c.cfg.Apps.Interval}
	d := c.detector.Load()
	switch {
	case d == nil && c.appsStopped.Load() != nil:
		ev.missing = "app detection stopped: " + *c.appsStopped.Load()
		return ev
	case d == nil && now.Sub(t.since) < appsStartWait:
		ev.pending = "waiting for app detection to start on this leader before choosing how to remediate the node"
		return ev
	case d == nil:
		ev.missing = fmt.Sprintf("app detection has not started on this leader within %s (it has not read the pods)", appsStartWait)
		return ev
	}
	ev.started, ev.last = d.Started(), d.Last()
	if ev.last == nil {
		ev.pending = "waiting for app detection's first judgement of the pods"
		return ev
	}
	if auditEvents(ev.last) == 0 {
		if now.Sub(ev.started) < appsStartWait {
			ev.pending = "waiting for a first audit event before choosing how to remediate the node"
			return ev
		}
		ev.missing = "no audit event has reached the coordinator; connect an audit source (--audit-webhook-listen or --audit-log)"
	}
	return ev
}

func auditEvents(res *apps.Result) uint64 {
	var n uint64
	for _, byResult := range res.Events {
		for _, k := range byResult {
			n += k
		}
	}
	return n
}

// appStaleNodes counts, per node, the pods app detection finds app-stale
// whose credential will stop working (staleCredentialFails), for the
// planner, when the strategy is auto (nil otherwise: no other strategy
// restarts such a pod). A pod a node's last remediation evicted is not
// counted: it may still be going.
func (t *term) appStaleNodes(w world) map[string]int {
	if t.c.cfg.Strategy != Auto {
		return nil
	}
	d := t.c.detector.Load()
	if d == nil {
		return nil
	}
	res := d.Last()
	if res == nil {
		return nil
	}
	var out map[string]int
	for _, p := range res.Problems {
		n := w.byName[p.Pod.Node]
		if !p.Stale || n == nil || !staleCredentialFails(p, w) {
			continue
		}
		if st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil &&
			slices.ContainsFunc(st.Evicted, func(r protocol.PodRef) bool { return r.UID == string(p.Pod.UID) }) {
			continue
		}
		if out == nil {
			out = map[string]int{}
		}
		out[p.Pod.Node]++
	}
	return out
}

// startedUncordoned reports whether v is a node auto started without a cordon
// and that is still acting: it makes no node unavailable, so it does not
// count against --max-unavailable.
func startedUncordoned(v nodeView) bool {
	return v.node != nil && v.state != nil && v.state.NoCordon && v.state.Step == protocol.StepActing
}

// uncordonedSlots is how many more nodes auto may start without a cordon
// now (it is asked only once the previous issuer is no longer trusted):
// one, a canary, until a kubelet restart of this rollout is verified, then
// up to limit at once. A kubelet restart that does not work on this
// cluster (a staged configuration that breaks it, a unit that does not
// come back) is found on one node, not on every node at once; once one has
// worked, each node made to wait for another keeps its pods failing to
// authenticate, since the old issuer's tokens fail already, and only the
// API servers' load (--max-kubelet-restarts) bounds them.
func uncordonedSlots(views []nodeView, limit int) int {
	inFlight := 0
	for _, v := range views {
		if startedUncordoned(v) {
			inFlight++
		}
	}
	if canaryVerified(views) {
		return limit - inFlight
	}
	return 1 - inFlight
}

// canaryVerified reports whether a kubelet restart of the rollout has been
// verified: auto's canary, after which more than one node restarts at
// once.
func canaryVerified(views []nodeView) bool {
	return slices.ContainsFunc(views, func(v nodeView) bool {
		return v.state != nil && v.state.Rung == KubeletRestart && !v.state.AppsAt.IsZero()
	})
}

// startUncordoned starts a node on auto's first rung, a kubelet restart
// (or nothing, rungNone), without a cordon, when the API servers no longer
// trust the previous issuer: every pod on the node still holding its
// tokens fails to authenticate until the kubelet replaces them, and the
// restart evicts no pod. The node keeps running its pods; a pod scheduled
// onto it while the kubelet restarts is admitted once the new kubelet
// lists its pods (about a second later), with tokens of the current
// issuer. So there is nothing to keep off the node and nothing made
// unavailable: waiting for --max-unavailable would only prolong the apps'
// outage. The request and the state go in one write, on the Node as read
// (its resourceVersion): a node cordoned meanwhile is decided again.
func (t *term) startUncordoned(ctx context.Context, w world, r *Rollout, v nodeView, rung protocol.Strategy) error {
	ns := protocol.NodeState{Rollout: r.ID, Step: protocol.StepActing, Strategy: v.plan.Strategy, Rung: rung, NoCordon: true,
		StepAt: w.now, StartedAt: w.now, BootID: v.node.Status.NodeInfo.BootID}
	extra := map[string]any{}
	if rung == KubeletRestart {
		req := protocol.Request{ID: r.ID + "-" + randHex(4), Action: protocol.ActionKubeletRestart, Node: v.plan.Name, Rollout: r.ID, CreatedAt: w.now}
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
	t.mu.Lock()
	delete(t.uncordoned, v.plan.Name)
	t.mu.Unlock()
	what := "asked the agent to " + string(protocol.ActionKubeletRestart) + " (request " + ns.Request + ")"
	if rung == rungNone {
		what = "its tokens are fresh already; its apps are watched"
	}
	if rung == KubeletRestart {
		// The same line as every other request's (node.go), so that whoever
		// follows the log sees every action however it started.
		t.c.cfg.Log.Info("action requested", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("action", string(protocol.ActionKubeletRestart)),
			zap.String("request", ns.Request), zap.Bool("cordoned", false))
	}
	t.c.cfg.Log.Info("node started without a cordon: the previous issuer is no longer trusted, and a kubelet restart evicts no pod", zap.String("rollout", r.ID),
		zap.String("node", v.plan.Name), zap.String("rung", string(rung)), zap.String("request", ns.Request))
	t.event(v.node, corev1.EventTypeNormal, "ActionRequested", "Request", "rollout %s: %s for %s (%s), not cordoned: the API servers no longer trust the previous issuer, and a kubelet restart evicts no pod; %s",
		r.ID, rung, v.plan.Strategy, v.plan.Reason, what)
	return nil
}

// roomToCordon reports whether --max-unavailable (as raised) has room
// for one more node out of service now.
func (t *term) roomToCordon(w world, r *Rollout) bool {
	base, ceiling, err := t.c.limits(len(w.nodes))
	if err != nil {
		return false
	}
	busy, found, _ := disrupted(t.refresh(t.views(w, r), r.ID), t.listNodes(), t.readKuredLock(w.now))
	return busy+found < inForce(r, base, ceiling)
}

// climb puts the node on the next rung: cordoned again for it, the
// request answered.
func (t *term) climb(ctx context.Context, w world, r *Rollout, v nodeView, to protocol.Strategy, why string) error {
	ns := *v.state
	from := cmpOr(ns.Rung, KubeletRestart)
	t.mu.Lock()
	evicting := t.jobs[v.plan.Name] != nil
	t.mu.Unlock()
	if evicting {
		// The next rung's preparation would take these evictions for
		// its own: they end first (their end wakes us).
		t.logOnChange("waiting for the evictions in flight to end before climbing to the next rung", zap.String("node", v.plan.Name), zap.String("to", string(to)))
		return nil
	}
	var unsched *bool
	if ns.NoCordon {
		// Started without a cordon: the next rung evicts or reboots, so
		// the node is cordoned for it, and waits for room under
		// --max-unavailable first (a node done or uncordoned wakes us).
		if !t.roomToCordon(w, r) {
			t.logOnChange("waiting for room under --max-unavailable to cordon the node for the next rung", zap.String("node", v.plan.Name),
				zap.String("from", string(from)), zap.String("to", string(to)), zap.String("why", why))
			return nil
		}
		unsched = boolPtr(true)
		ns.NoCordon, ns.CordonedByUs = false, !v.node.Spec.Unschedulable
	}
	ns.Step, ns.StepAt, ns.Rung, ns.Request = protocol.StepCordoned, w.now, to, ""
	ns.Message = fmt.Sprintf("%s did not do: %s; climbing to %s", from, truncate(why, 256), to)
	if err := t.writeNode(ctx, v.node, &ns, unsched, map[string]any{protocol.AnnotationRequest: nil}); err != nil {
		return err
	}
	t.c.cfg.Log.Warn("climbing to the next rung", zap.String("rollout", r.ID), zap.String("node", v.plan.Name),
		zap.String("from", string(from)), zap.String("to", string(to)), zap.String("why", why))
	t.event(v.node, corev1.EventTypeWarning, "Climbed", "Climb", "rollout %s: %s did not do (%s): the node gets a %s", r.ID, from, truncate(why, 256), to)
	return nil
}

func cmpOr(s, d protocol.Strategy) protocol.Strategy {
	if s == "" {
		return d
	}
	return s
}

// startApps ends the node's own remediation: uncordoned (if we cordoned
// it), out of the disruption budget, and its apps watched.
func (t *term) startApps(ctx context.Context, w world, r *Rollout, v nodeView) error {
	ns := *v.state
	t.c.m.stepDuration.WithLabelValues(string(ns.Strategy), "action").Observe(w.now.Sub(ns.StepAt).Seconds())
	var unsched *bool
	if ns.CordonedByUs && v.node.Spec.Unschedulable {
		unsched = boolPtr(false)
	}
	how := map[bool]string{true: "uncordoned", false: "left cordoned as it was found"}[ns.CordonedByUs]
	if ns.NoCordon {
		how = "never cordoned"
	}
	rung := cmpOr(ns.Rung, KubeletRestart)
	// Uncordoned now, the cordon is no longer ours: one put back later is
	// someone else's, and stays.
	ns.Step, ns.StepAt, ns.CordonedByUs, ns.Request = protocol.StepApps, w.now, false, ""
	ns.AppsAt = w.now
	ns.Message = fmt.Sprintf("%s verified; watching its apps", rung)
	var clear map[string]any
	if v.state.Request != "" {
		clear = map[string]any{protocol.AnnotationRequest: nil}
	}
	if err := t.writeNode(ctx, v.node, &ns, unsched, clear); err != nil {
		return err
	}
	t.mu.Lock()
	t.lastVerified = w.now
	t.mu.Unlock()
	t.c.cfg.Log.Info("node's tokens verified; watching its apps", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("rung", string(rung)))
	t.event(v.node, corev1.EventTypeNormal, "TokensVerified", "Uncordon", "rollout %s: %s verified in %s; %s; its apps are watched for --app-stale-grace before it is done", r.ID, rung,
		w.now.Sub(ns.StartedAt).Round(time.Second), how)
	return nil
}

// watchApps moves a node whose apps are watched on: it evicts the pods
// app detection finds app-stale or app-failing, and ends the node once the
// watch has lasted the grace and the evicted pods' controllers have
// replaced them.
func (t *term) watchApps(ctx context.Context, w world, r *Rollout, v nodeView) (time.Duration, error) {
	cfg := t.c.cfg
	name, ns := v.plan.Name, v.state
	if r.Phase == RolloutCancelled {
		t.stopPreparation(name)
		return 0, t.endApps(ctx, w, r, v, "the rollout was cancelled while its apps were watched: they are not verified", false)
	}
	t.mu.Lock()
	j := t.jobs[name]
	t.mu.Unlock()
	if j != nil {
		return 0, t.recordEvictions(ctx, w, r, v, j) // its end wakes us
	}
	if r.Phase != RolloutRunning || !w.gate.Open {
		return 0, nil // nothing evicted while paused, halted or gated
	}
	ev := t.appEvidence(w.now)
	switch {
	case ev.pending != "":
		t.logOnChange(ev.pending, zap.String("node", name))
		return prepareWaitPoll, nil
	case ev.missing != "":
		return 0, t.endApps(ctx, w, r, v, "its apps are not verified: "+ev.missing, false)
	}
	from := ns.StepAt
	if ev.started.After(from) {
		from = ev.started
	}
	until := from.Add(ev.grace + appsSettle)
	res := ev.last
	var knownBefore time.Time
	if res.Now.Before(from.Add(appsSettle)) {
		// Too early to judge what the node's new tokens did, but a pod
		// found app-stale before the node started caches its token: the
		// kubelet's new one does not help it, and it goes now.
		knownBefore = ns.StartedAt
	}
	pods, owners, names, err := appProblemPods(ctx, cfg.Client, name, res, ns.Evicted, w, knownBefore)
	if err != nil {
		return 0, t.halt(ctx, w, r, v, HaltDrainFailed, err.Error())
	}
	if len(pods) == 0 && !knownBefore.IsZero() {
		return max(from.Add(appsSettle).Sub(w.now), ev.interval), nil
	}
	if len(pods) > 0 {
		t.startEvictions(ctx, r, v, pods, owners, names)
		return 0, nil
	}
	if w.now.Before(until) || res.Now.Before(until) {
		return max(until.Sub(w.now), ev.interval), nil
	}
	ok, why, err := ownersReady(ctx, cfg.Client, ns.Owners)
	if err != nil {
		return 0, err
	}
	if !ok {
		if !w.now.Before(until.Add(cfg.VerifyTimeout)) {
			return 0, t.halt(ctx, w, r, v, HaltVerifyTimeout, fmt.Sprintf("%s after its pods were evicted", why))
		}
		return ownerPoll, nil
	}
	c := res.Nodes[name]
	msg := fmt.Sprintf("apps verified: of %s with a projected token, %d present current credentials, %d made no authenticated request in --app-window (unobserved, not counted healthy); %s evicted",
		plural.Count(c.Pods, "pod"), c.Healthy, c.Unobserved, plural.Count(len(ns.Evicted), "pod"))
	if ev.started.After(ns.StepAt) {
		msg += "; app detection started after the node's tokens were replaced (a new leader), so an app presenting a token issued before it started is judged only from its next refresh"
	}
	return 0, t.endApps(ctx, w, r, v, msg, true)
}

// recordEvictions records what the node's evictions j did, once they
// have ended (nothing before): the pods evicted and their owners, whose
// replacement the node's verification waits for. Evictions that failed
// halt the rollout.
func (t *term) recordEvictions(ctx context.Context, w world, r *Rollout, v nodeView, j *prepJob) error {
	name := v.plan.Name
	t.mu.Lock()
	done, err := j.done, j.err
	t.mu.Unlock()
	if !done {
		return nil
	}
	if err != nil {
		t.forgetJob(name, j)
		reason := HaltDrainFailed
		if errors.Is(err, context.DeadlineExceeded) {
			reason = HaltDrainTimeout
		}
		return t.halt(ctx, w, r, v, reason, fmt.Sprintf("evicting the pods whose apps present stale credentials or fail to authenticate on node %s: %v", name, err))
	}
	next := *v.state
	next.Evicted = append(slices.Clone(v.state.Evicted), j.prep.evicted...)
	next.Owners = mergeOwners(v.state.Owners, j.prep.owners)
	// As in prepare, the evictions are forgotten only once recorded.
	if err := t.writeNode(ctx, v.node, &next, nil, nil); err != nil {
		return err
	}
	t.forgetJob(name, j)
	t.event(v.node, corev1.EventTypeNormal, "PodsEvicted", "Evict", "rollout %s: %s", r.ID, j.prep.doneNote)
	return nil
}

// startEvictions evicts the node's pods in the background, through the
// eviction API (PodDisruptionBudgets honoured), bounded by the drain
// timeout; their end wakes us.
func (t *term) startEvictions(ctx context.Context, r *Rollout, v nodeView, pods []corev1.Pod, owners []protocol.OwnerRef, names []string) {
	cfg, name := t.c.cfg, v.plan.Name
	refs := make([]protocol.PodRef, 0, len(pods))
	for _, p := range pods {
		refs = append(refs, protocol.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
	}
	prep := &preparation{kind: "evict", pods: len(pods), evicted: refs, owners: owners,
		doneNote: fmt.Sprintf("evicted %s whose apps present stale credentials or fail to authenticate: %s", plural.Count(len(pods), "pod"), strings.Join(names, ", "))}
	opts, _ := t.drainOptions(v.state)
	jctx, cancel := context.WithCancel(ctx)
	j := &prepJob{cancel: cancel, prep: prep}
	t.mu.Lock()
	t.jobs[name] = j
	t.mu.Unlock()
	cfg.Log.Info("evicting pods whose apps present stale credentials or fail to authenticate", zap.String("rollout", r.ID), zap.String("node", name),
		zap.Int("count", len(pods)), zap.String("pods", strings.Join(names, ", ")))
	t.drains.Go(func() {
		err := boundedDrain(jctx, cfg.Clock, opts.Timeout, func(ctx context.Context) error { return cfg.Drainer.Evict(ctx, pods, opts) })
		t.mu.Lock()
		j.done, j.err = true, err
		t.mu.Unlock()
		t.queue.Add(syncKey)
	})
}

// evictKnownStaleEarly runs beside the kubelet restart of a node auto
// started without a cordon (no previous issuer is trusted any more): a
// pod app detection found app-stale before the node started caches a
// token of the previous issuer, which fails now whatever the kubelet
// does, so it is evicted as the node's remediation starts, not once the
// kubelet restart is verified. Evictions that ended are recorded on the
// node, so none is made twice and its verification waits for their
// replacements; evictions still running are picked up by the watch of
// its apps. It reports whether it wrote the node (or halted): then the
// node is looked at again.
func (t *term) evictKnownStaleEarly(ctx context.Context, w world, r *Rollout, v nodeView) (bool, error) {
	name, ns := v.plan.Name, v.state
	if ns.Strategy != Auto || !ns.NoCordon {
		return false, nil
	}
	t.mu.Lock()
	j := t.jobs[name]
	t.mu.Unlock()
	if j != nil {
		t.mu.Lock()
		done := j.done
		t.mu.Unlock()
		return done, t.recordEvictions(ctx, w, r, v, j)
	}
	if r.Phase != RolloutRunning || !w.gate.Open || !TrustEnded(w.gate, w.issuer, w.now) {
		return false, nil
	}
	ev := t.appEvidence(w.now)
	if ev.pending != "" || ev.missing != "" {
		return false, nil
	}
	// An error (a pod no controller would recreate, a read that failed)
	// is left to the watch of the node's apps, which halts with it.
	pods, owners, names, err := appProblemPods(ctx, t.c.cfg.Client, name, ev.last, ns.Evicted, w, ns.StartedAt)
	if err != nil {
		t.logOnChange("not evicting the node's known app-stale pods beside its kubelet restart; the watch of its apps will", zap.String("node", name), zap.Error(err))
		return false, nil
	}
	if len(pods) > 0 {
		t.startEvictions(ctx, r, v, pods, owners, names)
	}
	return false, nil
}

// appProblemPods are the pods on node that res finds app-failing, or
// app-stale with a credential that will stop working, not evicted
// already, still there; a pod no controller would recreate is not
// evicted: the step fails and says which. With knownBefore set, only the
// pods app-stale since before it: an app that went on presenting a token
// its kubelet had replaced, past the grace, before the node's remediation
// began, caches its token, whatever the remediation's new tokens do.
func appProblemPods(ctx context.Context, client kubernetes.Interface, node string, res *apps.Result, evicted []protocol.PodRef, w world, knownBefore time.Time) ([]corev1.Pod, []protocol.OwnerRef, []string, error) {
	gone := map[types.UID]bool{}
	for _, r := range evicted {
		gone[types.UID(r.UID)] = true
	}
	var pods []corev1.Pod
	var names, unmanaged []string
	var owners []protocol.OwnerRef
	for _, pr := range res.Problems {
		if pr.Pod.Node != node || gone[pr.Pod.UID] || (!pr.Failing && !staleCredentialFails(pr, w)) {
			continue
		}
		if !knownBefore.IsZero() && (!pr.Stale || pr.StaleSince.IsZero() || !pr.StaleSince.Before(knownBefore) || !staleCredentialFails(pr, w)) {
			continue
		}
		p, err := client.CoreV1().Pods(pr.Pod.Namespace).Get(ctx, pr.Pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("reading pod %s/%s: %w", pr.Pod.Namespace, pr.Pod.Name, err)
		}
		if p.UID != pr.Pod.UID || p.Spec.NodeName != node || p.DeletionTimestamp != nil {
			continue // already replaced, or on its way out
		}
		ctrl := metav1.GetControllerOf(p)
		if ctrl == nil {
			unmanaged = append(unmanaged, p.Namespace+"/"+p.Name)
			continue
		}
		var conds []string
		if pr.Stale {
			conds = append(conds, string(apps.AppStale))
		}
		if pr.Failing {
			conds = append(conds, string(apps.AppFailing))
		}
		names = append(names, fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, strings.Join(conds, ",")))
		owners = mergeOwners(owners, []protocol.OwnerRef{{Kind: ctrl.Kind, Namespace: p.Namespace, Name: ctrl.Name}})
		pods = append(pods, *p)
	}
	if len(unmanaged) > 0 {
		return nil, nil, nil, fmt.Errorf("pods %s present stale credentials or fail to authenticate but are not managed by a controller, so an eviction would lose them; restart them yourself, then `tokenroll rollout resume`", strings.Join(unmanaged, ", "))
	}
	slices.Sort(names)
	return pods, owners, names, nil
}

// staleCredentialFails reports whether the token an app-stale pod keeps
// presenting will stop working, or has, so that the pod must be restarted:
// the pod has a short-lived token source (the token expires within its
// requested time; the kubelet replaced it at 80% of that); or the token may
// be of a previous issuer (issued before the coordinator saw the API
// servers sign with the current one, w.issuerAt) and
//   - the API servers may trust a previous issuer (the gate cannot tell),
//     or trust one besides the signing issuer, for a time or without a
//     known end: the token stops working with that trust; or
//   - they trust no previous issuer any more, and the pod was app-stale
//     before the coordinator saw the current issuer: what it presented
//     then was signed by the previous issuer, whose trust has ended.
//
// The current issuer's own entry in the trusted list (OpenShift lists it)
// is no previous issuer. Otherwise a token it presents authenticates while
// no previous issuer is trusted, so it is the current issuer's (in the
// kube-api-access default the API server makes it valid for a year): the
// app keeps working, and restarting it each time the kubelet refreshes the
// file would restart it every 48 minutes for nothing.
func staleCredentialFails(pr apps.PodProblem, w world) bool {
	if pr.Pod.ShortLivedTokens {
		return true
	}
	if !pr.IssuedBy.IsZero() && !w.issuerAt.IsZero() && pr.IssuedBy.After(w.issuerAt) {
		return false
	}
	if !TrustEnded(w.gate, w.issuer, w.now) {
		return true
	}
	return !pr.StaleSince.IsZero() && !w.issuerAt.IsZero() && pr.StaleSince.Before(w.issuerAt)
}

// mergeOwners adds b's owners to a's, each once, sorted.
func mergeOwners(a, b []protocol.OwnerRef) []protocol.OwnerRef {
	out := slices.Clone(a)
	for _, o := range b {
		if !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(x, y protocol.OwnerRef) int { return strings.Compare(x.String(), y.String()) })
	return out
}

// endApps ends the watch of a node's apps: done, with what was found.
func (t *term) endApps(ctx context.Context, w world, r *Rollout, v nodeView, msg string, verified bool) error {
	ns := *v.state
	t.c.m.stepDuration.WithLabelValues(string(ns.Strategy), "apps").Observe(w.now.Sub(ns.StepAt).Seconds())
	ns.Step, ns.StepAt, ns.Message = protocol.StepDone, w.now, truncate(msg, 512)
	if err := t.writeNode(ctx, v.node, &ns, nil, nil); err != nil {
		return err
	}
	t.c.m.stepDuration.WithLabelValues(string(ns.Strategy), "total").Observe(w.now.Sub(ns.StartedAt).Seconds())
	typ := corev1.EventTypeNormal
	if !verified {
		typ = corev1.EventTypeWarning
	}
	t.c.cfg.Log.Info("node done", zap.String("rollout", r.ID), zap.String("node", v.plan.Name), zap.String("strategy", string(ns.Strategy)),
		zap.Duration("took", w.now.Sub(ns.StartedAt)), zap.Bool("appsVerified", verified), zap.String("apps", msg))
	t.event(v.node, typ, map[bool]string{true: "Verified", false: "AppsUnverified"}[verified], "Verify", "rollout %s: %s in %s; %s", r.ID, ns.Strategy,
		w.now.Sub(ns.StartedAt).Round(time.Second), msg)
	return nil
}
