package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/issuer"
)

// Config is everything the coordinator needs; New checks it.
type Config struct {
	Client kubernetes.Interface
	// Dynamic reads OpenShift resources (openshift gate); may be nil.
	Dynamic   dynamic.Interface
	Namespace string
	Gate      Gate
	// Strategy is the remediation for automatically planned rollouts.
	Strategy Strategy
	// MaxUnavailable bounds the nodes disrupted at once, counting nodes
	// already NotReady or cordoned by someone else: a count or a percentage
	// of all nodes (rounded down, at least 1).
	MaxUnavailable intstr.IntOrString
	// DrainTimeout bounds a drain (or a pod restart's evictions);
	// ActionTimeout the agent's action (a reboot: until the node is back);
	// VerifyTimeout the checks after it.
	DrainTimeout, ActionTimeout, VerifyTimeout time.Duration
	// Settle is a pause after each verified node before the next starts.
	Settle time.Duration
	// TrustMargin: a node is left alone only when its old-issuer tokens
	// refresh this long before the old issuer's trust ends.
	TrustMargin time.Duration
	// AgentWait is how long after an issuer change the planner waits for
	// the agents to report under the new issuer.
	AgentWait time.Duration
	// IssuerRefresh is how often OIDC discovery is read while the gate is
	// open (it is also read each time the gate opens).
	IssuerRefresh time.Duration
	// Auto plans rollouts from what the agents report; false leaves
	// starting rollouts to administrators.
	Auto     bool
	Drainer  Drainer
	Registry prometheus.Registerer
	Log      *zap.Logger
	Clock    clock.WithTicker
}

// Coordinator runs rollouts while it leads.
type Coordinator struct {
	cfg   Config
	m     *coordinatorMetrics
	store Store

	// Per leadership term.
	queue    workqueue.TypedRateLimitingInterface[string]
	nodes    corelisters.NodeLister
	cms      cache.Store
	recorder events.EventRecorder

	mu sync.Mutex
	// fresh holds objects this leader wrote, until the informers catch up,
	// so no decision is taken on a cache older than our own write.
	freshNodes map[string]*corev1.Node
	freshCM    *corev1.ConfigMap
	drains     map[string]*drainJob
	evictions  map[string]evicted
	issuer     string
	issuerRead time.Time
	gateOpen   *bool
	// lastVerified is when the last node was verified (overhead metric).
	lastVerified time.Time
	lastNote     string
}

type drainJob struct {
	cancel context.CancelFunc
	done   bool
	err    error
}

const syncKey = "rollout"

// New checks cfg and builds a coordinator.
func New(cfg Config) (*Coordinator, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("coordinator: no API client"))
	}
	if cfg.Namespace == "" {
		errs = append(errs, errors.New("coordinator: namespace is empty"))
	}
	if cfg.Gate == nil {
		errs = append(errs, errors.New("coordinator: no revision gate"))
	}
	if _, err := ParseStrategy(string(cfg.Strategy)); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: %w", err))
	}
	if _, err := resolveMaxUnavailable(cfg.MaxUnavailable, 1); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: %w", err))
	}
	for name, d := range map[string]time.Duration{"drain timeout": cfg.DrainTimeout, "action timeout": cfg.ActionTimeout,
		"verify timeout": cfg.VerifyTimeout, "issuer refresh": cfg.IssuerRefresh} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("coordinator: %s %s must be positive", name, d))
		}
	}
	if cfg.Settle < 0 || cfg.TrustMargin < 0 || cfg.AgentWait < 0 {
		errs = append(errs, errors.New("coordinator: settle, trust margin and agent wait must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Drainer == nil {
		cfg.Drainer = KubectlDrainer{Client: cfg.Client, Log: cfg.Log}
	}
	c := &Coordinator{cfg: cfg, m: newCoordinatorMetrics(cfg.Registry),
		store: Store{Client: cfg.Client, Namespace: cfg.Namespace, FieldManager: "tokenroll-coordinator"}}
	c.m.setPhase("none")
	return c, nil
}

// resolveMaxUnavailable turns a count or percentage into a node count.
func resolveMaxUnavailable(v intstr.IntOrString, nodes int) (int, error) {
	n, err := intstr.GetScaledValueFromIntOrPercent(&v, nodes, false)
	if err != nil {
		return 0, fmt.Errorf("max unavailable %q: %w", v.String(), err)
	}
	if v.Type == intstr.Int && n < 1 {
		return 0, fmt.Errorf("max unavailable %q must be at least 1", v.String())
	}
	return max(n, 1), nil
}

// Lead runs the coordinator's work until ctx ends: call it with the context
// leader election gives, so the work stops the instant leadership is lost.
func (c *Coordinator) Lead(ctx context.Context) error {
	c.m.leader.Set(1)
	defer c.m.leader.Set(0)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := c.cfg.Log
	c.mu.Lock()
	c.freshNodes, c.freshCM, c.gateOpen, c.lastVerified = map[string]*corev1.Node{}, nil, nil, time.Time{}
	c.drains, c.evictions = map[string]*drainJob{}, map[string]evicted{}
	c.mu.Unlock()

	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "tokenroll-coordinator", Clock: c.cfg.Clock})
	defer c.queue.ShutDown()
	enqueue := func() { c.queue.Add(syncKey) }

	nodeFactory := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, 0, informers.WithTransform(trimNode))
	nodeInf := nodeFactory.Core().V1().Nodes()
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, 0, informers.WithNamespace(c.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMapName }))
	cmInf := cmFactory.Core().V1().ConfigMaps().Informer()
	for _, inf := range []cache.SharedIndexInformer{nodeInf.Informer(), cmInf} {
		if _, err := inf.AddEventHandler(onAnyChange(enqueue)); err != nil {
			return err
		}
	}
	c.nodes, c.cms = nodeInf.Lister(), cmInf.GetStore()

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: c.cfg.Client.EventsV1()})
	// Events already recorded are still sent after leadership ends.
	stopEvents := make(chan struct{})
	broadcaster.StartRecordingToSink(stopEvents)
	defer func() { broadcaster.Shutdown(); close(stopEvents) }()
	c.recorder = broadcaster.NewRecorder(scheme.Scheme, "tokenroll-coordinator")

	nodeFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	if err := c.cfg.Gate.Start(ctx, enqueue); err != nil {
		return fmt.Errorf("starting the revision gate: %w", err)
	}
	if !cache.WaitForCacheSync(ctx.Done(), nodeInf.Informer().HasSynced, cmInf.HasSynced) {
		return ctx.Err()
	}
	log.Info("leading: caches synced", zap.Int("nodes", len(mustList(c.nodes))))

	go func() {
		t := c.cfg.Clock.NewTicker(c.cfg.IssuerRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				c.mu.Lock()
				c.issuerRead = time.Time{}
				c.mu.Unlock()
				enqueue()
			}
		}
	}()
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	enqueue()
	for c.processNext(ctx) {
	}
	c.mu.Lock()
	for _, j := range c.drains {
		j.cancel()
	}
	c.mu.Unlock()
	return nil
}

func mustList(l corelisters.NodeLister) []*corev1.Node {
	ns, _ := l.List(labels.Everything())
	return ns
}

// trimNode drops what the coordinator never reads from cached Nodes.
func trimNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
		n.Status.VolumesAttached = nil
		n.Status.VolumesInUse = nil
	}
	return obj, nil
}

func (c *Coordinator) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.sync(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		c.cfg.Log.Warn("sync failed; retrying", zap.Error(err))
		c.queue.AddRateLimited(key)
	default:
		c.queue.Forget(key)
		if after > 0 {
			c.queue.AddAfter(key, after)
		}
	}
	return true
}

// snapshot is the world as one sync sees it.
type snapshot struct {
	now    time.Time
	gate   GateState
	issuer string
	state  State
	nodes  []*corev1.Node
	byName map[string]*corev1.Node
}

// sync is the whole reconciliation: it returns when it wants to run again
// (0: on the next change only).
func (c *Coordinator) sync(ctx context.Context) (time.Duration, error) {
	s, err := c.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	if s.gate.Open && s.issuer != "" && s.state.ObservedIssuer != s.issuer {
		prev := s.state.ObservedIssuer
		if _, err := c.updateState(ctx, func(st *State) error {
			st.ObservedIssuer, st.ObservedIssuerAt = s.issuer, s.now
			return nil
		}); err != nil {
			return 0, err
		}
		c.cfg.Log.Info("API servers sign with a new issuer", zap.String("issuer", s.issuer), zap.String("previous", prev))
		return 0, nil
	}
	r := s.state.Active()
	if r == nil {
		c.observeRollout(s, s.state.Rollout) // the last one, finished, or none
		return c.maybeStart(ctx, s)
	}
	return c.advance(ctx, s, r)
}

func (c *Coordinator) snapshot(ctx context.Context) (snapshot, error) {
	s := snapshot{now: c.cfg.Clock.Now().UTC(), gate: c.cfg.Gate.State()}
	c.observeGate(s.gate, s.now)
	s.issuer = c.currentIssuer(ctx, s.gate, s.now)
	var err error
	if s.state, err = DecodeState(c.configMap()); err != nil {
		return s, err
	}
	s.nodes = c.listNodes()
	s.byName = make(map[string]*corev1.Node, len(s.nodes))
	for _, n := range s.nodes {
		s.byName[n.Name] = n
	}
	return s, nil
}

// currentIssuer reads OIDC discovery when the gate is open and the last
// read is stale or the gate just opened; while the gate is closed the API
// servers disagree, and the last value read with it open stands.
func (c *Coordinator) currentIssuer(ctx context.Context, g GateState, now time.Time) string {
	c.mu.Lock()
	iss, read := c.issuer, c.issuerRead
	c.mu.Unlock()
	if !g.Open || (!read.IsZero() && iss != "") {
		return iss
	}
	got, err := issuer.Discover(ctx, c.cfg.Client.Discovery().RESTClient())
	if err != nil {
		c.cfg.Log.Warn("reading the API server's issuer (OIDC discovery); keeping the last known one", zap.String("lastKnown", iss), zap.Error(err))
		return iss
	}
	if g.SigningIssuer != "" && got != g.SigningIssuer {
		c.cfg.Log.Warn("OIDC discovery and the gate disagree on the signing issuer; using discovery",
			zap.String("discovery", got), zap.String("gate", g.SigningIssuer))
	}
	c.mu.Lock()
	c.issuer, c.issuerRead = got, now
	c.mu.Unlock()
	return got
}

func (c *Coordinator) observeGate(g GateState, now time.Time) {
	c.mu.Lock()
	changed := c.gateOpen == nil || *c.gateOpen != g.Open
	open := g.Open
	c.gateOpen = &open
	if changed && open {
		c.issuerRead = time.Time{} // the API servers agree again: read the issuer anew
	}
	c.mu.Unlock()
	for _, p := range []string{GateOpenShift, GateStaticPods, GateNone} {
		if p != g.Provider {
			c.m.gateOpen.DeleteLabelValues(p)
		}
	}
	c.m.gateOpen.WithLabelValues(g.Provider).Set(b2f(g.Open))
	if changed {
		c.m.gateTransition.Set(float64(now.Unix()))
		c.cfg.Log.Info("revision gate", zap.Bool("open", g.Open), zap.String("provider", g.Provider), zap.String("message", g.Message))
	}
	if g.LatestRevision > 0 {
		c.m.gateRevision.WithLabelValues("latest").Set(float64(g.LatestRevision))
		c.m.gateRevision.WithLabelValues("current_min").Set(float64(g.CurrentMinRevision))
		c.m.gateRevision.WithLabelValues("current_max").Set(float64(g.CurrentMaxRevision))
	}
	var earliest time.Time
	for _, t := range g.Trusted {
		if !t.Expires.IsZero() {
			earliest = minTime(earliest, t.Expires)
		}
	}
	c.m.trustExpiry.Set(float64(unixOrZero(earliest)))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// maybeStart turns an administrator's request, or (with Auto) the agents'
// reports, into a new rollout.
func (c *Coordinator) maybeStart(ctx context.Context, s snapshot) (time.Duration, error) {
	if req := s.state.Start; req != nil {
		sel, err := labels.Parse(req.Selector)
		var nodes []PlannedNode
		if err == nil {
			for _, n := range s.nodes {
				if sel.Matches(labels.Set(n.Labels)) {
					nodes = append(nodes, PlannedNode{Name: n.Name, Action: req.Strategy, Reason: "requested by " + orUnknown(req.RequestedBy)})
				}
			}
			sortPlan(nodes)
		}
		trigger := TriggerManual
		if req.RequestedBy != "" {
			trigger += " (" + req.RequestedBy + ")"
		}
		return 0, c.startRollout(ctx, s, trigger, req.Strategy, nodes, err)
	}
	if !c.cfg.Auto || !s.gate.Open || s.issuer == "" {
		return 0, nil
	}
	waitUntil := s.state.ObservedIssuerAt.Add(c.cfg.AgentWait)
	p := MakePlan(PlanInput{Now: s.now, Issuer: s.issuer, Gate: s.gate, Strategy: c.cfg.Strategy, Margin: c.cfg.TrustMargin,
		WaitForReports: s.now.Before(waitUntil), Nodes: s.nodes})
	c.m.staleNodes.Set(float64(len(p.Nodes)))
	if len(p.Waiting) > 0 {
		c.cfg.Log.Info("waiting for agents to report under the new issuer before planning", zap.Strings("nodes", p.Waiting), zap.Time("until", waitUntil))
		return waitUntil.Sub(s.now), nil
	}
	if len(p.Nodes) == 0 {
		return 0, nil
	}
	trigger := ""
	for _, t := range []string{TriggerIssuer, TriggerStaleTokens, TriggerRebootRequired} {
		if p.Triggers[t] > 0 {
			if trigger != "" {
				trigger += ","
			}
			trigger += t
		}
	}
	return 0, c.startRollout(ctx, s, trigger, c.cfg.Strategy, p.Nodes, nil)
}

func orUnknown(s string) string {
	if s == "" {
		return "an administrator"
	}
	return s
}

func (c *Coordinator) startRollout(ctx context.Context, s snapshot, trigger string, strategy Strategy, nodes []PlannedNode, selErr error) error {
	r := &Rollout{ID: "r-" + s.now.Format("20060102-150405") + "-" + randHex(2), Trigger: trigger, Strategy: strategy,
		Phase: PhaseRunning, Issuer: s.issuer, Nodes: nodes, CreatedAt: s.now, UpdatedAt: s.now}
	switch {
	case selErr != nil:
		r.Phase, r.FinishedAt, r.Message = PhaseCancelled, s.now, fmt.Sprintf("the node selector is not valid: %v", selErr)
	case len(nodes) == 0:
		r.Phase, r.FinishedAt, r.Message = PhaseDone, s.now, "no node matched; nothing to do"
	}
	if _, err := c.updateState(ctx, func(st *State) error {
		if st.Active() != nil {
			return errors.New("a rollout is already active")
		}
		if st.Rollout != nil {
			st.Last = st.Rollout
		}
		st.Rollout, st.Start = r, nil
		return nil
	}); err != nil {
		return err
	}
	c.cfg.Log.Info("rollout planned", zap.String("rollout", r.ID), zap.String("trigger", trigger), zap.String("strategy", string(strategy)),
		zap.Int("nodes", len(nodes)), zap.String("phase", string(r.Phase)), zap.String("message", r.Message))
	for _, pn := range nodes {
		if n := s.byName[pn.Name]; n != nil {
			c.event(n, corev1.EventTypeNormal, "RolloutPlanned", "Plan", "rollout %s (%s) will %s this node: %s", r.ID, trigger, pn.Action, pn.Reason)
		}
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// updateState writes the rollout state and remembers the result, so the
// next sync does not act on a cache older than the write.
func (c *Coordinator) updateState(ctx context.Context, change func(*State) error) (State, error) {
	st, cm, err := c.store.update(ctx, change)
	if err == nil {
		c.mu.Lock()
		c.freshCM = cm
		c.mu.Unlock()
	}
	return st, err
}

func (c *Coordinator) configMap() *corev1.ConfigMap {
	var cached *corev1.ConfigMap
	if o, ok, _ := c.cms.GetByKey(c.cfg.Namespace + "/" + ConfigMapName); ok {
		cached, _ = o.(*corev1.ConfigMap)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.freshCM != nil {
		if cached == nil || newerRV(c.freshCM.ResourceVersion, cached.ResourceVersion) {
			return c.freshCM
		}
		c.freshCM = nil
	}
	return cached
}

func (c *Coordinator) listNodes() []*corev1.Node {
	cached := mustList(c.nodes)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range cached {
		if f, ok := c.freshNodes[n.Name]; ok {
			if newerRV(f.ResourceVersion, n.ResourceVersion) {
				cached[i] = f
			} else {
				delete(c.freshNodes, n.Name)
			}
		}
	}
	return cached
}

// newerRV compares resource versions as the numbers etcd makes them; an
// unparsable one is never newer.
func newerRV(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x > y
}

func (c *Coordinator) event(n *corev1.Node, typ, reason, action, note string, args ...any) {
	if c.recorder == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Node", Name: n.Name, UID: n.UID, APIVersion: "v1"}
	c.recorder.Eventf(ref, nil, typ, reason, action, note, args...)
}
