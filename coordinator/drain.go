package coordinator

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/drain"
)

// Drainer empties nodes through the eviction API.
type Drainer interface {
	// Drain evicts every pod on node except DaemonSet and mirror pods,
	// honouring PodDisruptionBudgets, and waits until they are gone.
	Drain(ctx context.Context, node string, timeout time.Duration) error
	// Evict evicts the given pods the same way.
	Evict(ctx context.Context, pods []corev1.Pod, timeout time.Duration) error
}

// KubectlDrainer drains with k8s.io/kubectl/pkg/drain, as `kubectl drain`
// does.
type KubectlDrainer struct {
	Client kubernetes.Interface
	// Force evicts pods no controller will recreate; without it such a pod
	// fails the drain (nothing is lost unasked).
	Force bool
	Log   *zap.Logger
}

func (d KubectlDrainer) helper(ctx context.Context, timeout time.Duration) *drain.Helper {
	out := zapWriter{log: d.Log}
	return &drain.Helper{
		Ctx: ctx, Client: d.Client, Force: d.Force, IgnoreAllDaemonSets: true, DeleteEmptyDirData: true,
		GracePeriodSeconds: -1, Timeout: timeout, Out: out, ErrOut: out,
	}
}

// Drain implements Drainer.
func (d KubectlDrainer) Drain(ctx context.Context, node string, timeout time.Duration) error {
	return drain.RunNodeDrain(d.helper(ctx, timeout), node)
}

// Evict implements Drainer.
func (d KubectlDrainer) Evict(ctx context.Context, pods []corev1.Pod, timeout time.Duration) error {
	if len(pods) == 0 {
		return nil
	}
	return d.helper(ctx, timeout).DeleteOrEvictPods(pods)
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

// isTimeout tells the drain library's global timeout from other failures.
func isTimeout(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "global timeout reached") || strings.Contains(err.Error(), context.DeadlineExceeded.Error()))
}

func drainError(node string, err error) error {
	return fmt.Errorf("draining node %s: %w", node, err)
}
