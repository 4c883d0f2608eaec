package sandbox

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/internal/openshift"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// printer writes progress lines, each stamped with the time since the
// sandbox started.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// raw writes text as it is.
func (p *printer) raw(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, text)
}

// gateView is the revision gate as the sandbox judges it from
// KubeAPIServer/cluster: open when every control-plane node runs the latest
// revision and none is being installed.
type gateView struct {
	Known  bool
	Open   bool
	Latest int32
	// Condition is NodeInstallerProgressing as "status reason: message";
	// Progressing is its status, and Since its lastTransitionTime, written
	// by the operator (to the second) with the revisions it describes.
	Condition   string
	Progressing bool
	Since       time.Time
	// Trusted are the issuers besides the signing one, with the end of
	// their trust (zero: no end known).
	Trusted map[string]time.Time
}

func judgeGate(obj *unstructured.Unstructured) gateView {
	st, err := openshift.ParseKubeAPIServerStatus(obj)
	if err != nil {
		return gateView{}
	}
	g := gateView{Known: true, Latest: st.LatestAvailableRevision, Open: st.AtLatestRevision(), Trusted: map[string]time.Time{}}
	if c, ok := st.Condition(openshift.ConditionNodeInstallerProgressing); ok {
		g.Condition = strings.TrimSpace(fmt.Sprintf("%s=%s %s", c.Type, c.Status, c.Reason)) + ": " + c.Message
		g.Progressing, g.Since = c.Status == "True", c.LastTransitionTime.Time
	}
	for _, it := range st.ServiceAccountIssuers {
		if it.ExpirationTime != nil {
			g.Trusted[it.Name] = it.ExpirationTime.Time
		}
	}
	return g
}

// view is the cluster as the sandbox sees it through the API server.
type view struct {
	Gate   gateView
	State  coordinator.State
	Nodes  map[string]*corev1.Node
	Leader string
}

// shownStep is the node's step to print: its step in rollout id, or a
// step in progress in a rollout the view does not have yet (the Node's
// watch event came before the TokenRollout's: the coordinator cordons as
// soon as it has planned).
func shownStep(n *corev1.Node, id string) (protocol.NodeState, bool) {
	if s, ok := nodeStep(n, id); ok {
		return s, true
	}
	s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	return s, err == nil && s.Rollout != "" && s.Rollout != id && s.Step.InProgress()
}

// nodeStep is the node's step in rollout id ("" when it has none).
func nodeStep(n *corev1.Node, id string) (protocol.NodeState, bool) {
	s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	if err != nil || id == "" || s.Rollout != id {
		return protocol.NodeState{}, false
	}
	return s, true
}

// tokenReport is the agent's report on n, if it wrote one.
func tokenReport(n *corev1.Node) (protocol.TokenReport, bool) {
	raw, ok := n.Annotations[protocol.AnnotationTokens]
	if !ok {
		return protocol.TokenReport{}, false
	}
	r, err := protocol.ParseTokenReport(raw)
	return r, err == nil
}

// agentsReport reports whether every node's agent has reported, judging
// by iss when it is not empty.
func (v view) agentsReport(iss string) bool {
	if len(v.Nodes) == 0 {
		return false
	}
	for _, n := range v.Nodes {
		r, ok := tokenReport(n)
		if !ok || iss != "" && r.Issuer != iss {
			return false
		}
	}
	return true
}

// tokensReported reports whether every running app's pod is in its node's
// tokens report with the tokens its volumes hold.
func (v view) tokensReported(apps []AppReport) bool {
	for _, a := range apps {
		if !a.Running {
			continue
		}
		n := v.Nodes[a.Node]
		if n == nil {
			return false
		}
		if r, ok := tokenReport(n); !ok || len(r.TokenIDs[string(a.UID)]) == 0 {
			return false
		}
	}
	return true
}

// agentsClean reports whether every agent reports no stale token.
func (v view) agentsClean() bool {
	for _, n := range v.Nodes {
		if r, ok := tokenReport(n); !ok || r.StaleTotal() > 0 {
			return false
		}
	}
	return true
}

// disrupted counts nodes cordoned or not Ready.
func (v view) disrupted() int {
	d := 0
	for _, n := range v.Nodes {
		if n.Spec.Unschedulable || !nodeutil.Ready(n) {
			d++
		}
	}
	return d
}

// watcher follows the cluster through the API server, prints one line per
// change a person cares about (the gate, the rollout, each node's step, the
// stale tokens the agents report, the leader), and lets the scenario wait
// for conditions on what it saw.
type watcher struct {
	p     *printer
	gates *gateLog
	nodes cache.Store
	// cms holds the TokenRollouts.
	cms     cache.Store
	kas     cache.Store
	leases  cache.Store
	changed chan struct{}

	mu      sync.Mutex
	cur     view
	updated chan struct{}
	// requests holds the request IDs seen on each node, by rollout.
	requests map[string]map[string]map[string]bool
	// rollouts are the rollouts seen, in order.
	rollouts []string
	// printed state, to print changes only.
	last printedState
}

type printedState struct {
	gate    string
	leader  string
	rollout string
	steps   map[string]string
	ready   map[string]bool
	stale   string
}

// watch starts the informers and the printing loop; it returns once the
// caches are synced.
func watch(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, p *printer) (*watcher, error) {
	w := &watcher{p: p, gates: &gateLog{}, changed: make(chan struct{}, 1), updated: make(chan struct{}),
		requests: map[string]map[string]map[string]bool{},
		last:     printedState{steps: map[string]string{}, ready: map[string]bool{}}}
	poke := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.poke() },
		UpdateFunc: func(any, any) { w.poke() },
		DeleteFunc: func(any) { w.poke() },
	}
	nf := informers.NewSharedInformerFactory(client, 0)
	nodes := nf.Core().V1().Nodes().Informer()
	nsf := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(Namespace))
	rf := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	cms := rf.ForResource(v1alpha1.SchemeGroupVersion.WithResource("tokenrollouts")).Informer()
	leases := nsf.Coordination().V1().Leases().Informer()
	df := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + openshift.ClusterName
	})
	kas := df.ForResource(openshift.KubeAPIServerResource).Informer()
	for _, inf := range []cache.SharedIndexInformer{nodes, cms, leases, kas} {
		if _, err := inf.AddEventHandler(poke); err != nil {
			return nil, err
		}
	}
	w.nodes, w.cms, w.leases, w.kas = nodes.GetStore(), cms.GetStore(), leases.GetStore(), kas.GetStore()
	nf.Start(ctx.Done())
	nsf.Start(ctx.Done())
	rf.Start(ctx.Done())
	df.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.HasSynced, cms.HasSynced, leases.HasSynced, kas.HasSynced) {
		return nil, fmt.Errorf("watching the cluster: caches did not sync: %w", context.Cause(ctx))
	}
	w.refresh()
	go w.loop(ctx)
	return w, nil
}

func (w *watcher) poke() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *watcher) loop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.changed:
		case <-tick.C:
		}
		w.refresh()
	}
}

// refresh rebuilds the view, prints what changed and wakes the waiters.
func (w *watcher) refresh() {
	v := view{Nodes: map[string]*corev1.Node{}}
	for _, o := range w.nodes.List() {
		if n, ok := o.(*corev1.Node); ok {
			v.Nodes[n.Name] = n
		}
	}
	var records []*v1alpha1.TokenRollout
	for _, o := range w.cms.List() {
		var r v1alpha1.TokenRollout
		if u, ok := o.(*unstructured.Unstructured); ok && runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r) == nil {
			records = append(records, &r)
		}
	}
	v.State = coordinator.StateOf(records)
	for _, o := range w.leases.List() {
		if l, ok := o.(*coordinationv1.Lease); ok && l.Name == LeaseName && l.Spec.HolderIdentity != nil {
			v.Leader = *l.Spec.HolderIdentity
		}
	}
	for _, o := range w.kas.List() {
		if u, ok := o.(*unstructured.Unstructured); ok {
			v.Gate = judgeGate(u)
		}
	}
	w.gates.observe(v.Gate, time.Now())
	w.mu.Lock()
	w.cur = v
	w.noteRequests(v)
	w.printChanges(v)
	close(w.updated)
	w.updated = make(chan struct{})
	w.mu.Unlock()
}

// noteRequests records the requests on the Nodes and the rollouts. w.mu held.
func (w *watcher) noteRequests(v view) {
	if r := v.State.Rollout; r != nil && !slices.Contains(w.rollouts, r.ID) {
		w.rollouts = append(w.rollouts, r.ID)
	}
	for name, n := range v.Nodes {
		req, err := protocol.ParseRequest(n.Annotations[protocol.AnnotationRequest])
		if err != nil {
			continue
		}
		byNode := w.requests[req.Rollout]
		if byNode == nil {
			byNode = map[string]map[string]bool{}
			w.requests[req.Rollout] = byNode
		}
		if byNode[name] == nil {
			byNode[name] = map[string]bool{}
		}
		byNode[name][req.ID] = true
	}
}

// actions returns, for each rollout seen, how many requests each node got,
// and the rollouts in the order they started.
func (w *watcher) actions() (map[string]map[string]int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]map[string]int{}
	for ro, byNode := range w.requests {
		out[ro] = map[string]int{}
		for n, ids := range byNode {
			out[ro][n] = len(ids)
		}
	}
	return out, slices.Clone(w.rollouts)
}

// view is the latest view.
func (w *watcher) view() view {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

// waitFor blocks until cond holds on the view, or ctx ends.
func (w *watcher) waitFor(ctx context.Context, cond func(view) bool) error {
	for {
		w.mu.Lock()
		v, updated := w.cur, w.updated
		w.mu.Unlock()
		if cond(v) {
			return nil
		}
		select {
		case <-updated:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// printChanges prints one line per change since the last view. w.mu held.
func (w *watcher) printChanges(v view) {
	last := &w.last
	if v.Gate.Known {
		word := "CLOSED"
		if v.Gate.Open {
			word = "open"
		}
		line := fmt.Sprintf("gate %s (latest revision %d): %s", word, v.Gate.Latest, v.Gate.Condition)
		if line != last.gate {
			w.p.printf("%s", line)
			last.gate = line
		}
	}
	if v.Leader != last.leader {
		if v.Leader != "" {
			w.p.printf("coordinator leader: %s", v.Leader)
		}
		last.leader = v.Leader
	}
	r := v.State.Rollout
	id := ""
	if r != nil {
		id = r.ID
		key := r.ID + " " + string(r.Phase)
		if key != last.rollout {
			switch {
			case !strings.HasPrefix(last.rollout, r.ID+" "):
				names := make([]string, len(r.Nodes))
				for i, pn := range r.Nodes {
					names[i] = pn.Name
				}
				w.p.printf("rollout %s %s: strategy=%s trigger=%s, %d node(s): %s", r.ID, r.Phase, r.Strategy, r.Trigger, len(r.Nodes), strings.Join(names, ", "))
			case r.Phase == coordinator.RolloutHalted:
				w.p.printf("rollout %s HALTED: %s on %s: %s", r.ID, r.HaltReason, r.HaltNode, r.Message)
			default:
				w.p.printf("rollout %s %s", r.ID, r.Phase)
			}
			last.rollout = key
		}
	}
	names := make([]string, 0, len(v.Nodes))
	for name := range v.Nodes {
		names = append(names, name)
	}
	slices.SortFunc(names, byNodeName)
	stale, tokens, reporting, oldIssuer := 0, 0, 0, 0
	for _, name := range names {
		n := v.Nodes[name]
		if s, ok := shownStep(n, id); ok {
			step := string(s.Step)
			switch s.Step {
			case protocol.StepActing:
				step += " (" + string(s.Strategy)
				if s.Rung != "" {
					step += ": " + string(s.Rung)
				}
				step += ")"
			case protocol.StepApps, protocol.StepDone:
				if s.Message != "" && s.Message != "verified" {
					step += ": " + s.Message
				}
			case protocol.StepHalted:
				step += fmt.Sprintf(" (%s): %s", s.Reason, s.Message)
			}
			if step != last.steps[name] {
				w.p.printf("%s: %s", name, step)
				last.steps[name] = step
			}
		}
		rd := nodeutil.Ready(n)
		if was, seen := last.ready[name]; seen && was != rd {
			if rd {
				w.p.printf("%s: Ready", name)
			} else {
				w.p.printf("%s: NotReady", name)
			}
		}
		last.ready[name] = rd
		if rep, ok := tokenReport(n); ok {
			reporting++
			tokens += rep.Tokens
			stale += rep.StaleTotal()
			oldIssuer += rep.Stale[protocol.StateIssuerMismatch]
		}
	}
	if reporting > 0 {
		line := fmt.Sprintf("agents report %d stale token(s) of %d (%d from an old issuer), %d of %d node(s) reporting", stale, tokens, oldIssuer, reporting, len(names))
		if line != last.stale {
			w.p.printf("%s", line)
			last.stale = line
		}
	}
}

// gateLog records when the gate opened and closed, from the watcher's
// views, to add up how long it was closed, and the operator's own record of
// when the revision rollout began and ended (NodeInstallerProgressing's
// lastTransitionTime), which no watch delay shifts.
type gateLog struct {
	mu     sync.Mutex
	open   bool
	known  bool
	since  time.Time
	closed time.Duration
	// progressing are NodeInstallerProgressing's transitions, in order.
	progressing []transition
}

type transition struct {
	Since       time.Time
	Progressing bool
}

func (g *gateLog) observe(v gateView, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if v.Known && !v.Since.IsZero() {
		t := transition{Since: v.Since, Progressing: v.Progressing}
		if n := len(g.progressing); n == 0 || g.progressing[n-1] != t {
			g.progressing = append(g.progressing, t)
		}
	}
	if !v.Known || g.known && v.Open == g.open {
		return
	}
	if g.known && !g.open {
		g.closed += now.Sub(g.since)
	}
	g.known, g.open, g.since = true, v.Open, now
}

// closedFor is how long the gate was closed up to now.
func (g *gateLog) closedFor(now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.closed
	if g.known && !g.open {
		d += now.Sub(g.since)
	}
	return d
}

// rollingAt reports whether the operator was rolling a revision out at t
// and had been for longer than grace, by its own timestamps. They are
// truncated to the second: a rollout that ended in the second of t does not
// count, and one that began counts from a second later.
func (g *gateLog) rollingAt(t time.Time, grace time.Duration) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	var last *transition
	for i := range g.progressing {
		if g.progressing[i].Since.After(t) {
			break
		}
		last = &g.progressing[i]
	}
	return last != nil && last.Progressing && t.Sub(last.Since) >= grace+time.Second
}
