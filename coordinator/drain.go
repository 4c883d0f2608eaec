package coordinator

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
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
	"github.com/tokenroll/tokenroll/protocol"
)

// Drainer empties nodes through the eviction API.
type Drainer interface {
	// Drain evicts every pod on node except DaemonSet and mirror pods,
	// honouring PodDisruptionBudgets, and waits until they are gone.
	Drain(ctx context.Context, node string, opts DrainOptions) error
	// Evict evicts the given pods the same way.
	Evict(ctx context.Context, pods []corev1.Pod, opts DrainOptions) error
}

// DrainOptions say how one drain (or one node's evictions) runs: the
// coordinator's flags, or what the node's RolloutPolicy says (spec.drain).
type DrainOptions struct {
	// Timeout bounds the call.
	Timeout time.Duration
	// GracePeriodSeconds overrides each pod's
	// terminationGracePeriodSeconds (nil: the pod's own).
	GracePeriodSeconds *int64
	// EvictUnmanaged lets a drain evict pods no controller recreates,
	// whatever the drainer's own setting (--drain-force).
	EvictUnmanaged bool
	// ForceDelete selects the pods a drain deletes outright when their
	// eviction is still refused at the timeout (a PodDisruptionBudget),
	// instead of failing; none: every pod must be evicted.
	ForceDelete []protocol.PodSelector
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

func (d KubectlDrainer) helper(ctx context.Context, opts DrainOptions) *drain.Helper {
	out := zapWriter{log: d.Log}
	grace := -1
	if opts.GracePeriodSeconds != nil {
		grace = int(*opts.GracePeriodSeconds)
	}
	return &drain.Helper{
		Ctx: ctx, Client: d.Client, Force: d.Force || opts.EvictUnmanaged, IgnoreAllDaemonSets: true, DeleteEmptyDirData: true,
		GracePeriodSeconds: grace, Timeout: opts.Timeout, Out: out, ErrOut: out,
	}
}

// Drain implements Drainer: kubectl's choice of pods (its filters for
// DaemonSet, mirror, unreplicated and emptyDir pods), then evict.
func (d KubectlDrainer) Drain(ctx context.Context, node string, opts DrainOptions) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	h := d.helper(ctx, opts)
	list, errs := h.GetPodsForDeletion(node)
	if len(errs) > 0 {
		return utilerrors.NewAggregate(errs)
	}
	if w := list.Warnings(); w != "" {
		_, _ = fmt.Fprintf(h.ErrOut, "WARNING: %s\n", w)
	}
	return d.evict(parent, ctx, h, list.Pods(), opts)
}

// Evict implements Drainer.
func (d KubectlDrainer) Evict(ctx context.Context, pods []corev1.Pod, opts DrainOptions) error {
	if len(pods) == 0 {
		return nil
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	return d.evict(parent, ctx, d.helper(ctx, opts), pods, opts)
}

// evictRetry is how long a refused eviction (a PodDisruptionBudget) waits
// before it is tried again, as kubectl drain waits.
const evictRetry = 5 * time.Second

// forceDeleteWait bounds the deletions of the pods whose evictions were
// still refused at the timeout and that DrainOptions.ForceDelete selects:
// well inside drainerGrace, which the coordinator allows a drainer past
// its timeout.
const forceDeleteWait = 15 * time.Second

// evict evicts pods (all on one node) with the library's EvictPod and waits
// until they are gone. It differs from kubectl's DeleteOrEvictPods in its API
// requests only: no discovery request per drain (policy/v1 Eviction is
// served since Kubernetes 1.22), and one watch of the node's pods instead of
// a GET per pod every second, which also ends the wait the moment the last
// pod goes (test/coordbench counts the requests). Each pod is asked once
// in turn, then those refused (a PodDisruptionBudget) again every
// evictRetry until ctx (the timeout) ends; those still refused then are
// deleted when opts.ForceDelete selects them, through parent, and the
// drain fails on any other.
func (d KubectlDrainer) evict(parent, ctx context.Context, h *drain.Helper, pods []corev1.Pod, opts DrainOptions) error {
	if len(pods) == 0 {
		return nil
	}
	pending := pods
	waitCtx := ctx
	// refused says why each pod still waits (its last refusal): a
	// timeout names it, whenever it strikes.
	refused := map[types.UID]error{}
	for {
		var still []corev1.Pod
		for _, p := range pending {
			if _, again := refused[p.UID]; !again {
				_, _ = fmt.Fprintf(h.Out, "evicting pod %s/%s\n", p.Namespace, p.Name)
			}
			var refusal error
			err := d.Retry.Do(ctx, func(context.Context) error {
				err := h.EvictPod(p, policyv1.SchemeGroupVersion)
				if apierrors.IsTooManyRequests(err) {
					refusal = err
					return nil
				}
				return err
			})
			if err == nil {
				err = refusal
			}
			switch {
			case err == nil || apierrors.IsNotFound(err):
				delete(refused, p.UID)
			case apierrors.IsTooManyRequests(err):
				refused[p.UID] = err
				still = append(still, p)
			case ctx.Err() != nil:
				// The timeout struck during the call: client-go itself
				// waits out a refusal's Retry-After, so that a refused
				// eviction often ends this way rather than with a 429.
				if refused[p.UID] == nil {
					refused[p.UID] = err
				}
				still = append(still, p)
			default:
				return fmt.Errorf("evicting pod %s/%s: %w", p.Namespace, p.Name, err)
			}
		}
		if len(still) == 0 {
			break
		}
		for _, p := range still {
			_, _ = fmt.Fprintf(h.ErrOut, "error when evicting pods/%q -n %q (will retry after %v): %v\n", p.Name, p.Namespace, evictRetry, refused[p.UID])
		}
		if ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(evictRetry):
			}
		}
		if ctx.Err() == nil {
			pending = still
			continue
		}
		if parent.Err() != nil || len(opts.ForceDelete) == 0 {
			return evictTimedOut(still[0], refused[still[0].UID], ctx.Err())
		}
		if err := d.forceDelete(parent, h, still, refused, opts); err != nil {
			return err
		}
		pods = slices.DeleteFunc(slices.Clone(pods), func(p corev1.Pod) bool {
			return slices.ContainsFunc(still, func(s corev1.Pod) bool { return s.UID == p.UID })
		})
		// The pods evicted meanwhile may still be going.
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(parent, forceDeleteWait)
		defer cancel()
		break
	}
	if len(pods) == 0 {
		return nil
	}
	if err := d.waitGone(waitCtx, pods); err != nil {
		if waitCtx.Err() != nil {
			err = waitCtx.Err() // the watch's own error does not say it timed out
		}
		return fmt.Errorf("waiting for the evicted pods to go: %w", err)
	}
	return nil
}

// forceDelete deletes the pods whose evictions were still refused at the
// timeout, when opts.ForceDelete selects every one of them; else the drain
// fails, naming the first pod it may not delete. A deleted pod is not
// waited for: its node's action (a reboot) ends it if its grace period
// has not.
func (d KubectlDrainer) forceDelete(parent context.Context, h *drain.Helper, pods []corev1.Pod, refused map[types.UID]error, opts DrainOptions) error {
	ctx, cancel := context.WithTimeout(parent, forceDeleteWait)
	defer cancel()
	sel, err := compileForceDelete(opts.ForceDelete)
	if err != nil {
		return err
	}
	nsLabels := map[string]labels.Set{}
	for _, p := range pods {
		ok, err := sel.matches(ctx, d.Client, &p, nsLabels)
		if err != nil {
			return err
		}
		if !ok {
			return evictTimedOut(p, refused[p.UID], context.DeadlineExceeded)
		}
	}
	for _, p := range pods {
		_, _ = fmt.Fprintf(h.Out, "deleting pod %s/%s: its eviction was still refused at the timeout (%v), and the drain options allow its deletion\n", p.Namespace, p.Name, refused[p.UID])
		del := metav1.DeleteOptions{GracePeriodSeconds: opts.GracePeriodSeconds, Preconditions: &metav1.Preconditions{UID: &p.UID}}
		err := d.Retry.Do(ctx, func(ctx context.Context) error { return d.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, del) })
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("deleting pod %s/%s, whose eviction was still refused at the timeout: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// evictTimedOut says that p was not evicted by the timeout (ctxErr), and
// why when the API server said: its last refusal.
func evictTimedOut(p corev1.Pod, last, ctxErr error) error {
	if apierrors.IsTooManyRequests(last) {
		return fmt.Errorf("evicting pod %s/%s: global timeout reached while the eviction was refused (%s): %w", p.Namespace, p.Name, last.Error(), ctxErr)
	}
	return fmt.Errorf("evicting pod %s/%s: %w", p.Namespace, p.Name, ctxErr)
}

// podSelectors are DrainOptions.ForceDelete compiled.
type podSelectors []struct{ pods, namespaces labels.Selector }

func compileForceDelete(in []protocol.PodSelector) (podSelectors, error) {
	out := make(podSelectors, 0, len(in))
	for _, s := range in {
		var c struct{ pods, namespaces labels.Selector }
		var err error
		if c.pods, err = labels.Parse(s.Pods); err != nil {
			return nil, fmt.Errorf("the drain's forceDeletePods selector %q: %w", s.Pods, err)
		}
		if s.Namespaces != "" {
			if c.namespaces, err = labels.Parse(s.Namespaces); err != nil {
				return nil, fmt.Errorf("the drain's forceDeletePods namespace selector %q: %w", s.Namespaces, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// matches reports whether any selector selects p; a namespace's labels are
// read once (kept in nsLabels).
func (ss podSelectors) matches(ctx context.Context, client kubernetes.Interface, p *corev1.Pod, nsLabels map[string]labels.Set) (bool, error) {
	for _, s := range ss {
		if !s.pods.Matches(labels.Set(p.Labels)) {
			continue
		}
		if s.namespaces != nil {
			l, ok := nsLabels[p.Namespace]
			if !ok {
				ns, err := client.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
				if err != nil {
					return false, fmt.Errorf("reading namespace %s's labels for the drain's forceDeletePods: %w", p.Namespace, err)
				}
				l = ns.Labels
				nsLabels[p.Namespace] = l
			}
			if !s.namespaces.Matches(l) {
				continue
			}
		}
		return true, nil
	}
	return false, nil
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
