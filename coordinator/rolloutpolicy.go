package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/pkg/generated/informers/externalversions"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file applies the RolloutPolicies (Config.Policies) to the rollout:
// which nodes may start now, the policies' status, and their webhooks.
// The rules are in coordinator/policy; this reads what they need and
// writes what they decide.

// healthPoll is how often a health gate reads the evicted pods'
// controllers again while it holds a pool: they are not watched.
const healthPoll = 2 * time.Second

// policyAPIRecheck is how often a coordinator whose API server does not
// serve RolloutPolicies (their CRD not installed) asks again.
const policyAPIRecheck = time.Minute

// policyTerm is what a term reads and decides of the RolloutPolicies.
type policyTerm struct {
	mu sync.Mutex
	// store caches the RolloutPolicies; nil while they are not read (off,
	// or their CRD not installed: the flags govern every node).
	store cache.Store
	// missing says why they are not read although Config.Policies asks
	// for them (""), and told whether the Event saying so was sent.
	missing string
	told    bool
	// raised is, per pool, the nodes at once a deadline raise allowed in
	// rollout raisedFor (spec.deadlineMaxUnavailable): it holds for the
	// rest of the rollout, as Rollout.Raised does for the flags.
	raised    map[string]int
	raisedFor string
}

// policyStore is the RolloutPolicies' cache (nil: not read).
func (t *term) policyStore() cache.Store {
	t.pol.mu.Lock()
	defer t.pol.mu.Unlock()
	return t.pol.store
}

// startPolicies starts reading the RolloutPolicies. When their CRD is not
// installed, the term follows the flags, says so once (a log line now, an
// Event at the next sync), and asks again every policyAPIRecheck: once it
// is installed, the policies apply from the sync after their cache is
// filled. Any other failure to read them (RBAC, the API server) is not a
// sign that there are none: synced then holds the leader's work until
// they can be read, so that no node starts past a policy it cannot see.
func (t *term) startPolicies(ctx context.Context, enqueue func()) (synced cache.InformerSynced, stop func(), err error) {
	c := t.c
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	factory := externalversions.NewSharedInformerFactory(c.cfg.Policies, 0)
	inf := factory.Tokenroll().V1alpha1().RolloutPolicies().Informer()
	stop = func() { cancel(); wg.Wait(); factory.Shutdown() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { enqueue() }, UpdateFunc: func(any, any) { enqueue() }, DeleteFunc: func(any) { enqueue() },
	}); err != nil {
		stop()
		return nil, nil, err
	}
	served, probeErr := policiesServed(ctx, c.cfg.Policies)
	if served || probeErr != nil {
		if probeErr != nil {
			c.cfg.Log.Error("reading the RolloutPolicies; no node starts until they can be read: grant the coordinator get, list and watch on rolloutpolicies.tokenroll.io (the manifests do), or run it with --rollout-policies=false", zap.Error(probeErr))
		}
		t.pol.store = inf.GetStore()
		factory.Start(ctx.Done())
		return inf.HasSynced, stop, nil
	}
	t.pol.missing = "the API server does not serve rolloutpolicies.tokenroll.io (the CRD is not installed): every node follows the coordinator's flags; install the CRDs (deploy/helm/tokenroll/crds, deploy/kustomize/base/crds) to use RolloutPolicies, or run the coordinator with --rollout-policies=false to silence this"
	c.cfg.Log.Warn(t.pol.missing, zap.Duration("recheckEvery", policyAPIRecheck))
	wg.Go(func() {
		tk := c.cfg.Clock.NewTicker(policyAPIRecheck)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C():
			}
			if ok, _ := policiesServed(ctx, c.cfg.Policies); !ok {
				continue
			}
			factory.Start(ctx.Done())
			if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
				return
			}
			t.pol.mu.Lock()
			t.pol.store, t.pol.missing = inf.GetStore(), ""
			t.pol.mu.Unlock()
			c.cfg.Log.Info("the API server serves RolloutPolicies now: the nodes they select follow them")
			enqueue()
			return
		}
	})
	return nil, stop, nil
}

// policiesServed reports whether the API server serves RolloutPolicies:
// false, without an error, when it answers that it does not know the
// resource (the CRD is not installed).
func policiesServed(ctx context.Context, client versioned.Interface) (bool, error) {
	_, err := client.TokenrollV1alpha1().RolloutPolicies().List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

// tellPoliciesMissing records, once per term, an Event saying that the
// RolloutPolicies are not read and why; it is told only once it was sent.
func (t *term) tellPoliciesMissing() {
	t.pol.mu.Lock()
	why := t.pol.missing
	tell := why != "" && !t.pol.told
	t.pol.mu.Unlock()
	if tell && t.aboutEvent(corev1.EventTypeWarning, ReasonPoliciesNotServed, "ReadPolicies", "%s", why) {
		t.pol.mu.Lock()
		t.pol.told = true
		t.pol.mu.Unlock()
	}
}

// ReasonPoliciesNotServed is the Event, on the current TokenRollout if
// any (else on the coordinator's Pod or Lease), when the coordinator is to
// read RolloutPolicies and their CRD is not installed.
const ReasonPoliciesNotServed = "RolloutPoliciesNotServed"

// policies lists and compiles the cached RolloutPolicies (nil: none read).
func (t *term) policies() []*policy.Policy {
	store := t.policyStore()
	if store == nil {
		return nil
	}
	var out []*policy.Policy
	for _, o := range store.List() {
		if p, ok := o.(*v1alpha1.RolloutPolicy); ok {
			out = append(out, policy.Compile(p))
		}
	}
	return out
}

// coverage is which RolloutPolicy each node follows during rollout r (nil:
// none): the one that selects it (policy.Cover), except that when r names
// a policy (spec.policyName) every node of r follows that one, and, while
// it is missing, none: its nodes are refused, and startNodes says why
// (namedPolicyProblem). What the selectors alone cover, the policies'
// status, is policy.Cover's.
func (t *term) coverage(ps []*policy.Policy, r *Rollout, nodes []*corev1.Node) policy.Coverage {
	cov := policy.Cover(ps, nodes)
	if r == nil || r.Policy == "" {
		return cov
	}
	var named *policy.Policy
	for _, p := range ps {
		if p.Name == r.Policy {
			named = p
		}
	}
	exists := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		exists[n.Name] = true
	}
	var ours []string
	for _, pn := range r.Nodes {
		if exists[pn.Name] {
			ours = append(ours, pn.Name)
		}
	}
	cov.Assign(r.Policy, named, ours)
	return cov
}

// namedPolicyProblem says why rollout id, which names RolloutPolicy name
// (spec.policyName), can start no node ("": it can); todo says what to do
// besides making the policy usable. The nodes wait, and start once it is
// (the informer wakes the leader).
func (t *term) namedPolicyProblem(id, name, todo string) string {
	asked := fmt.Sprintf("TokenRollout %s names RolloutPolicy %s (spec.policyName): no node of it starts", id, name)
	store := t.policyStore()
	if store == nil {
		t.pol.mu.Lock()
		notServed := t.pol.missing != ""
		t.pol.mu.Unlock()
		if notServed {
			return fmt.Sprintf("%s while the API server does not serve RolloutPolicies (their CRD is not installed); install the CRDs (deploy/helm/tokenroll/crds, deploy/kustomize/base/crds), or %s", asked, todo)
		}
		return fmt.Sprintf("%s while the coordinator reads no RolloutPolicies (--rollout-policies=false); run it with --rollout-policies, or %s", asked, todo)
	}
	o, ok, err := store.GetByKey(name)
	rp, isPolicy := o.(*v1alpha1.RolloutPolicy)
	if err != nil || !ok || !isPolicy {
		return fmt.Sprintf("%s until that policy exists; create RolloutPolicy %s, or %s", asked, name, todo)
	}
	if p := policy.Compile(rp); len(p.Problems) > 0 {
		return fmt.Sprintf("%s while that policy cannot be used (%s); fix its spec, or %s", asked, strings.Join(p.Problems, "; "), todo)
	}
	return ""
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
func (t *term) policyGate(ctx context.Context, w world, r *Rollout, views []nodeView, lock kuredLock, defaultLimit int) *policyGate {
	if t.policyStore() == nil {
		return nil
	}
	g := &policyGate{t: t, w: w, r: r, views: views, budget: policy.NewBudget(),
		alerts: map[string]*policy.Block{}, health: map[string]*policy.Block{}}
	ps := t.policies()
	g.cov = t.coverage(ps, r, w.nodes)
	g.budget.SetPool("", defaultLimit, nil)
	planned := map[string]nodeView{}
	poolViews := map[string][]nodeView{}
	for _, v := range views {
		planned[v.plan.Name] = v
		if p := g.cov.Of[v.plan.Name]; p != nil {
			poolViews[p.Name] = append(poolViews[p.Name], v)
		}
	}
	for _, p := range ps {
		g.budget.SetPool(p.Name, g.poolLimit(ctx, p, poolViews[p.Name]), p.Object.Spec.Zones)
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

// poolLimit is how many nodes of p's pool may be out of service at once
// in this sync: its maxUnavailable, raised as far as needed (never above
// its deadlineMaxUnavailable) when at that the pool's nodes are expected
// to be done after the previous issuer's trust ends, as
// --deadline-max-unavailable raises --max-unavailable for the nodes no
// policy covers. A raise holds for the rest of the rollout (within the
// ceiling in force) and this term: a new leader estimates again from the
// nodes' records. It is logged, told in an Event, and to the webhooks
// when even the ceiling misses the deadline.
func (g *policyGate) poolLimit(ctx context.Context, p *policy.Policy, views []nodeView) int {
	t, w, r := g.t, g.w, g.r
	nodes := g.cov.Nodes[p.Name]
	base, ceiling := p.Limit(nodes), p.DeadlineLimit(nodes)
	if ceiling <= base || r == nil || r.DryRun || p.Object.Spec.DryRun || len(p.Problems) > 0 {
		return base
	}
	t.pol.mu.Lock()
	if t.pol.raisedFor != r.ID {
		t.pol.raised, t.pol.raisedFor = map[string]int{}, r.ID
	}
	limit := max(base, min(t.pol.raised[p.Name], ceiling))
	t.pol.mu.Unlock()
	// A pool's nodes start cordoned, within its budget, whatever the trust.
	in := t.estimateInput(w, views, limit, nil)
	need := NeededMaxUnavailable(in, ceiling)
	if need <= limit {
		return limit
	}
	before := EstimateCompletion(in)
	in.MaxUnavailable = need
	after := EstimateCompletion(in)
	msg := fmt.Sprintf("pool %s: at %s at once its nodes would be done at %s, after the previous issuer's trust ends at %s; raised to %s at once (spec.deadlineMaxUnavailable of RolloutPolicy %s allows %d)",
		p.Name, nodeCount(limit), stamp(before.Completion), stamp(in.Deadline), nodeCount(need), p.Name, ceiling)
	typ := corev1.EventTypeNormal
	if after.MissesDeadline() {
		typ = corev1.EventTypeWarning
		msg += fmt.Sprintf(", and even so they are expected to be done at %s, after the deadline: raise its deadlineMaxUnavailable or expect the pods on the nodes left then to fail to authenticate", stamp(after.Completion))
	} else {
		msg += fmt.Sprintf(", and they are now expected to be done at %s", stamp(after.Completion))
	}
	t.pol.mu.Lock()
	t.pol.raised[p.Name] = need
	t.pol.mu.Unlock()
	t.c.cfg.Log.Warn("raising a pool's nodes disrupted at once to meet the previous issuer's trust deadline", zap.String("rollout", r.ID), zap.String("policy", p.Name),
		zap.Int("from", limit), zap.Int("to", need), zap.Int("ceiling", ceiling), zap.Time("deadline", in.Deadline),
		zap.Time("estimatedCompletion", after.Completion), zap.Duration("perNode", after.PerNode))
	t.rolloutEvent(typ, ReasonMaxUnavailableRaised, "Raise", "rollout %s: %s", r.ID, msg)
	if after.MissesDeadline() {
		t.notify(ctx, v1alpha1.NotifyDeadlineAtRisk, r, "", msg)
	}
	return need
}

// flagViews are the views of the nodes of r no RolloutPolicy covers, which
// the flags govern: all of them while the policies are not read.
func (t *term) flagViews(w world, r *Rollout, views []nodeView) []nodeView {
	if t.policyStore() == nil {
		return views
	}
	cov := t.coverage(t.policies(), r, w.nodes)
	var out []nodeView
	for _, v := range views {
		_, covered := cov.Of[v.plan.Name]
		if _, refused := cov.Refused[v.plan.Name]; !covered && !refused {
			out = append(out, v)
		}
	}
	return out
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
// blocking alerts of its policy in r (nil: none, or RolloutPolicies off).
func (t *term) alertsHold(ctx context.Context, w world, r *Rollout, node string) *policy.Block {
	if t.policyStore() == nil {
		return nil
	}
	p := t.coverage(t.policies(), r, w.nodes).Of[node]
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
			ok, why, err := ownersPodsReady(ctx, g.t.c.cfg.Client, last.Owners)
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
	t.tellPoliciesMissing()
	if t.policyStore() == nil || t.c.cfg.Policies == nil {
		return 0, nil
	}
	ps := t.policies()
	// By selector: a policy's status says which nodes it selects, not
	// which a rollout naming it asked to follow it.
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
// node (when set) or any node of the rollout, in the rollout (the policy
// it names, if it names one). Secrets that cannot be read
// are logged and skipped: a notification never holds a rollout.
func (t *term) notify(ctx context.Context, typ v1alpha1.NotificationEvent, r *Rollout, node, msg string) {
	n := t.c.notifier
	if n == nil || t.policyStore() == nil {
		return
	}
	cov := t.coverage(t.policies(), r, t.listNodes())
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
