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
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file applies the RolloutPolicies (Config.Policies) to the rollout:
// which nodes may start now, the policies' status, and their webhooks.
// The rules are in coordinator/policy; this reads what they need and
// writes what they decide.

// healthPoll is how often a health gate reads the evicted pods'
// controllers again while it holds a pool: they are not watched.
const healthPoll = 2 * time.Second

// policies lists and compiles the cached RolloutPolicies (nil: off).
func (t *term) policies() []*policy.Policy {
	if t.policyStore == nil {
		return nil
	}
	var out []*policy.Policy
	for _, o := range t.policyStore.List() {
		if p, ok := o.(*v1alpha1.RolloutPolicy); ok {
			out = append(out, policy.Compile(p))
		}
	}
	return out
}

// policyGate decides, during one startNodes, whether each node may start
// under its pool's policy; nil when RolloutPolicies are off.
type policyGate struct {
	t      *term
	w      world
	r      *Rollout
	cov    policy.Coverage
	budget *policy.Budget
	// alerts and health are read at most once per pool per sync.
	alerts map[string]*policy.Block
	health map[string]*policy.Block
	views  []nodeView
	wake   time.Time
}

// policyGate counts every node against its pool's budget. defaultLimit is
// the limit of the nodes no policy covers: the coordinator's own.
func (t *term) policyGate(w world, r *Rollout, views []nodeView, lock kuredLock, defaultLimit int) *policyGate {
	if t.policyStore == nil {
		return nil
	}
	g := &policyGate{t: t, w: w, r: r, views: views, budget: policy.NewBudget(),
		alerts: map[string]*policy.Block{}, health: map[string]*policy.Block{}}
	ps := t.policies()
	g.cov = policy.Cover(ps, w.nodes)
	g.budget.SetPool("", defaultLimit, nil)
	for _, p := range ps {
		g.budget.SetPool(p.Name, p.Limit(g.cov.Nodes[p.Name]), p.Object.Spec.Zones)
	}
	planned := map[string]nodeView{}
	for _, v := range views {
		planned[v.plan.Name] = v
	}
	for _, n := range w.nodes {
		if _, refused := g.cov.Refused[n.Name]; refused {
			continue
		}
		pool, zone := g.poolOf(n.Name)
		var c policy.Count
		v, ok := planned[n.Name]
		switch {
		case ok && v.state != nil && v.state.Step.InProgress():
			c.Busy = true
		case ok && (foundCordoned(v, lock) || (v.state != nil && (v.state.Step == protocol.StepDone || v.state.Step == protocol.StepUnresolved ||
			v.state.Step == protocol.StepDryRun) && !v.state.CordonedByUs && n.Spec.Unschedulable)):
			c.Found = true
		case lock.held(n.Name) || !nodeutil.Ready(n) || n.Spec.Unschedulable:
			c.Busy = true
		}
		if ok && excludedBy(n) == "" && (v.state == nil || v.state.Step.InProgress() || v.state.Step == protocol.StepHalted) {
			c.Remaining = true
		}
		g.budget.Add(pool, zone, c)
	}
	return g
}

// poolOf names the node's pool ("": no policy) and its zone in it.
func (g *policyGate) poolOf(node string) (string, string) {
	p := g.cov.Of[node]
	if p == nil {
		return "", ""
	}
	n := g.t.node(node)
	if n == nil {
		return p.Name, ""
	}
	return p.Name, p.ZoneOf(n)
}

func (g *policyGate) until(t time.Time) { g.wake = earliest(g.wake, t) }

// after is when startNodes wants to look again (0: on a change only).
func (g *policyGate) after() time.Duration {
	if g == nil || g.wake.IsZero() || !g.wake.After(g.w.now) {
		return 0
	}
	return g.wake.Sub(g.w.now)
}

// admit says whether the node may start now; dryRun tells that its
// policy is a dry run: it is to be recorded, not started.
func (g *policyGate) admit(ctx context.Context, v nodeView, already bool) (blk *policy.Block, dryRun bool) {
	defer func() {
		if blk != nil {
			g.until(blk.Until)
		}
	}()
	name := v.plan.Name
	if by := g.cov.Refused[name]; len(by) > 0 {
		return &policy.Block{Reason: policy.ReasonPolicyRefused, Message: fmt.Sprintf("node %s is selected by several RolloutPolicies (%s): tokenroll leaves it alone until one alone selects it; make their nodeSelectors disjoint",
			name, strings.Join(by, ", "))}, false
	}
	p := g.cov.Of[name]
	pool, zone := g.poolOf(name)
	if p != nil {
		if len(p.Problems) > 0 {
			return &policy.Block{Reason: policy.ReasonPolicyRefused, Message: fmt.Sprintf("RolloutPolicy %s cannot be used (%s): fix its spec; its nodes wait", p.Name, strings.Join(p.Problems, "; "))}, false
		}
		if p.Object.Spec.DryRun {
			return nil, true
		}
		if ws := policy.At(p.Windows, g.w.now); !ws.Open {
			next := "no window ever opens"
			if !ws.Next.IsZero() {
				next = "the next opens at " + ws.Next.UTC().Format(time.RFC3339)
			}
			return &policy.Block{Reason: policy.ReasonWindow, Until: ws.Next, Message: fmt.Sprintf("pool %s is outside its maintenance windows; %s: nodes already acting finish, no new node starts until then (spec.windows of RolloutPolicy %s)",
				pool, next, p.Name)}, false
		}
	}
	if blk := g.budget.Check(pool, zone, already); blk != nil {
		return blk, false
	}
	if p != nil {
		if blk := g.healthGate(ctx, p); blk != nil {
			return blk, false
		}
		if blk := g.blockingPods(ctx, p, name); blk != nil {
			return blk, false
		}
		if blk := g.blockingAlerts(ctx, p); blk != nil {
			return blk, false
		}
	}
	g.budget.Take(pool, zone, already)
	return nil, false
}

// blockingPods lists the node's pods and matches them against the
// policy's blocking-pod selectors. Pods are not watched: a held node is
// looked at again after PolicyRecheck.
func (g *policyGate) blockingPods(ctx context.Context, p *policy.Policy, node string) *policy.Block {
	if len(p.Pods) == 0 {
		return nil
	}
	client := g.t.c.cfg.Client
	list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return &policy.Block{Reason: policy.ReasonBlockingPod, Until: g.w.now.Add(g.t.c.cfg.PolicyRecheck),
			Message: fmt.Sprintf("listing the pods on node %s for RolloutPolicy %s's blocking pods: %v; the node waits until they can be read", node, p.Name, err)}
	}
	var nsErr error
	nsLabels := map[string]labels.Set{}
	lookup := func(ns string) labels.Set {
		if l, ok := nsLabels[ns]; ok {
			return l
		}
		o, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			nsErr = err
			return nil
		}
		nsLabels[ns] = o.Labels
		return o.Labels
	}
	blocking := policy.BlockingPods(p.Pods, list.Items, lookup)
	switch {
	case nsErr != nil:
		return &policy.Block{Reason: policy.ReasonBlockingPod, Until: g.w.now.Add(g.t.c.cfg.PolicyRecheck),
			Message: fmt.Sprintf("reading a namespace's labels for RolloutPolicy %s's blocking pods: %v; node %s waits until they can be read", p.Name, nsErr, node)}
	case len(blocking) > 0:
		return &policy.Block{Reason: policy.ReasonBlockingPod, Until: g.w.now.Add(g.t.c.cfg.PolicyRecheck), Message: fmt.Sprintf("node %s runs pods that RolloutPolicy %s says block it (%s): it starts once they end or move (spec.blockers.pods)",
			node, p.Name, namesOf(blocking))}
	}
	return nil
}

// blockingAlerts asks the policy's Prometheus for its alerts, once per
// sync: before each node starts, not from a cache.
func (g *policyGate) blockingAlerts(ctx context.Context, p *policy.Policy) *policy.Block {
	a := p.Object.Spec.Blockers
	if a == nil || a.Alerts == nil || p.Alerts == nil {
		return nil
	}
	if blk, ok := g.alerts[p.Name]; ok {
		return blk
	}
	recheck := g.w.now.Add(g.t.c.cfg.PolicyRecheck)
	blk := func() *policy.Block {
		src, err := g.t.alertSource(ctx, a.Alerts)
		if err == nil {
			var alerts []policy.Alert
			if alerts, err = src.Alerts(ctx); err == nil {
				if b := p.Alerts.Blocking(alerts); len(b) > 0 {
					return &policy.Block{Reason: policy.ReasonBlockingAlert, Until: recheck, Message: fmt.Sprintf("alerts block pool %s: %s; it starts once they resolve (spec.blockers.alerts of RolloutPolicy %s)",
						p.Name, policy.Describe(b), p.Name)}
				}
				return nil
			}
		}
		return &policy.Block{Reason: policy.ReasonBlockingAlert, Until: recheck, Message: fmt.Sprintf("reading the alerts of RolloutPolicy %s from %s: %v; its nodes wait until they can be read",
			p.Name, a.Alerts.PrometheusURL, err)}
	}()
	g.alerts[p.Name] = blk
	return blk
}

// alertsHold is what holds a node we cordoned before its next step: the
// blocking alerts of its policy (nil: none, or RolloutPolicies off).
func (t *term) alertsHold(ctx context.Context, w world, node string) *policy.Block {
	if t.policyStore == nil {
		return nil
	}
	p := policy.Cover(t.policies(), w.nodes).Of[node]
	if p == nil || len(p.Problems) > 0 {
		return nil
	}
	g := &policyGate{t: t, w: w, alerts: map[string]*policy.Block{}}
	return g.blockingAlerts(ctx, p)
}

// alertSource builds the Prometheus client of an alert blocker, reading
// its Secrets from the coordinator's namespace.
func (t *term) alertSource(ctx context.Context, a *v1alpha1.AlertBlocker) (policy.AlertSource, error) {
	cfg := policy.PrometheusConfig{URL: a.PrometheusURL}
	if ref := a.BearerTokenSecretRef; ref != nil {
		v, err := t.secretKey(ctx, *ref)
		if err != nil {
			return nil, err
		}
		cfg.BearerToken = strings.TrimSpace(string(v))
	}
	if ref := a.CASecretRef; ref != nil {
		v, err := t.secretKey(ctx, *ref)
		if err != nil {
			return nil, err
		}
		cfg.CAPEM = v
	}
	return policy.NewPrometheus(cfg)
}

// secretKey reads one key of a Secret in the coordinator's namespace. Its
// errors name the Secret and key, never the value.
func (t *term) secretKey(ctx context.Context, ref v1alpha1.SecretKeyRef) ([]byte, error) {
	s, err := t.c.cfg.Client.CoreV1().Secrets(t.c.cfg.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s (the coordinator needs get on it: see the README's RolloutPolicy section): %w", t.c.cfg.Namespace, ref.Name, err)
	}
	v, ok := s.Data[ref.Key]
	if !ok {
		return nil, fmt.Errorf("the Secret %s/%s has no key %q", t.c.cfg.Namespace, ref.Name, ref.Key)
	}
	return v, nil
}

// healthGate holds a pool until the cluster has recovered from its nodes
// already done in this rollout.
func (g *policyGate) healthGate(ctx context.Context, p *policy.Policy) *policy.Block {
	hg := p.Object.Spec.HealthGate
	if hg == nil {
		return nil
	}
	if blk, ok := g.health[p.Name]; ok {
		return blk
	}
	blk := func() *policy.Block {
		ours := map[string]bool{}
		var last *protocol.NodeState
		for _, v := range g.views {
			if v.state == nil {
				continue
			}
			if v.state.Step.InProgress() {
				ours[v.plan.Name] = true
			}
			if v.state.Step == protocol.StepDone && g.cov.Of[v.plan.Name] == p && (last == nil || v.state.StepAt.After(last.StepAt)) {
				last = v.state
			}
		}
		if hg.NodesReady {
			var notReady []string
			for _, n := range g.w.nodes {
				if !ours[n.Name] && !nodeutil.Ready(n) {
					notReady = append(notReady, n.Name)
				}
			}
			if len(notReady) > 0 {
				return &policy.Block{Reason: policy.ReasonHealthGate, Message: fmt.Sprintf("RolloutPolicy %s's health gate waits until every node is Ready: %s are not (spec.healthGate.nodesReady)",
					p.Name, namesOf(notReady))}
			}
		}
		if hg.EvictedPodsReady && last != nil && len(last.Owners) > 0 {
			ok, why, err := ownersReady(ctx, g.t.c.cfg.Client, last.Owners)
			if err != nil {
				why = err.Error()
			}
			if !ok || err != nil {
				return &policy.Block{Reason: policy.ReasonHealthGate, Until: g.w.now.Add(healthPoll), Message: fmt.Sprintf("RolloutPolicy %s's health gate waits until the pods evicted from the last node are Ready again: %s (spec.healthGate.evictedPodsReady)",
					p.Name, why)}
			}
		}
		return nil
	}()
	g.health[p.Name] = blk
	return blk
}

// dryRunNode records what a node of a dry-run pool would get, and does
// nothing to it: the record carries its evidence, so the planner does not
// plan it again for the same stale tokens.
func (t *term) dryRunNode(ctx context.Context, w world, r *Rollout, v nodeView, p string) error {
	ns := protocol.NodeState{Rollout: r.ID, Step: protocol.StepDryRun, Strategy: v.plan.Strategy, StepAt: w.now, StartedAt: w.now,
		Message: truncate("dry run (RolloutPolicy "+p+"): would "+t.wouldDo(ctx, w, v.plan), 1024), Evidence: evidenceOf(v.node, w.issuer)}
	if err := t.writeNode(ctx, v.node, &ns, nil, nil); err != nil {
		return err
	}
	t.event(v.node, corev1.EventTypeNormal, "DryRun", "Plan", "rollout %s: %s", r.ID, ns.Message)
	return nil
}

// heldMessage says why nodes wait on their policies: the first block,
// and how many more nodes wait and why.
func heldMessage(held []policy.Block) string {
	msg := held[0].Message
	if len(held) > 1 {
		count := map[string]int{}
		for _, b := range held[1:] {
			count[b.Reason]++
		}
		var parts []string
		for _, r := range policy.Reasons {
			if count[r] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", count[r], r))
			}
		}
		msg += fmt.Sprintf("; %s waiting (%s)", plural.Count(len(held)-1, "more node"), strings.Join(parts, ", "))
	}
	return msg
}

// publishPolicies writes each policy's status when it changed: Accepted,
// the nodes it covers, its next window. It returns when a window opens or
// closes next, so the status (and the rollout) follow it.
func (t *term) publishPolicies(ctx context.Context, w world) (time.Duration, error) {
	if t.policyStore == nil || t.c.cfg.Policies == nil {
		return 0, nil
	}
	ps := t.policies()
	cov := policy.Cover(ps, w.nodes)
	var next time.Time
	var errs []error
	for _, p := range ps {
		st := p.Object.Status.DeepCopy()
		st.ObservedGeneration = p.Object.Generation
		meta.SetStatusCondition(&st.Conditions, policy.Accepted(p, cov))
		for i := range st.Conditions {
			if st.Conditions[i].LastTransitionTime.IsZero() {
				st.Conditions[i].LastTransitionTime = metav1.NewTime(w.now)
			}
		}
		st.Nodes = int32(cov.Nodes[p.Name])
		st.NextWindowStart = nil
		if len(p.Problems) == 0 {
			ws := policy.At(p.Windows, w.now)
			if !ws.Open && !ws.Next.IsZero() {
				st.NextWindowStart = &metav1.Time{Time: ws.Next}
			}
			next = earliest(next, ws.Next, ws.Closes)
		}
		if equality.Semantic.DeepEqual(*st, p.Object.Status) {
			continue
		}
		obj := p.Object.DeepCopy()
		obj.Status = *st
		if _, err := t.c.cfg.Policies.TokenrollV1alpha1().RolloutPolicies().UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			errs = append(errs, fmt.Errorf("writing RolloutPolicy %s's status: %w", p.Name, err))
			continue
		}
		c := meta.FindStatusCondition(st.Conditions, policy.ConditionAccepted)
		t.c.cfg.Log.Info("RolloutPolicy status", zap.String("policy", p.Name), zap.String("accepted", string(c.Status)),
			zap.String("reason", c.Reason), zap.String("message", c.Message), zap.Int32("nodes", st.Nodes))
	}
	if next.IsZero() || !next.After(w.now) {
		return 0, errors.Join(errs...)
	}
	return next.Sub(w.now), errors.Join(errs...)
}

// notify tells the webhooks of the policies concerned: those covering
// node (when set) or any node of the rollout. Secrets that cannot be read
// are logged and skipped: a notification never holds a rollout.
func (t *term) notify(ctx context.Context, typ v1alpha1.NotificationEvent, r *Rollout, node, msg string) {
	n := t.c.notifier
	if n == nil || t.policyStore == nil {
		return
	}
	ps := t.policies()
	cov := policy.Cover(ps, t.listNodes())
	concerned := map[string]*policy.Policy{}
	if node != "" {
		if p := cov.Of[node]; p != nil {
			concerned[p.Name] = p
		}
	} else {
		for _, pn := range r.Nodes {
			if p := cov.Of[pn.Name]; p != nil {
				concerned[p.Name] = p
			}
		}
	}
	names := make([]string, 0, len(concerned))
	for name := range concerned {
		names = append(names, name)
	}
	slices.Sort(names)
	now := t.c.cfg.Clock.Now().UTC()
	if r.DryRun {
		msg = "dry run: " + msg
	}
	for _, name := range names {
		p := concerned[name]
		var targets []policy.Target
		for _, nt := range p.Object.Spec.Notifications {
			tg := policy.Target{Policy: p.Name, Name: nt.Name, Format: nt.Format, Events: nt.Events}
			if !tg.Wants(typ) {
				continue
			}
			u, err := t.secretKey(ctx, nt.URLSecretRef)
			if err != nil {
				t.c.cfg.Log.Warn("notification not sent: its webhook's URL cannot be read", zap.String("policy", p.Name), zap.String("webhook", nt.Name), zap.Error(err))
				continue
			}
			tg.URL = strings.TrimSpace(string(u))
			targets = append(targets, tg)
		}
		n.Notify(targets, policy.Event{Type: typ, Rollout: r.ID, Policy: p.Name, Node: node, Message: msg, Time: now})
	}
}

// earliest is the earliest of the times that are not zero (zero: none).
func earliest(ts ...time.Time) time.Time {
	var e time.Time
	for _, t := range ts {
		if !t.IsZero() && (e.IsZero() || t.Before(e)) {
			e = t
		}
	}
	return e
}
