package coordinator

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/kubectl/pkg/drain"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/apiretry"
)

// Drainer empties nodes through the eviction API.
type Drainer interface {
	// Drain evicts every pod on node except DaemonSet and mirror pods,
	// honouring PodDisruptionBudgets, and waits until they are gone.
	Drain(ctx context.Context, node string, timeout time.Duration) error
	// Evict evicts the given pods the same way.
	Evict(ctx context.Context, pods []corev1.Pod, timeout time.Duration) error
}

// A Drainer's error wraps context.DeadlineExceeded when its timeout passed,
// so the rollout halts with DrainTimeout rather than DrainFailed.

// drainerGrace is how long past its timeout a Drainer's call may take to
// return before the coordinator stops waiting for it.
const drainerGrace = 30 * time.Second

// boundedDrain runs call (a Drainer's) and returns its error, but stops
// waiting once ctx ends or the call has outlived its timeout by
// drainerGrace: a Drainer that ignores its context must neither hold its
// node in progress forever nor keep a leader's term from ending. Such a
// call is left running behind (nothing stops a goroutine), and its late
// result is dropped.
func boundedDrain(ctx context.Context, clk clock.Clock, timeout time.Duration, call func(context.Context) error) error {
	// The timer first: once call runs, the deadline is armed.
	timer := clk.NewTimer(timeout + drainerGrace)
	defer timer.Stop()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("stopped waiting for the drain: %w", ctx.Err())
	case <-timer.C():
		return fmt.Errorf("the drainer had not returned %s after its timeout of %s, ignoring its context; it was left running and the node is halted: %w",
			drainerGrace, timeout, context.DeadlineExceeded)
	}
}

// KubectlDrainer drains with k8s.io/kubectl/pkg/drain, as `kubectl drain`
// does.
type KubectlDrainer struct {
	Client kubernetes.Interface
	// Force evicts pods no controller will recreate; without it such a pod
	// fails the drain (nothing is lost unasked).
	Force bool
	Log   *zap.Logger
	// Retry carries each eviction through the API server's transient
	// faults (zero: one try). A 429 from the eviction API is a
	// PodDisruptionBudget's refusal, waited out apart, until the timeout.
	Retry apiretry.Policy
}

func (d KubectlDrainer) helper(ctx context.Context, timeout time.Duration) *drain.Helper {
	out := zapWriter{log: d.Log}
	return &drain.Helper{
		Ctx: ctx, Client: d.Client, Force: d.Force, IgnoreAllDaemonSets: true, DeleteEmptyDirData: true,
		GracePeriodSeconds: -1, Timeout: timeout, Out: out, ErrOut: out,
	}
}

// Drain implements Drainer: kubectl's choice of pods (its filters for
// DaemonSet, mirror, unreplicated and emptyDir pods), then evict.
func (d KubectlDrainer) Drain(ctx context.Context, node string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	h := d.helper(ctx, timeout)
	list, errs := h.GetPodsForDeletion(node)
	if len(errs) > 0 {
		return utilerrors.NewAggregate(errs)
	}
	if w := list.Warnings(); w != "" {
		_, _ = fmt.Fprintf(h.ErrOut, "WARNING: %s\n", w)
	}
	return d.evict(ctx, h, list.Pods())
}

// Evict implements Drainer.
func (d KubectlDrainer) Evict(ctx context.Context, pods []corev1.Pod, timeout time.Duration) error {
	if len(pods) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return d.evict(ctx, d.helper(ctx, timeout), pods)
}

// evictRetry is how long a refused eviction (a PodDisruptionBudget) waits
// before it is tried again, as kubectl drain waits.
const evictRetry = 5 * time.Second

// evict evicts pods (all on one node) with the library's EvictPod and waits
// until they are gone. It differs from kubectl's DeleteOrEvictPods in its API
// requests only: no discovery request per drain (policy/v1 Eviction is
// served since Kubernetes 1.22), and one watch of the node's pods instead of
// a GET per pod every second, which also ends the wait the moment the last
// pod goes (test/coordbench counts the requests).
func (d KubectlDrainer) evict(ctx context.Context, h *drain.Helper, pods []corev1.Pod) error {
	if len(pods) == 0 {
		return nil
	}
	for _, p := range pods {
		_, _ = fmt.Fprintf(h.Out, "evicting pod %s/%s\n", p.Namespace, p.Name)
		// The last refusal says why the eviction waits (a
		// PodDisruptionBudget): a timeout names it, whenever it strikes.
		var lastRefused error
		for {
			var refused error
			err := d.Retry.Do(ctx, func(context.Context) error {
				err := h.EvictPod(p, policyv1.SchemeGroupVersion)
				if apierrors.IsTooManyRequests(err) {
					refused = err
					return nil
				}
				return err
			})
			if err == nil {
				err = refused
			}
			if err == nil || apierrors.IsNotFound(err) {
				break
			}
			if apierrors.IsTooManyRequests(err) {
				lastRefused = err
			}
			if !apierrors.IsTooManyRequests(err) && (lastRefused == nil || ctx.Err() == nil) {
				return fmt.Errorf("evicting pod %s/%s: %w", p.Namespace, p.Name, err)
			}
			_, _ = fmt.Fprintf(h.ErrOut, "error when evicting pods/%q -n %q (will retry after %v): %v\n", p.Name, p.Namespace, evictRetry, err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("evicting pod %s/%s: global timeout reached while the eviction was refused (%s): %w", p.Namespace, p.Name, lastRefused.Error(), ctx.Err())
			case <-time.After(evictRetry):
			}
		}
	}
	if err := d.waitGone(ctx, pods); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err() // the watch's own error does not say it timed out
		}
		return fmt.Errorf("waiting for the evicted pods to go: %w", err)
	}
	return nil
}

// waitGone watches the pods' node until none of pods is left.
func (d KubectlDrainer) waitGone(ctx context.Context, pods []corev1.Pod) error {
	want := make(map[types.UID]bool, len(pods))
	for _, p := range pods {
		want[p.UID] = true
	}
	onNode := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", pods[0].Spec.NodeName).String()
	}
	// A client that cannot stream the initial list (the fake clientset)
	// says so; the reflector then lists instead of waiting for a bookmark.
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			onNode(&o)
			return d.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			onNode(&o)
			return d.Client.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
		},
	}, d.Client)
	var store cache.Store
	gone := func() bool {
		for _, o := range store.List() {
			if p, ok := o.(*corev1.Pod); ok && want[p.UID] {
				return false
			}
		}
		return true
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{},
		func(s cache.Store) (bool, error) { store = s; return gone(), nil },
		func(watch.Event) (bool, error) { return gone(), nil })
	return err
}

// zapWriter sends the drain library's progress lines to the log.
type zapWriter struct{ log *zap.Logger }

func (w zapWriter) Write(p []byte) (int, error) {
	if w.log != nil {
		for line := range strings.SplitSeq(strings.TrimSpace(string(p)), "\n") {
			if line != "" {
				w.log.Info("drain", zap.String("detail", line))
			}
		}
	}
	return len(p), nil
}

var _ io.Writer = zapWriter{}
