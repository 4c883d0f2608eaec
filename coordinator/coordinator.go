package coordinator

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/issuer"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/pkg/generated/informers/externalversions"
	"github.com/tokenroll/tokenroll/protocol"
)

// DefaultMaxKubeletRestarts is --max-kubelet-restarts' default: how many
// kubelets auto restarts at once without a cordon, once no previous issuer
// is trusted. A kubelet that starts lists its pods and its Node again and
// asks a new token for every projected token volume of its pods, each a
// signature by an API server: a wave of kubelet restarts is that burst
// times the wave. Bounded, the API servers' priority level for nodes
// serves it; unbounded on a large fleet, it would queue and refuse (429)
// the requests of the kubelets, whose retries would stretch every node's
// outage instead of shortening it.
var DefaultMaxKubeletRestarts = intstr.FromInt32(100)

// Config is everything the coordinator needs; New checks it.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	Gate      Gate
	// Strategy is the remediation for automatically planned rollouts.
	Strategy protocol.Strategy
	// MaxUnavailable bounds the nodes disrupted at once, counting nodes
	// already NotReady or cordoned by someone else: a count or a percentage
	// of all nodes (rounded down, at least 1).
	MaxUnavailable intstr.IntOrString
	// DeadlineMaxUnavailable is the ceiling up to which the coordinator
	// raises the nodes disrupted at once when, at MaxUnavailable, a rollout
	// is expected to end after the previous issuer's trust does; zero (or
	// anything below MaxUnavailable) never raises it.
	DeadlineMaxUnavailable intstr.IntOrString
	// MaxKubeletRestarts bounds the kubelets auto restarts at once without
	// a cordon, once no previous issuer is trusted and a first restart
	// (the canary) has worked: a count or a percentage of all nodes
	// (rounded down, at least 1); zero: DefaultMaxKubeletRestarts.
	MaxKubeletRestarts intstr.IntOrString
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
	// PublishIssuer makes the leader publish the issuer it observed in
	// ConfigMap protocol.IssuerConfigMapName of Namespace, which the agents
	// watch (issuerpublish.go); false leaves them reading OIDC discovery.
	PublishIssuer bool
	// GateSettle is how long the revision gate must have stayed open
	// before new nodes start (0: at once), so that a flapping gate does not
	// cordon and release the same nodes again and again. It is not waited
	// for once no previous issuer is trusted: its tokens fail already.
	GateSettle time.Duration
	// WriteRetry carries each single write (a Node, the rollout state)
	// through the API server's transient faults before anything halts on
	// it; zero is apiretry.Default on Clock.
	WriteRetry apiretry.Policy
	// Auto plans rollouts from what the agents report; false leaves
	// starting rollouts to administrators.
	Auto bool
	// DryRun makes every rollout a dry run: planned, with what would be
	// done to each node recorded, and nothing done.
	DryRun bool
	// KuredLock is kured's DaemonSet, whose annotation AnnotationKuredLock
	// names the nodes kured is rebooting: no such node is cordoned or acted
	// on, and each counts against MaxUnavailable. Zero: kured is ignored.
	KuredLock types.NamespacedName
	Drainer   Drainer
	Registry  prometheus.Registerer
	Log       *zap.Logger
	Clock     clock.WithTicker

	// Rollouts is the tokenroll.io client through which each rollout is
	// recorded as a TokenRollout.
	Rollouts versioned.Interface
	// History is how many finished TokenRollouts are kept (0:
	// DefaultHistory); the oldest beyond it are deleted.
	History int

	// Policies, when set, reads the RolloutPolicies: each pool's limits,
	// windows, blockers and webhooks apply to its nodes, and the policies'
	// status is written; nodes no policy covers follow the fields above.
	// Nil: the fields above govern every node.
	Policies versioned.Interface
	// PolicyRecheck is how often a pool held by its blocking alerts (or by
	// what cannot be read) is looked at again (0: 15 s).
	PolicyRecheck time.Duration

	// Apps turns on the detection of pods whose apps present stale tokens
	// or fail to authenticate (nil: off); audit sources feed it through
	// Observe.
	Apps *apps.Options
	// PodName is this replica's Pod in Namespace (empty: outside a
	// cluster). With Apps, the leader labels it LabelAuditReceiver while
	// its detector keeps audit events.
	PodName string
	// LeaseName is the leader-election Lease in Namespace. Events about
	// the coordinator itself (a CRD not installed) go on its Pod, or on
	// this Lease when PodName is empty.
	LeaseName string
}

// Coordinator runs rollouts while it leads. What lives beyond one
// leadership term is here; the rest is in a term.
type Coordinator struct {
	cfg   Config
	m     *coordinatorMetrics
	store Store

	mu sync.Mutex
	// issuer is the signing issuer last read with the gate open and agreed
	// on by the gate; issuerRead is when discovery was last read, and
	// discovered what it said, with the gate's signing issuer then.
	issuer        string
	issuerRead    time.Time
	discovered    string
	discoveredFor string
	// observedIssuer is the signing issuer this process last saw with the
	// gate open, and since when: the agents are given AgentWait from then
	// to report under it. A new leader observes it afresh, which only
	// waits longer.
	observedIssuer   string
	observedIssuerAt time.Time
	// unrecordedWait is the wait last published while no TokenRollout
	// could hold it.
	unrecordedWait *Wait

	// appMetrics outlive terms; detector is the current term's, once it
	// has read the pods (nil: not leading, or detection off).
	appMetrics *apps.Metrics
	detector   atomic.Pointer[apps.Detector]
	// appsStopped says why the current term's app detection stopped
	// (nil: it has not).
	appsStopped atomic.Pointer[string]

	// notifier delivers the policies' webhooks (nil: RolloutPolicies off).
	notifier *policy.Notifier
}

// term is one leadership term: created by Lead, dropped when it returns,
// so nothing a term learned outlives it.
type term struct {
	c        *Coordinator
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder events.EventRecorder
	// nodeKeys lists the cached Nodes; nodes and cm read the caches with
	// this term's own writes on top until the informers catch up
	// (read-your-writes), so no decision is taken on a cache older than a
	// write of ours.
	nodeKeys cache.Store
	nodes    cache.MutationCache
	// records caches the TokenRollouts; written holds this term's own
	// writes until the cache has them (records).
	records cache.Store
	written map[string]*v1alpha1.TokenRollout
	// kured caches kured's DaemonSet (nil: --kured-lock off); kuredSynced
	// tells whether it has been read (nil: it has).
	kured       cache.Store
	kuredSynced func() bool
	// pol is what this term reads and decides of the RolloutPolicies
	// (rolloutpolicy.go).
	pol policyTerm
	// drains are the background preparations (drains, evictions), awaited
	// when the term ends.
	drains sync.WaitGroup

	mu       sync.Mutex
	jobs     map[string]*prepJob
	gateOpen *bool
	// sourceOpen is the gate's own verdict, before discovery is compared
	// with it.
	sourceOpen *bool
	// gateOpenSince is when this term saw the gate open (zero: closed).
	gateOpenSince time.Time
	// lastVerified is when the last node was verified (overhead metric).
	lastVerified time.Time
	lastLogged   string
	// syncWait is what the current sync waits for (wait.go).
	syncWait *Wait
	// syncEstimate is the current sync's completion estimate (deadline.go).
	syncEstimate *Estimate
	// uncordoned are in-progress nodes the watch saw made schedulable by
	// someone else (node.go).
	uncordoned map[string]bool
	// since is when the term began: how long app detection has had to
	// start (strategy_auto.go).
	since time.Time
	// plans keeps the planner's verdict on each node between syncs (only
	// the sync goroutine uses it).
	plans *planCache
	// index is the cached Nodes as syncs read them (nodeindex.go).
	index *nodeIndex
	// parsed caches the parses of the Nodes' annotations (parsecache.go);
	// index forgets the Nodes gone.
	parsed *parsedNodes
	// published is what this term knows of the issuer published for the
	// agents (issuerpublish.go; only the sync goroutine uses it).
	published issuerPublication
}

// prepJob is a strategy's preparation running for one node.
type prepJob struct {
	cancel context.CancelFunc
	prep   *preparation
	done   bool
	err    error
	// told: its end was logged in the metrics and Events.
	told bool
}

const syncKey = "rollout"

// mutationCacheSize bounds the objects the read-your-writes caches hold:
// more than the nodes one sync writes in a fleet of the size tokenroll is
// built for.
const mutationCacheSize = 8192

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
	if cfg.Rollouts == nil {
		errs = append(errs, errors.New("coordinator: no tokenroll.io client for the TokenRollouts"))
	}
	if _, err := ParseStrategy(string(cfg.Strategy)); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: %w", err))
	}
	if _, err := ResolveMaxUnavailable(cfg.MaxUnavailable, 1); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: %w", err))
	}
	if cfg.DeadlineMaxUnavailable != (intstr.IntOrString{}) {
		if _, err := ResolveMaxUnavailable(cfg.DeadlineMaxUnavailable, 1); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: deadline %w", err))
		}
	}
	if cfg.MaxKubeletRestarts == (intstr.IntOrString{}) {
		cfg.MaxKubeletRestarts = DefaultMaxKubeletRestarts
	}
	if _, err := ResolveMaxUnavailable(cfg.MaxKubeletRestarts, 1); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: kubelet restarts at once: %w", err))
	}
	for name, d := range map[string]time.Duration{"drain timeout": cfg.DrainTimeout, "action timeout": cfg.ActionTimeout,
		"verify timeout": cfg.VerifyTimeout, "issuer refresh": cfg.IssuerRefresh} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("coordinator: %s %s must be positive", name, d))
		}
	}
	if cfg.Settle < 0 || cfg.TrustMargin < 0 || cfg.AgentWait < 0 || cfg.GateSettle < 0 {
		errs = append(errs, errors.New("coordinator: settle, gate settle, trust margin and agent wait must not be negative"))
	}
	if cfg.Apps != nil {
		if err := cfg.Apps.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: app detection: %w", err))
		}
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
	if cfg.PolicyRecheck <= 0 {
		cfg.PolicyRecheck = 15 * time.Second
	}
	if cfg.WriteRetry == (apiretry.Policy{}) {
		cfg.WriteRetry = apiretry.Default()
		cfg.WriteRetry.Clock = cfg.Clock
	}
	if cfg.Drainer == nil {
		cfg.Drainer = KubectlDrainer{Client: cfg.Client, Log: cfg.Log, Retry: cfg.WriteRetry}
	}

	c := &Coordinator{cfg: cfg, m: newCoordinatorMetrics(cfg.Registry),
		store: Store{Client: cfg.Rollouts, FieldManager: fieldManager, Retry: cfg.WriteRetry, History: cfg.History, Now: cfg.Clock.Now}}
	c.m.setPhase("none")
	if cfg.Apps != nil {
		c.appMetrics = apps.NewMetrics(cfg.Registry)
	}
	if cfg.Policies != nil {
		c.notifier = policy.NewNotifier(policy.NotifierConfig{Clock: cfg.Clock, Registry: cfg.Registry, Log: cfg.Log.Named("notify")})
	}
	return c, nil
}

// Observe gives app detection one audit event: audit sources call it. The
// event is dropped while this replica does not lead (or detection is off);
// the leader's detector takes it.
func (c *Coordinator) Observe(ev audit.Event) {
	if d := c.detector.Load(); d != nil {
		d.Observe(ev)
	}
}

// Lead runs the coordinator's work until ctx ends: call it with the context
// leader election gives, so the work stops the instant leadership is lost.
// It returns once the term's background work has stopped too.
func (c *Coordinator) Lead(ctx context.Context) error {
	c.m.leader.Set(1)
	defer c.m.leader.Set(0)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := c.cfg.Log
	nodeFactory := nodeInformerFactory(c.cfg.Client)
	nodeInf := nodeFactory.Core().V1().Nodes().Informer()
	recordFactory := externalversions.NewSharedInformerFactory(c.cfg.Rollouts, 0)
	recordInf := recordFactory.Tokenroll().V1alpha1().TokenRollouts().Informer()
	t := c.newTerm(klog.FromContext(ctx), nodeInf.GetStore(), recordInf.GetStore())
	defer t.queue.ShutDown()
	enqueue := func() { t.queue.Add(syncKey) }
	if _, err := nodeInf.AddEventHandler(nodeOnChange(t.nodes, t.parsed, enqueue)); err != nil {
		return err
	}
	if _, err := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: t.nodeUpdated}); err != nil {
		return err
	}
	t.index.track()
	if _, err := recordInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { enqueue() }, UpdateFunc: func(any, any) { enqueue() }, DeleteFunc: func(any) { enqueue() },
	}); err != nil {
		return err
	}
	var kuredFactory informers.SharedInformerFactory
	if ref := c.cfg.KuredLock; ref.Name != "" {
		// One object, watched: a lock taken or released wakes the
		// coordinator at once, for one watch's cost.
		kuredFactory = informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, 0, informers.WithNamespace(ref.Namespace),
			informers.WithTransform(trimKured),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ref.Name }))
		kuredInf := kuredFactory.Apps().V1().DaemonSets().Informer()
		t.kured, t.kuredSynced = kuredInf.GetStore(), kuredInf.HasSynced
		if _, err := kuredInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { enqueue() }, UpdateFunc: func(any, any) { enqueue() }, DeleteFunc: func(any) { enqueue() },
		}); err != nil {
			return err
		}
	}

	synced := []cache.InformerSynced{nodeInf.HasSynced, recordInf.HasSynced}
	if c.cfg.Policies != nil {
		policiesSynced, stopPolicies, err := t.startPolicies(ctx, enqueue)
		if err != nil {
			return err
		}
		defer stopPolicies()
		if policiesSynced != nil {
			synced = append(synced, policiesSynced)
		}
	}

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: c.cfg.Client.EventsV1()})
	// Events already recorded are still sent after leadership ends.
	stopEvents := make(chan struct{})
	broadcaster.StartRecordingToSink(stopEvents)
	defer func() { broadcaster.Shutdown(); close(stopEvents) }()
	t.recorder = broadcaster.NewRecorder(scheme.Scheme, "tokenroll-coordinator")
	if err := c.awaitRecordsServed(ctx, t.recorder); err != nil {
		return err
	}
	if err := c.migrate(ctx); err != nil {
		return err
	}

	nodeFactory.Start(ctx.Done())
	recordFactory.Start(ctx.Done())
	// Not awaited: until it is read, no node starts and the rollout says
	// it waits for it (a missing permission is reported, not a hang).
	if kuredFactory != nil {
		kuredFactory.Start(ctx.Done())
	}
	defer func() {
		cancel()
		nodeFactory.Shutdown()
		recordFactory.Shutdown()
		if kuredFactory != nil {
			kuredFactory.Shutdown()
		}
	}()
	if err := c.cfg.Gate.Start(ctx, enqueue); err != nil {
		return fmt.Errorf("starting the revision gate: %w", err)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	log.Info("leading: caches synced", zap.Int("nodes", len(t.nodeKeys.ListKeys())))

	var loops sync.WaitGroup
	defer func() { cancel(); loops.Wait() }()
	loops.Go(func() {
		tk := c.cfg.Clock.NewTicker(c.cfg.IssuerRefresh)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C():
				c.mu.Lock()
				c.issuerRead = time.Time{}
				c.mu.Unlock()
				enqueue()
			}
		}
	})
	loops.Go(func() {
		<-ctx.Done()
		t.queue.ShutDown()
	})
	c.appsStopped.Store(nil)
	if c.notifier != nil {
		loops.Go(func() { c.notifier.Run(ctx) })
	}
	if c.cfg.Apps != nil {
		vols := newVolumeFeed(c)
		if _, err := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: vols.node, UpdateFunc: func(_, n any) { vols.node(n) },
		}); err != nil {
			return err
		}
		loops.Go(func() {
			err := apps.Run(ctx, apps.RunConfig{Client: c.cfg.Client, Namespace: c.cfg.Namespace, Options: *c.cfg.Apps,
				Recorder: t.recorder, Metrics: c.appMetrics, Log: log, Clock: c.cfg.Clock,
				Started: func(d *apps.Detector) {
					c.detector.Store(d)
					for _, n := range nodeInf.GetStore().List() {
						vols.node(n)
					}
					c.markReceiver(ctx, true)
					// auto may be waiting for it to choose a node's remediation.
					enqueue()
				},
				Stopped: func() { c.detector.Store(nil); c.markReceiver(ctx, false) }})
			if err != nil && ctx.Err() == nil {
				why := err.Error()
				c.appsStopped.Store(&why)
				log.Error("app detection stopped; the rollout goes on without it", zap.Error(err))
				enqueue()
			}
		})
	} else if c.cfg.Strategy == Auto {
		log.Warn("strategy auto runs without app detection (--app-detection=false): it evicts the pods holding tokens of an untrusted issuer, as pod-restart does, and cannot verify that apps authenticate")
	}
	defer t.stopPreparations()
	enqueue()
	for t.processNext(ctx) {
	}
	return nil
}

// newTerm starts a term on the informers' stores of Nodes and of the
// TokenRollouts.
func (c *Coordinator) newTerm(logger klog.Logger, nodes, records cache.Store) *term {
	t := &term{c: c, jobs: map[string]*prepJob{}, nodeKeys: nodes, records: records, written: map[string]*v1alpha1.TokenRollout{},
		uncordoned: map[string]bool{}, since: c.cfg.Clock.Now(), plans: newPlanCache()}
	t.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "tokenroll-coordinator", Clock: c.cfg.Clock})
	t.parsed = newParsedNodes()
	t.index = newNodeIndex()
	t.index.parsed = t.parsed
	t.nodes = markingCache{index: t.index,
		MutationCache: cache.NewIntegerResourceVersionMutationCacheWithOptions(logger, nodes, cache.MutationCacheOptions{MaxCacheSize: mutationCacheSize})}
	return t
}

// stopPreparations cancels the drains and evictions in flight and waits for
// them: a term leaves nothing running behind it.
func (t *term) stopPreparations() {
	t.mu.Lock()
	for _, j := range t.jobs {
		j.cancel()
	}
	t.mu.Unlock()
	t.drains.Wait()
}

// onChange keeps a read-your-writes cache informed of what its informer
// sees, and asks for a sync.
func onChange(mc cache.MutationCache, enqueue func()) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) {
			if obj, ok := o.(runtime.Object); ok {
				mc.OnAddOrUpdate(obj)
			}
			enqueue()
		},
		UpdateFunc: func(_, o any) {
			if obj, ok := o.(runtime.Object); ok {
				mc.OnAddOrUpdate(obj)
			}
			enqueue()
		},
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if obj, ok := o.(runtime.Object); ok {
				mc.OnDelete(obj)
			}
			enqueue()
		},
	}
}

// nodeOnChange is onChange for Nodes, except that an update no sync reads
// asks for none: one moving only the conditions' heartbeat times (the
// kubelet's periodic status post, every node every few minutes), or only
// the TokenIDs of the agent's tokens report (its hourly rewrite as pods
// come and go: app detection's volume feed reads them, a sync never). On
// a large fleet those updates alone would re-plan every node several
// times a second. The tokens reports compared are parsed through parsed
// (nil: no cache), where the next sync finds them.
func nodeOnChange(mc cache.MutationCache, parsed *parsedNodes, enqueue func()) cache.ResourceEventHandlerFuncs {
	h := onChange(mc, enqueue)
	update := h.UpdateFunc
	h.UpdateFunc = func(oldObj, newObj any) {
		a, okA := oldObj.(*corev1.Node)
		b, okB := newObj.(*corev1.Node)
		if okA && okB && unseenBySync(parsed, a, b) {
			mc.OnAddOrUpdate(b)
			return
		}
		update(oldObj, newObj)
	}
	return h
}

// unseenBySync reports whether two versions of a Node differ only in their
// resourceVersion, managed fields, conditions' heartbeat times and the
// TokenIDs of their tokens reports.
func unseenBySync(parsed *parsedNodes, a, b *corev1.Node) bool {
	if len(a.Status.Conditions) != len(b.Status.Conditions) {
		return false
	}
	ra, rb := a.Annotations[protocol.AnnotationTokens], b.Annotations[protocol.AnnotationTokens]
	if ra != rb && !sameButTokenIDs(parsed, b.Name, ra, rb) {
		return false
	}
	// Shallow copies with the conditions copied: every node posts its
	// status every few minutes, and a deep copy of two whole Nodes cost
	// more than the comparison.
	strip := func(n *corev1.Node) *corev1.Node {
		c := *n
		c.ResourceVersion, c.ManagedFields = "", nil
		c.Status.Conditions = slices.Clone(n.Status.Conditions)
		for i := range c.Status.Conditions {
			c.Status.Conditions[i].LastHeartbeatTime = metav1.Time{}
		}
		if ra != rb {
			c.Annotations = maps.Clone(n.Annotations)
			delete(c.Annotations, protocol.AnnotationTokens)
		}
		return &c
	}
	return equality.Semantic.DeepEqual(strip(a), strip(b))
}

// sameButTokenIDs reports whether two tokens reports of node differ in
// their TokenIDs alone (false when either is not a report).
func sameButTokenIDs(parsed *parsedNodes, node, a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	ra, errA := parsed.tokenReportOf(node, a)
	rb, errB := parsed.tokenReportOf(node, b)
	if errA != nil || errB != nil {
		return false
	}
	ra.TokenIDs, rb.TokenIDs = nil, nil
	// Both decoded alike: their times are equal exactly when their
	// texts were.
	return reflect.DeepEqual(ra, rb)
}

// nodeInformerFactory makes the factory of the Node informer a term
// watches the fleet with.
func nodeInformerFactory(client kubernetes.Interface) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trimNode))
}

// trimNode drops what the coordinator never reads from cached Nodes: of
// the status, it reads the conditions and the boot ID only (it never writes
// a Node's status, and its patches name the fields they change, so what is
// dropped here is never written back). The capacity, addresses, node info
// and images are most of a Node's status, and every node of the cluster is
// cached.
func trimNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status = corev1.NodeStatus{Conditions: n.Status.Conditions, NodeInfo: corev1.NodeSystemInfo{BootID: n.Status.NodeInfo.BootID}}
	}
	return obj, nil
}

func (t *term) processNext(ctx context.Context) bool {
	key, quit := t.queue.Get()
	if quit {
		return false
	}
	defer t.queue.Done(key)
	after, err := t.sync(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		t.c.cfg.Log.Warn("sync failed; retrying", zap.Error(err))
		t.queue.AddRateLimited(key)
	default:
		t.queue.Forget(key)
		if after > 0 {
			t.queue.AddAfter(key, after)
		}
	}
	return true
}

// world is the cluster as one sync sees it.
type world struct {
	now  time.Time
	gate GateState
	// issuer is the API servers' signing issuer: as this process last read
	// it with the gate open (discovered) or, until it has (a new leader
	// while the gate is closed), as the rollout state records it; "" when
	// neither knows, and then nothing is judged, planned or started.
	issuer     string
	discovered bool
	// issuerAt is when this process first saw issuer signing (zero before
	// it has): a token issued before it may be of the previous issuer.
	issuerAt time.Time
	state    State
	nodes    []*corev1.Node
	byName   map[string]*corev1.Node
}

// sync is the whole reconciliation: it returns when it wants to run again
// (0: on the next change only).
func (t *term) sync(ctx context.Context) (time.Duration, error) {
	began := t.c.cfg.Clock.Now()
	defer func() { t.c.m.syncDuration.Observe(t.c.cfg.Clock.Since(began).Seconds()) }()
	t.mu.Lock()
	t.syncWait, t.syncEstimate = nil, nil
	t.mu.Unlock()
	w, err := t.observe(ctx)
	if err != nil {
		return 0, err
	}
	d, err := t.reconcile(ctx, w)
	t.publishIssuer(ctx, w.now)
	if err != nil {
		return 0, err
	}
	pd, err := t.publishPolicies(ctx, w)
	if err != nil {
		t.c.cfg.Log.Warn("writing the RolloutPolicies' status; retried on the next sync", zap.Error(err))
	}
	if pd > 0 && (d == 0 || pd < d) {
		d = pd
	}
	if err := t.publishWait(ctx, w.now); err != nil {
		return d, err
	}
	return d, t.publishEstimate(ctx)
}

// reconcile is one sync's decisions on the world it observed.
func (t *term) reconcile(ctx context.Context, w world) (time.Duration, error) {
	t.c.mu.Lock()
	prev := t.c.observedIssuer
	if w.gate.Open && w.discovered && prev != w.issuer {
		t.c.observedIssuer, t.c.observedIssuerAt = w.issuer, w.now
		w.issuerAt = w.now
		t.c.mu.Unlock()
		t.c.cfg.Log.Info("API servers sign with a new issuer", zap.String("issuer", w.issuer), zap.String("previous", prev))
	} else {
		w.issuerAt = t.c.observedIssuerAt
		t.c.mu.Unlock()
	}
	if w.state.Steer != nil {
		var err error
		if w.state, err = t.applySteer(ctx, w); err != nil {
			return 0, err
		}
	}
	if len(w.state.Retry) > 0 {
		return 0, t.applyRetries(ctx, w)
	}
	r := w.state.Active()
	if r == nil {
		t.observeRollout(w, w.state.Rollout) // the last one, finished, or none
		return t.maybeStart(ctx, w)
	}
	return t.advance(ctx, w, r)
}

func (t *term) observe(ctx context.Context) (world, error) {
	w := world{now: t.c.cfg.Clock.Now().UTC()}
	source := t.c.cfg.Gate.State()
	t.observeGateSource(source.Open)
	var discovered string
	w.issuer, discovered = t.c.currentIssuer(ctx, source, w.now)
	w.gate = source.WithDiscovery(discovered)
	t.observeGate(w.gate, w.now)
	w.state = StateOf(t.recordList())
	w.discovered = w.issuer != ""
	if !w.discovered {
		t.c.mu.Lock()
		w.issuer = cmp.Or(t.c.observedIssuer, w.state.recordedIssuer())
		t.c.mu.Unlock()
	}
	t.plans.note(t.index.refresh(t.nodeKeys.ListKeys, t.node))
	w.nodes, w.byName = t.index.nodes, t.index.byName
	t.c.m.unresolved.Set(float64(len(t.index.unresolved)))
	t.c.m.excluded.Set(float64(len(t.index.excluded)))
	return w, nil
}

// currentIssuer returns the signing issuer and what OIDC discovery said.
// Discovery is read when the gate's source is open and the last read is
// stale, the source just opened, or the source's own signing issuer
// changed since. The issuer is discovery's answer when the source agrees
// with it; while the source is closed or disagrees, the API servers do
// not agree, and the last issuer agreed on stands.
func (c *Coordinator) currentIssuer(ctx context.Context, g GateState, now time.Time) (iss, discovered string) {
	c.mu.Lock()
	iss, read, discovered, discoveredFor := c.issuer, c.issuerRead, c.discovered, c.discoveredFor
	c.mu.Unlock()
	if !g.Open {
		return iss, ""
	}
	if read.IsZero() || discovered == "" || discoveredFor != g.SigningIssuer {
		got, err := issuer.Discover(ctx, c.cfg.Client.Discovery().RESTClient())
		if err != nil {
			c.cfg.Log.Warn("reading the API server's issuer (OIDC discovery); keeping the last known one", zap.String("lastKnown", iss), zap.Error(err))
			return iss, ""
		}
		discovered = got
		c.mu.Lock()
		c.discovered, c.discoveredFor, c.issuerRead = got, g.SigningIssuer, now
		c.mu.Unlock()
	}
	if !g.WithDiscovery(discovered).Open {
		return iss, discovered
	}
	c.mu.Lock()
	c.issuer = discovered
	c.mu.Unlock()
	return discovered, discovered
}

// observeGateSource asks for discovery to be read anew when the gate's
// source opens: the API servers agree again.
func (t *term) observeGateSource(open bool) {
	t.mu.Lock()
	opened := open && (t.sourceOpen == nil || !*t.sourceOpen)
	t.sourceOpen = &open
	t.mu.Unlock()
	if opened {
		t.c.mu.Lock()
		t.c.issuerRead = time.Time{}
		t.c.mu.Unlock()
	}
}

func (t *term) observeGate(g GateState, now time.Time) {
	c := t.c
	t.mu.Lock()
	changed := t.gateOpen == nil || *t.gateOpen != g.Open
	open := g.Open
	t.gateOpen = &open
	if changed {
		t.gateOpenSince = time.Time{}
		if open {
			t.gateOpenSince = now
		}
	}
	t.mu.Unlock()
	for _, p := range GateNames() {
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
	for _, ti := range g.Trusted {
		if !ti.Expires.IsZero() {
			earliest = minTime(earliest, ti.Expires)
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
func (t *term) maybeStart(ctx context.Context, w world) (time.Duration, error) {
	cfg := t.c.cfg
	if w.issuer == "" {
		if w.state.Start != nil {
			t.wait(WaitIssuerUnknown, "a start request waits until the API servers' issuer is known (read when the revision gate is open)")
		}
		return 0, nil
	}
	if req := w.state.Start; req != nil {
		if req.Policy != "" {
			// Planned once its policy can be read, so that its nodes get
			// that policy's strategy.
			todo := fmt.Sprintf("delete TokenRollout %s (kubectl delete tokenrollout %s) and ask for a rollout without spec.policyName", req.Name, req.Name)
			if why := t.namedPolicyProblem(req.Name, req.Policy, todo); why != "" {
				t.wait(WaitPolicyRefused, why)
				return 0, nil
			}
		}
		sel, err := labels.Parse(req.Selector)
		if req.Invalid != "" {
			err = errors.New(req.Invalid)
		}
		strategy := cmp.Or(req.Strategy, cfg.Strategy)
		var nodes []PlannedNode
		if err == nil {
			for _, n := range w.nodes {
				if sel.Matches(labels.Set(n.Labels)) && excludedBy(n) == "" && (len(req.Nodes) == 0 || slices.Contains(req.Nodes, n.Name)) {
					nodes = append(nodes, PlannedNode{Name: n.Name, Strategy: strategy, Reason: "requested by " + orUnknown(req.RequestedBy)})
				}
			}
			sortPlan(nodes)
			if req.Strategy == "" {
				t.poolStrategies(w, req.Policy, nodes)
			}
		}
		trigger := TriggerManual
		if req.RequestedBy != "" {
			trigger += " (" + req.RequestedBy + ")"
		}
		var dryRun v1alpha1.DryRunSource
		switch {
		case req.DryRun:
			dryRun = v1alpha1.DryRunByRequest
		case cfg.DryRun:
			dryRun = v1alpha1.DryRunByCoordinator
		}
		return 0, t.startRollout(ctx, w, req.Name, trigger, strategy, req.Policy, nodes, err, dryRun)
	}
	if !cfg.Auto || !w.gate.Open {
		return 0, nil
	}
	t.c.mu.Lock()
	waitUntil := t.c.observedIssuerAt.Add(cfg.AgentWait)
	t.c.mu.Unlock()
	p := t.plans.planChanged(PlanInput{Now: w.now, Issuer: w.issuer, Gate: w.gate, Strategy: cfg.Strategy, Margin: cfg.TrustMargin,
		WaitForReports: w.now.Before(waitUntil), Nodes: w.nodes, AppStale: t.appStaleNodes(w)}, w.byName)
	t.c.m.staleNodes.Set(float64(len(p.Nodes)))
	if len(p.Waiting) > 0 {
		t.wait(WaitAgentReports, "waiting for agents to report under the new issuer before planning",
			zap.String("nodes", namesOf(p.Waiting)), zap.Time("until", waitUntil))
		return waitUntil.Sub(w.now), nil
	}
	if len(p.Nodes) == 0 {
		return 0, nil
	}
	trigger := ""
	for _, tr := range []string{TriggerIssuer, TriggerStaleTokens, TriggerRebootRequired, TriggerAppStale} {
		if p.Triggers[tr] > 0 {
			if trigger != "" {
				trigger += ","
			}
			trigger += tr
		}
	}
	t.poolStrategies(w, "", p.Nodes)
	if last := w.state.Rollout; cfg.DryRun && last != nil && last.DryRun && samePlan(last.Nodes, p.Nodes) {
		return 0, nil // that dry run said it all already
	}
	var dryRun v1alpha1.DryRunSource
	if cfg.DryRun {
		dryRun = v1alpha1.DryRunByCoordinator
	}
	return 0, t.startRollout(ctx, w, NewRolloutName(w.now), trigger, cfg.Strategy, "", p.Nodes, nil, dryRun)
}

func orUnknown(s string) string {
	if s == "" {
		return "an administrator"
	}
	return s
}

// NewRolloutName names a new TokenRollout: by time, so that names sort as
// the rollouts were made.
func NewRolloutName(now time.Time) string {
	return "r-" + now.UTC().Format("20060102-150405") + "-" + randHex(2)
}

// startRollout records a new rollout; policyName, when set, is the
// RolloutPolicy all its nodes follow; dryRunBy, when set, makes it a dry
// run and says what asked for one.
func (t *term) startRollout(ctx context.Context, w world, id, trigger string, strategy protocol.Strategy, policyName string, nodes []PlannedNode, selErr error, dryRunBy v1alpha1.DryRunSource) error {
	dryRun := dryRunBy != ""
	r := &Rollout{ID: id, Trigger: trigger, Strategy: strategy, Policy: policyName,
		Phase: RolloutRunning, Issuer: w.issuer, Nodes: nodes, DryRun: dryRun, DryRunBy: dryRunBy, CreatedAt: w.now, UpdatedAt: w.now}
	switch {
	case selErr != nil:
		r.Phase, r.FinishedAt, r.Message = RolloutCancelled, w.now, fmt.Sprintf("the node selector is not valid: %v", selErr)
	case len(nodes) == 0:
		r.Phase, r.FinishedAt, r.Message = RolloutDone, w.now, "no node matched; nothing to do"
	case dryRun:
		for i := range r.Nodes {
			r.Nodes[i].Would = t.wouldDo(ctx, w, r.Nodes[i])
		}
		r.Phase, r.FinishedAt = RolloutDone, w.now
		r.Message = "dry run (" + DryRunLabel(dryRunBy) + "): nothing was cordoned, drained or requested; " + nodeCount(len(nodes)) + " would be remediated"
	case slices.ContainsFunc(nodes, func(pn PlannedNode) bool { return pn.Strategy == Auto }):
		if ev := t.appEvidence(w.now); ev.missing != "" {
			r.Apps = "no audit source (" + ev.missing + "): auto evicts the pods holding tokens of an untrusted issuer, as pod-restart does, and cannot verify that apps authenticate"
		}
	}
	if _, err := t.updateState(ctx, func(st *State) error {
		if st.Active() != nil {
			return errors.New("a rollout is already active")
		}
		if st.Rollout != nil {
			st.Last = st.Rollout
		}
		if st.Start != nil && st.Start.Name != r.ID {
			return errors.New("the start request changed while planning it")
		}
		st.Rollout, st.Start, st.Waiting = r, nil, nil
		return nil
	}); err != nil {
		return err
	}
	t.c.cfg.Log.Info("rollout planned", zap.String("rollout", r.ID), zap.String("trigger", trigger), zap.String("strategy", string(strategy)), zap.String("policy", policyName),
		zap.Int("nodes", len(nodes)), zap.String("phase", string(r.Phase)), zap.String("message", r.Message))
	if r.Phase == RolloutRunning {
		t.notify(ctx, v1alpha1.NotifyRolloutStarted, r, "", fmt.Sprintf("started (%s): %s, strategy %s", trigger, nodeCount(len(nodes)), strategy))
	}
	if r.Apps != "" {
		t.c.cfg.Log.Warn("strategy auto has no audit source: it falls back to evicting the pods holding tokens of an untrusted issuer", zap.String("rollout", r.ID), zap.String("apps", r.Apps))
	}
	if !dryRun {
		// One Event for the plan, on the TokenRollout, not one per node: on
		// a large fleet those would queue ahead of the rollout's own writes
		// behind the client's rate limit. Each node's Cordoned Event gives
		// its reason when its turn comes; tokenroll status lists them all.
		if len(r.Nodes) > 0 {
			names := make([]string, len(r.Nodes))
			count := map[protocol.Strategy]int{}
			for i, pn := range r.Nodes {
				names[i] = pn.Name
				count[pn.Strategy]++
			}
			var how []string
			for _, s := range Strategies() {
				if count[s] > 0 {
					how = append(how, fmt.Sprintf("%s %d", s, count[s]))
				}
			}
			t.rolloutEvent(corev1.EventTypeNormal, "RolloutPlanned", "Plan", "rollout %s (%s) plans %s (%s): %s",
				r.ID, trigger, nodeCount(len(r.Nodes)), strings.Join(how, ", "), namesOf(names))
			if r.Apps != "" {
				t.rolloutEvent(corev1.EventTypeWarning, "AppsUnverified", "Plan", "rollout %s: %s", r.ID, r.Apps)
			}
		}
		return nil
	}
	for _, pn := range r.Nodes {
		if n := w.byName[pn.Name]; n != nil {
			t.event(n, corev1.EventTypeNormal, "DryRun", "Plan", "dry run %s (%s), %s: would %s", r.ID, trigger, pn.Reason, pn.Would)
		}
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// updateState writes the rollout record and keeps what it wrote, so the
// next sync does not act on an older one (read-your-writes).
func (t *term) updateState(ctx context.Context, change func(*State) error) (State, error) {
	store := t.c.store
	store.Progress = t.fillProgress
	st, written, err := store.update(ctx, t.recordList(), change)
	t.mu.Lock()
	for _, o := range written {
		t.written[o.Name] = o
	}
	t.mu.Unlock()
	return st, err
}

// recordList lists the cached TokenRollouts, each the newer of the cache's
// and the one this term last wrote.
func (t *term) recordList() []*v1alpha1.TokenRollout {
	t.mu.Lock()
	defer t.mu.Unlock()
	seen := map[string]bool{}
	var out []*v1alpha1.TokenRollout
	for _, o := range t.records.List() {
		r, ok := o.(*v1alpha1.TokenRollout)
		if !ok {
			continue
		}
		seen[r.Name] = true
		if mine := t.written[r.Name]; mine != nil && newerRV(mine.ResourceVersion, r.ResourceVersion) {
			r = mine
		} else {
			delete(t.written, r.Name)
		}
		out = append(out, r)
	}
	for name, o := range t.written {
		if !seen[name] {
			out = append(out, o)
		}
	}
	return out
}

// record is the TokenRollout named name as recordList sees it (nil: none).
func (t *term) record(name string) *v1alpha1.TokenRollout {
	for _, o := range t.recordList() {
		if o.Name == name {
			return o
		}
	}
	return nil
}

func newerRV(a, b string) bool {
	x, errA := strconv.ParseUint(a, 10, 64)
	y, errB := strconv.ParseUint(b, 10, 64)
	return errA == nil && errB == nil && x > y
}

// listNodes lists the cached Nodes, each the newer of the cache's and the
// one this term last wrote.
func (t *term) listNodes() []*corev1.Node {
	keys := t.nodeKeys.ListKeys()
	out := make([]*corev1.Node, 0, len(keys))
	for _, k := range keys {
		if n := t.node(k); n != nil {
			out = append(out, n)
		}
	}
	return out
}

// node is one Node as listNodes sees it (nil: gone).
func (t *term) node(name string) *corev1.Node {
	o, ok, _ := t.nodes.GetByKey(name)
	if !ok {
		return nil
	}
	n, _ := o.(*corev1.Node)
	return n
}

func (t *term) event(n *corev1.Node, typ, reason, action, note string, args ...any) {
	ref := &corev1.ObjectReference{Kind: "Node", Name: n.Name, UID: n.UID, APIVersion: "v1"}
	t.recorder.Eventf(ref, nil, typ, reason, action, note, args...)
}

// ObservedIssuer is the signing issuer this process last saw with the gate
// open, and since when ("" while it leads no term, or has not read it).
func (c *Coordinator) ObservedIssuer() (string, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.observedIssuer, c.observedIssuerAt
}
