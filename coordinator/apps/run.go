package apps

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
)

// Options are app detection's settings, from the coordinator's flags.
type Options struct {
	// Grace is the detector's (Config.Grace); FailingGrace and Window
	// too.
	Grace, FailingGrace, Window time.Duration
	// Interval is how often every pod is judged and the result reported.
	Interval time.Duration
}

// DefaultOptions: a grace past client-go's one-minute reload of a token
// file; a failing grace of a few requests (client-go reads the file again
// on a 401, so a reloading app fails for one request past the kubelet's
// new token, not for a reload period); a window longer than the ten minutes an informer's watch may last
// without a new request.
func DefaultOptions() Options {
	return Options{Grace: 2 * time.Minute, FailingGrace: 30 * time.Second, Window: 15 * time.Minute, Interval: 10 * time.Second}
}

// Validate checks the options.
func (o Options) Validate() error {
	var errs []error
	if o.Grace <= time.Minute {
		errs = append(errs, errors.New("the grace must be longer than client-go's one-minute reload of a token file"))
	}
	if o.FailingGrace < 0 || o.FailingGrace > o.Grace {
		errs = append(errs, errors.New("the failing grace must be no longer than the grace (zero: the grace)"))
	}
	if o.Window <= o.Grace {
		errs = append(errs, errors.New("the window must be longer than the grace"))
	}
	if o.Interval <= 0 {
		errs = append(errs, errors.New("the interval must be positive"))
	}
	return errors.Join(errs...)
}

// RunConfig is one leadership term of app detection.
type RunConfig struct {
	Client    kubernetes.Interface
	Namespace string
	Options   Options
	Recorder  events.EventRecorder
	Metrics   *Metrics
	Log       *zap.Logger
	Clock     clock.WithTicker
	// Started is given the detector once its pods are read, so audit
	// sources can feed it; Stopped when the term ends.
	Started func(*Detector)
	Stopped func()
}

// Run follows every pod with an informer and judges them every interval
// until ctx ends. Call it on the leader only.
func Run(ctx context.Context, rc RunConfig) error {
	if rc.Client == nil {
		return errNoClient
	}
	o := rc.Options
	d := NewDetector(Config{Grace: o.Grace, FailingGrace: o.FailingGrace, Window: o.Window, RepeatEvents: time.Hour, Clock: rc.Clock})
	synced, stop, err := FollowPods(ctx, rc.Client, d)
	if err != nil {
		return err
	}
	defer stop()
	r := &Reporter{Client: rc.Client, Namespace: rc.Namespace, Recorder: rc.Recorder, Metrics: rc.Metrics, Log: rc.Log, Clock: rc.Clock,
		Grace: o.Grace, Window: o.Window, StatusInterval: 30 * time.Second, StatusRefresh: 5 * time.Minute,
		Limiter: flowcontrol.NewTokenBucketPassiveRateLimiterWithClock(5, 50, rc.Clock)}
	defer rc.Metrics.reset()
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		return ctx.Err()
	}
	rc.Log.Info("app detection: pods read", zap.Int("pods", d.Pods()))
	if rc.Started != nil {
		rc.Started(d)
	}
	if rc.Stopped != nil {
		defer rc.Stopped()
	}
	tk := rc.Clock.NewTicker(o.Interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C():
		}
		if err := r.Report(ctx, d.Evaluate()); err != nil && ctx.Err() == nil {
			rc.Log.Warn("app detection: reporting; retrying at the next evaluation", zap.Error(err))
		}
	}
}

// FollowPods starts an informer that gives d every pod of the cluster,
// trimmed to what the detector reads, until ctx ends or stop is called;
// synced tells when d has been given them all.
func FollowPods(ctx context.Context, client kubernetes.Interface, d *Detector) (synced cache.InformerSynced, stop func(), err error) {
	// Without the namespace index a factory's pod informer has: nothing
	// lists pods by namespace, and the index holds a key per pod.
	inf := coreinformers.NewPodInformer(client, metav1.NamespaceAll, 0, cache.Indexers{})
	if err := inf.SetTransform(TrimPod); err != nil {
		return nil, nil, err
	}
	set := func(obj any) {
		if p, ok := obj.(*cachedPod); ok {
			d.setPod(p.pod, p.ended)
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*cachedPod); ok {
				d.DeletePod(p.pod.UID)
			}
		},
	})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { inf.RunWithContext(ctx) })
	// The handler's, not the informer's: d holds every pod only once the
	// handler has been given them, after the informer's store.
	return reg.HasSynced, func() { cancel(); wg.Wait() }, nil
}
