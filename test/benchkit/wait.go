package benchkit

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenroll/tokenroll/sandbox/invariants"
)

// EveryNode reports whether ok holds for each of the named nodes in m (a
// node missing from m fails).
func EveryNode(m map[string]*corev1.Node, names []string, ok func(*corev1.Node) bool) bool {
	for _, name := range names {
		if n := m[name]; n == nil || !ok(n) {
			return false
		}
	}
	return true
}

// WaitFor waits, at most timeout, until cond holds on the nodes the checker
// sees; the error names what was waited for.
func WaitFor(ctx context.Context, checker *invariants.Checker, timeout time.Duration, what string, cond func(map[string]*corev1.Node) bool) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := checker.WaitFor(wctx, cond); err != nil {
		return fmt.Errorf("waiting until %s: %w (raise the log level to info to see why)", what, err)
	}
	return nil
}

// Sleep waits for d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
