// Package replicasim keeps ReplicaSets' pods alive in the sandbox, whose
// control plane runs no kube-controller-manager and no scheduler: it creates
// a ReplicaSet's missing pods already bound to a Ready, schedulable node,
// deletes surplus ones and reports the ReplicaSet's status, so that an
// evicted or drained pod comes back as it would on a real cluster.
package replicasim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	appsinformers "k8s.io/client-go/informers/apps/v1"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Config says which ReplicaSets to manage and how.
type Config struct {
	// Client lists and watches ReplicaSets, Pods and Nodes, creates and
	// deletes Pods, and updates replicasets/status.
	Client kubernetes.Interface
	// Namespaces limits the ReplicaSets managed; empty means every namespace.
	Namespaces []string
	// Selector, a label selector such as "app=web,tier!=db", limits the
	// ReplicaSets managed by their own labels; empty means all.
	Selector string
	// Workers is how many ReplicaSets are synced at once (default 2).
	Workers int
	// Log receives what the controller does (default: nothing).
	Log *zap.Logger
	// Clock drives retries, expectations and minReadySeconds (default: real
	// time).
	Clock clock.WithTicker
}

// controllerKind is what the pods' controller reference names.
var controllerKind = appsv1.SchemeGroupVersion.WithKind("ReplicaSet")

// scope is the ReplicaSets and Pods of one watched namespace (or of all).
type scope struct {
	replicaSets appslisters.ReplicaSetLister
	pods        corelisters.PodLister
}

// Controller is a minimal ReplicaSet controller with a built-in scheduler.
type Controller struct {
	cfg      Config
	log      *zap.Logger
	clock    clock.WithTicker
	selector labels.Selector

	factories []informers.SharedInformerFactory
	scopes    map[string]*scope // by namespace; "" when every namespace is watched
	nodes     corelisters.NodeLister
	synced    []cache.InformerSynced
	// nodeInformer is kept for tests, which learn through it when the
	// controller has seen a node change.
	nodeInformer cache.SharedIndexInformer

	queue        workqueue.TypedRateLimitingInterface[cache.ObjectName]
	expectations *expectations

	mu sync.Mutex
	// waiting holds the ReplicaSets short of pods with no node to put them
	// on; a node event that makes a node schedulable queues them again.
	waiting map[cache.ObjectName]bool
}

// New checks cfg and sets up the informers; Run starts them.
func New(cfg Config) (*Controller, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("replicasim: Config.Client is nil"))
	}
	selector, err := labels.Parse(cfg.Selector)
	if err != nil {
		errs = append(errs, fmt.Errorf("replicasim: Config.Selector %q is not a label selector: %w", cfg.Selector, err))
	}
	if cfg.Workers < 0 {
		errs = append(errs, fmt.Errorf("replicasim: Config.Workers is %d; want 1 or more (0 for the default)", cfg.Workers))
	}
	for _, ns := range cfg.Namespaces {
		if ns == "" {
			errs = append(errs, errors.New("replicasim: Config.Namespaces holds an empty name; leave the list empty to watch every namespace"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	c := &Controller{
		cfg:      cfg,
		log:      cfg.Log,
		clock:    cfg.Clock,
		selector: selector,
		scopes:   map[string]*scope{},
		// A failed sync is retried within 30 s at most: the sandbox is
		// interactive, and the controller default backs off to many minutes.
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](5*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "replicasim", Clock: cfg.Clock}),
		expectations: newExpectations(cfg.Clock),
		waiting:      map[cache.ObjectName]bool{},
	}

	namespaces := cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		if _, dup := c.scopes[ns]; dup {
			continue
		}
		f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(ns))
		rsInformer := f.InformerFor(&appsv1.ReplicaSet{}, func(client kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
			return appsinformers.NewFilteredReplicaSetInformer(client, ns, resync,
				cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
				func(o *metav1.ListOptions) { o.LabelSelector = cfg.Selector })
		})
		podInformer := f.Core().V1().Pods().Informer()
		if _, err := rsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueReplicaSet,
			UpdateFunc: func(_, obj any) { c.enqueueReplicaSet(obj) },
			DeleteFunc: c.enqueueReplicaSet,
		}); err != nil {
			return nil, fmt.Errorf("replicasim: watching ReplicaSets: %w", err)
		}
		if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    c.podAdded,
			UpdateFunc: c.podUpdated,
			DeleteFunc: c.podDeleted,
		}); err != nil {
			return nil, fmt.Errorf("replicasim: watching Pods: %w", err)
		}
		c.scopes[ns] = &scope{
			replicaSets: appslisters.NewReplicaSetLister(rsInformer.GetIndexer()),
			pods:        f.Core().V1().Pods().Lister(),
		}
		c.synced = append(c.synced, rsInformer.HasSynced, podInformer.HasSynced)
		c.factories = append(c.factories, f)
	}

	nf := informers.NewSharedInformerFactory(cfg.Client, 0)
	c.nodeInformer = nf.Core().V1().Nodes().Informer()
	if _, err := c.nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.nodeChanged,
		UpdateFunc: func(_, obj any) { c.nodeChanged(obj) },
	}); err != nil {
		return nil, fmt.Errorf("replicasim: watching Nodes: %w", err)
	}
	c.nodes = nf.Core().V1().Nodes().Lister()
	c.synced = append(c.synced, c.nodeInformer.HasSynced)
	c.factories = append(c.factories, nf)
	return c, nil
}

// Run manages the ReplicaSets until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	defer func() {
		for _, f := range c.factories {
			f.Shutdown()
		}
	}()
	c.log.Info("replicasim starting", zap.Strings("namespaces", c.cfg.Namespaces), zap.String("selector", c.cfg.Selector), zap.Int("workers", c.cfg.Workers))
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("replicasim: ReplicaSet, Pod and Node caches did not sync before the context ended (can the client list and watch them?): %w", context.Cause(ctx))
	}
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Add(1)
		go func() { defer wg.Done(); c.worker(ctx) }()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) worker(ctx context.Context) {
	for {
		key, quit := c.queue.Get()
		if quit {
			return
		}
		err := c.sync(ctx, key)
		switch {
		case err == nil:
			c.queue.Forget(key)
		case ctx.Err() != nil:
		default:
			c.log.Warn("syncing ReplicaSet; will retry", zap.String("namespace", key.Namespace), zap.String("replicaSet", key.Name),
				zap.Int("retries", c.queue.NumRequeues(key)), zap.Error(err))
			c.queue.AddRateLimited(key)
		}
		c.queue.Done(key)
	}
}

func (c *Controller) scope(namespace string) *scope {
	if s, ok := c.scopes[metav1.NamespaceAll]; ok {
		return s
	}
	return c.scopes[namespace]
}

func (c *Controller) enqueueReplicaSet(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if key, err := cache.ObjectToName(obj); err == nil {
		c.queue.Add(key)
	}
}

// owner is the ReplicaSet that controls pod, if any.
func owner(pod *corev1.Pod) (cache.ObjectName, bool) {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil || ref.Kind != controllerKind.Kind || ref.APIVersion != controllerKind.GroupVersion().String() {
		return cache.ObjectName{}, false
	}
	return cache.NewObjectName(pod.Namespace, ref.Name), true
}

func (c *Controller) podAdded(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key, ok := owner(pod)
	if !ok {
		return
	}
	if pod.DeletionTimestamp != nil {
		// Seen first while terminating (a relist): gone as far as counts go.
		c.expectations.deletionObserved(key, pod.Name)
	} else {
		c.expectations.creationObserved(key)
	}
	c.queue.Add(key)
}

func (c *Controller) podUpdated(oldObj, newObj any) {
	old, ok1 := oldObj.(*corev1.Pod)
	cur, ok2 := newObj.(*corev1.Pod)
	if !ok1 || !ok2 || old.ResourceVersion == cur.ResourceVersion {
		return
	}
	oldKey, hadOwner := owner(old)
	key, hasOwner := owner(cur)
	if hadOwner && (!hasOwner || oldKey != key) {
		c.queue.Add(oldKey)
	}
	if !hasOwner {
		return
	}
	if cur.DeletionTimestamp != nil && old.DeletionTimestamp == nil {
		c.expectations.deletionObserved(key, cur.Name)
	}
	c.queue.Add(key)
}

func (c *Controller) podDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if key, ok := owner(pod); ok {
		c.expectations.deletionObserved(key, pod.Name)
		c.queue.Add(key)
	}
}

// nodeChanged wakes the ReplicaSets waiting for a node once one is
// schedulable; other node changes move no pod, as on a real cluster.
func (c *Controller) nodeChanged(obj any) {
	node, ok := obj.(*corev1.Node)
	if !ok || !schedulable(node, nil) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for key := range c.waiting {
		c.queue.Add(key)
	}
}

// setWaiting records whether the ReplicaSet key waits for a node, and logs
// when that changes, not on every sync.
func (c *Controller) setWaiting(key cache.ObjectName, waiting bool, missing int) {
	c.mu.Lock()
	was := c.waiting[key]
	if waiting {
		c.waiting[key] = true
	} else {
		delete(c.waiting, key)
	}
	c.mu.Unlock()
	switch {
	case waiting && !was:
		c.log.Warn("no node can take the ReplicaSet's pods (every node is NotReady, cordoned, tainted NoSchedule or NoExecute, or outside the pod template's nodeSelector); waiting for one",
			zap.String("namespace", key.Namespace), zap.String("replicaSet", key.Name), zap.Int("missing", missing))
	case !waiting && was:
		c.log.Info("a node can take the ReplicaSet's pods again", zap.String("namespace", key.Namespace), zap.String("replicaSet", key.Name), zap.Int("missing", missing))
	}
}
