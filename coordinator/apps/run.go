package apps

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
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
// new token, not for a reload period); a window longer than the ten minutes a reflector's watch may last
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

// Run follows every pod (FollowPods) and judges them every interval
// until ctx ends. Call it on the leader only.
func Run(ctx context.Context, rc RunConfig) error {
	if rc.Client == nil {
		return errNoClient
	}
	o := rc.Options
	d := NewDetector(Config{Grace: o.Grace, FailingGrace: o.FailingGrace, Window: o.Window, RepeatEvents: time.Hour, Clock: rc.Clock})
	synced, stop := FollowPods(ctx, rc.Client, d)
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
