package actions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/protocol"
)

// DefaultRebootSentinel is the Debian/Ubuntu file that says a reboot is
// required (the convention kured follows).
const DefaultRebootSentinel = "/var/run/reboot-required"

// NodeReporter writes statuses as an annotation on the agent's own Node.
type NodeReporter struct {
	Client   nodeclient.Nodes
	NodeName string
}

// Report patches the status annotation.
func (r NodeReporter) Report(ctx context.Context, s protocol.Status) error {
	value, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return patchAnnotation(ctx, r.Client, r.NodeName, protocol.AnnotationStatus, string(value))
}

// patchAnnotation sets (or, for "", removes) one annotation on one Node with
// a JSON merge patch: nothing else on the Node is touched.
func patchAnnotation(ctx context.Context, client nodeclient.Nodes, node, key, value string) error {
	var v any = value
	if value == "" {
		v = nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: v}}})
	if err != nil {
		return err
	}
	_, err = client.Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tokenroll-agent"})
	return err
}

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Client lists, watches and patches the Node. A fake that cannot serve
	// watch-list semantics says so as the fake clientset does, with
	// IsWatchListSemanticsUnSupported.
	Client   nodeclient.Nodes
	NodeName string
	Handler  *Handler
	// RebootSentinel is checked every SentinelInterval; empty disables it.
	RebootSentinel   string
	SentinelInterval time.Duration
	Log              *zap.Logger
	Clock            clock.WithTicker

	// OnNode, when set, is told of every version of the Node the informer
	// sees (nil when it is deleted), so the agent's reporter notices its
	// writes removed or the Node registered again. It must not block.
	OnNode func(*corev1.Node)
}

// Retries of a failed Handle or sentinel write back off exponentially
// between these delays, without waiting for the Node to change.
const (
	retryBaseDelay = 100 * time.Millisecond
	retryMaxDelay  = time.Minute
)

// work is what the watcher's queue holds.
type work string

const (
	// workRequest: hand the Node's request and status to the Handler.
	workRequest work = "request"
	// workSentinel: bring the reboot-required annotation in step.
	workSentinel work = "reboot-sentinel"
)

// Watcher watches only its own Node (a field selector on its name) and
// hands every change to the Handler, one at a time, through a rate-limited
// queue that retries what failed.
type Watcher struct {
	cfg    WatcherConfig
	synced chan struct{}
	// queue is made by Run before Synced is closed.
	queue workqueue.TypedRateLimitingInterface[work]
}

// NewWatcher checks cfg.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Handler == nil {
		return nil, errors.New("actions: watcher needs a client, a node name and a handler")
	}
	if cfg.SentinelInterval <= 0 {
		cfg.SentinelInterval = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Watcher{cfg: cfg, synced: make(chan struct{})}, nil
}

// Synced is closed once the watcher has seen its Node.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }

// Run handles the Node's requests until ctx ends. A Watcher runs once.
func (w *Watcher) Run(ctx context.Context) error {
	informer := w.newInformer()
	lister := corelisters.NewNodeLister(informer.GetIndexer())
	w.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[work](retryBaseDelay, retryMaxDelay),
		workqueue.TypedRateLimitingQueueConfig[work]{Clock: w.cfg.Clock})
	defer w.queue.ShutDown()
	enqueue := func(any) { w.queue.Add(workRequest) }
	notify := func(obj any) {
		if w.cfg.OnNode != nil {
			n, _ := obj.(*corev1.Node)
			w.cfg.OnNode(n)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(n any) { enqueue(n); notify(n) },
		UpdateFunc: func(_, n any) { enqueue(n); notify(n) },
		DeleteFunc: func(n any) { enqueue(n); notify(nil) },
	}); err != nil {
		return err
	}
	informerCtx, stopInformer := context.WithCancel(ctx)
	informerDone := make(chan struct{})
	go func() { defer close(informerDone); informer.RunWithContext(informerCtx) }()
	defer func() { stopInformer(); <-informerDone }()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil // stopped before the first list finished
	}
	close(w.synced)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.processNext(ctx, lister) {
		}
	}()
	// The queue stops the worker: shut it down before waiting for it.
	defer func() { w.queue.ShutDown(); <-done }()

	if w.cfg.RebootSentinel == "" {
		<-ctx.Done()
		return nil
	}
	w.queue.Add(workSentinel)
	tick := w.cfg.Clock.NewTicker(w.cfg.SentinelInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			w.queue.Add(workSentinel)
		}
	}
}

// newInformer lists and watches only this agent's Node. It is built from
// the Node client rather than an informer factory: the factory's
// package links an informer and a lister for every API group, which the
// agent's resident memory pays for. The client decides, as in the factory,
// whether the reflector may use watch-list semantics (fakes opt out).
func (w *Watcher) newInformer() cache.SharedIndexInformer {
	nodes := w.cfg.Client
	selector := func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + w.cfg.NodeName }
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			selector(&o)
			return nodes.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			selector(&o)
			return nodes.Watch(ctx, o)
		},
	}, w.cfg.Client)
	return cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
}

// processNext does one item of work; a failure is retried after a delay
// that grows with each failure, a success forgets them.
func (w *Watcher) processNext(ctx context.Context, lister corelisters.NodeLister) bool {
	item, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(item)
	err := w.sync(ctx, lister, item)
	switch {
	case err == nil:
		w.queue.Forget(item)
	case ctx.Err() != nil:
		// Stopping: the next agent starts from the Node and its record.
	default:
		w.cfg.Log.Error("handling the node's "+string(item)+"; retrying", zap.String("node", w.cfg.NodeName),
			zap.Int("retries", w.queue.NumRequeues(item)), zap.Error(err))
		w.queue.AddRateLimited(item)
	}
	return true
}

func (w *Watcher) sync(ctx context.Context, lister corelisters.NodeLister, item work) error {
	n, err := lister.Get(w.cfg.NodeName)
	if apierrors.IsNotFound(err) {
		// Deleted: nothing to act on, and nowhere to report. Its return
		// is an event of its own.
		w.cfg.Log.Warn("this agent's Node is not in the cache", zap.String("node", w.cfg.NodeName))
		return nil
	}
	if err != nil {
		return err
	}
	switch item {
	case workRequest:
		return w.cfg.Handler.Handle(ctx, n.Annotations[protocol.AnnotationRequest], n.Annotations[protocol.AnnotationStatus])
	case workSentinel:
		return w.checkSentinel(ctx, n)
	}
	return nil
}

// checkSentinel keeps the reboot-required annotation in step with the
// sentinel file, writing only on change.
func (w *Watcher) checkSentinel(ctx context.Context, n *corev1.Node) error {
	_, err := os.Stat(w.cfg.RebootSentinel)
	want := ""
	switch {
	case err == nil:
		want = protocol.RebootRequiredValue()
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("checking the reboot sentinel %s: %w", w.cfg.RebootSentinel, err)
	}
	if n.Annotations[protocol.AnnotationRebootRequired] == want {
		return nil
	}
	if err := patchAnnotation(ctx, w.cfg.Client, w.cfg.NodeName, protocol.AnnotationRebootRequired, want); err != nil {
		return fmt.Errorf("reporting reboot-required on node %s: %w", w.cfg.NodeName, err)
	}
	w.cfg.Log.Info("reboot required changed", zap.String("node", w.cfg.NodeName), zap.Bool("required", want != ""), zap.String("sentinel", w.cfg.RebootSentinel))
	return nil
}
