// Package apiretry carries one API write through the API server's
// transient faults (5xx, 429, timeouts, a dropped connection) with a
// bounded, backed-off effort on an injected clock, so that a blip of the
// control plane neither halts a rollout nor loses an agent's report.
package apiretry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/plural"
)

// Policy is how hard one write is tried. The zero Policy tries once.
type Policy struct {
	// Backoff spaces the attempts; its Steps bounds them (at most Steps
	// attempts, at least one).
	Backoff wait.Backoff
	// AttemptTimeout bounds each attempt (0: only the caller's context), so
	// that a request the server never answers is a timeout, tried again.
	AttemptTimeout time.Duration
	// MaxRetryAfter caps the wait a server asks for with Retry-After (0:
	// no cap).
	MaxRetryAfter time.Duration
	// Clock waits between attempts (nil: the real clock).
	Clock clock.Clock
}

// Default is the policy of tokenroll's single writes: six attempts over
// about 16 s of waiting (0.5, 1, 2, 4, 8 s, with 10% jitter), each bounded
// by 30 s, honouring a Retry-After of up to 30 s. The OpenShift Machine
// Config Operator's drain controller gives a cordon five attempts, 10 s
// apart and doubling; tokenroll's writes are cheaper to repeat and its
// work queue retries a failed sync besides, so it starts sooner.
func Default() Policy {
	return Policy{
		Backoff:        wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 6, Cap: 8 * time.Second},
		AttemptTimeout: 30 * time.Second,
		MaxRetryAfter:  30 * time.Second,
		Clock:          clock.RealClock{},
	}
}

// Transient tells whether err is a fault another attempt may not meet: a
// server error (5xx), throttling (429), a timeout, or a connection the
// server dropped or refused (an API server restarting). A conflict is not
// transient: the object changed, and only the caller knows whether its
// write still holds.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsUnexpectedServerError(err) {
		return true
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		if code := status.Status().Code; code >= 500 || code == 429 {
			return true
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return utilnet.IsConnectionReset(err) || utilnet.IsConnectionRefused(err) || utilnet.IsProbableEOF(err)
}

// Do calls write until it succeeds, fails with an error that is not
// transient, ctx ends, or the policy's attempts are spent. Between
// attempts it waits the backoff's next step, or longer when the server
// asked for it (Retry-After, as client-go surfaces it). The error wraps the
// last attempt's, so apierrors' predicates still answer on it.
//
// The schedule is wait.Backoff's; the loop is here because wait's own loops
// wait on the real clock, and tests must not.
func (p Policy) Do(ctx context.Context, write func(context.Context) error) error {
	clk := p.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	steps := max(p.Backoff.Steps, 1)
	next := p.Backoff.DelayFunc()
	start := clk.Now()
	for attempt := 1; ; attempt++ {
		err := p.attempt(ctx, write)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil || !Transient(err):
			return err
		case attempt >= steps:
			return fmt.Errorf("gave up after %s in %s: %w", plural.Count(attempt, "attempt"), clk.Since(start).Round(time.Millisecond), err)
		}
		d := next()
		if s, ok := apierrors.SuggestsClientDelay(err); ok {
			asked := time.Duration(s) * time.Second
			if p.MaxRetryAfter > 0 {
				asked = min(asked, p.MaxRetryAfter)
			}
			d = max(d, asked)
		}
		select {
		case <-ctx.Done():
			return err
		case <-clk.After(d):
		}
	}
}

func (p Policy) attempt(ctx context.Context, write func(context.Context) error) error {
	if p.AttemptTimeout <= 0 {
		return write(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
	defer cancel()
	return write(actx)
}
