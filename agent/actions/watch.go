package actions

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/protocol"
)

// DefaultRebootSentinel is the Debian/Ubuntu file that says a reboot is
// required (the convention kured follows).
const DefaultRebootSentinel = "/var/run/reboot-required"

// NodeReporter writes statuses as an annotation on the agent's own Node.
type NodeReporter struct {
	Client   kubernetes.Interface
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
func patchAnnotation(ctx context.Context, client kubernetes.Interface, node, key, value string) error {
	var v any = value
	if value == "" {
		v = nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: v}}})
	if err != nil {
		return err
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tokenroll-agent"})
	return err
}

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	Client   kubernetes.Interface
	NodeName string
	Handler  *Handler
	// RebootSentinel is checked every SentinelInterval; empty disables it.
	RebootSentinel   string
	SentinelInterval time.Duration
	Log              *zap.Logger
	Clock            clock.WithTicker
}

// Watcher watches only its own Node (a field selector on its name) and
// hands every change to the Handler, one at a time.
type Watcher struct {
	cfg    WatcherConfig
	synced chan struct{}
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

// Run handles the Node's requests until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(w.cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + w.cfg.NodeName
	}))
	informer := factory.Core().V1().Nodes().Informer()
	lister := factory.Core().V1().Nodes().Lister()
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }, DeleteFunc: poke,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil // stopped before the first list finished
	}
	close(w.synced)
	tick := w.cfg.Clock.NewTicker(w.cfg.SentinelInterval)
	defer tick.Stop()
	get := func() *corev1.Node {
		n, err := lister.Get(w.cfg.NodeName)
		if err != nil {
			w.cfg.Log.Warn("this agent's Node is not in the cache", zap.String("node", w.cfg.NodeName), zap.Error(err))
			return nil
		}
		return n
	}
	if n := get(); n != nil {
		w.checkSentinel(ctx, n)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			if n := get(); n != nil {
				w.checkSentinel(ctx, n)
			}
		case <-kick:
			n := get()
			if n == nil {
				continue
			}
			if err := w.cfg.Handler.Handle(ctx, n.Annotations[protocol.AnnotationRequest], n.Annotations[protocol.AnnotationStatus]); err != nil && ctx.Err() == nil {
				w.cfg.Log.Error("handling the node's request", zap.String("node", w.cfg.NodeName), zap.Error(err))
			}
		}
	}
}

// checkSentinel keeps the reboot-required annotation in step with the
// sentinel file, writing only on change.
func (w *Watcher) checkSentinel(ctx context.Context, n *corev1.Node) {
	if w.cfg.RebootSentinel == "" {
		return
	}
	_, err := os.Stat(w.cfg.RebootSentinel)
	want := ""
	switch {
	case err == nil:
		want = "true"
	case !errors.Is(err, fs.ErrNotExist):
		w.cfg.Log.Warn("checking the reboot sentinel", zap.String("file", w.cfg.RebootSentinel), zap.Error(err))
		return
	}
	if n.Annotations[protocol.AnnotationRebootRequired] == want {
		return
	}
	if err := patchAnnotation(ctx, w.cfg.Client, w.cfg.NodeName, protocol.AnnotationRebootRequired, want); err != nil {
		w.cfg.Log.Warn("reporting reboot-required", zap.Error(err))
		return
	}
	w.cfg.Log.Info("reboot required changed", zap.String("node", w.cfg.NodeName), zap.Bool("required", want != ""), zap.String("sentinel", w.cfg.RebootSentinel))
}
