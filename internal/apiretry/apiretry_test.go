package apiretry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/apiretry/apiretrytest"
)

var nodes = corev1.Resource("nodes")

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"500", apierrors.NewInternalError(errors.New("etcdserver: leader changed")), true},
		{"503", apierrors.NewServiceUnavailable("the server is shutting down"), true},
		{"429", apierrors.NewTooManyRequests("slow down", 3), true},
		{"504", apierrors.NewTimeoutError("request timed out", 0), true},
		{"server timeout", apierrors.NewServerTimeout(nodes, "patch", 1), true},
		{"502 from a proxy", apierrors.NewGenericServerResponse(502, "PATCH", nodes, "n1", "bad gateway", 0, true), true},
		{"attempt deadline", &url.Error{Op: "Patch", URL: "https://api/api/v1/nodes/n1", Err: context.DeadlineExceeded}, true},
		{"connection refused", &url.Error{Op: "Patch", URL: "https://api", Err: syscall.ECONNREFUSED}, true},
		{"connection reset", &url.Error{Op: "Patch", URL: "https://api", Err: syscall.ECONNRESET}, true},
		{"EOF", &url.Error{Op: "Patch", URL: "https://api", Err: io.EOF}, true},
		{"wrapped 500", fmt.Errorf("updating node n1: %w", apierrors.NewInternalError(errors.New("boom"))), true},
		{"409", apierrors.NewConflict(nodes, "n1", errors.New("the object has been modified")), false},
		{"403", apierrors.NewForbidden(nodes, "n1", errors.New("denied")), false},
		{"404", apierrors.NewNotFound(nodes, "n1"), false},
		{"422", apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Node").GroupKind(), "n1", nil), false},
		{"cancelled", context.Canceled, false},
		{"nil", nil, false},
	} {
		if got := apiretry.Transient(c.err); got != c.want {
			t.Errorf("Transient(%s: %v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

func policy(clk *apiretrytest.Clock) apiretry.Policy {
	return apiretry.Policy{Backoff: wait.Backoff{Duration: time.Second, Factor: 2, Steps: 4, Cap: 3 * time.Second},
		MaxRetryAfter: 20 * time.Second, Clock: clk}
}

// Transient faults are retried on the backoff's schedule, a Retry-After
// stretches one wait (capped), and the write succeeds once they pass.
func TestDoRetriesTransientFaults(t *testing.T) {
	clk := apiretrytest.NewClock(time.Now())
	faults := []error{
		apierrors.NewInternalError(errors.New("boom")),
		apierrors.NewTooManyRequests("throttled", 7),
		apierrors.NewTooManyRequests("throttled", 600),
	}
	calls := 0
	err := policy(clk).Do(context.Background(), func(context.Context) error {
		calls++
		if calls <= len(faults) {
			return faults[calls-1]
		}
		return nil
	})
	if err != nil || calls != 4 {
		t.Fatalf("Do = %v after %d calls; want success on the 4th", err, calls)
	}
	if got, want := clk.Waits(), []time.Duration{time.Second, 7 * time.Second, 20 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v (backoff, then Retry-After 7s, then Retry-After capped at 20s)", got, want)
	}
}

// The effort is bounded: after Steps attempts the last error is returned,
// wrapped so that apierrors still recognises it, and saying so.
func TestDoGivesUpAfterSteps(t *testing.T) {
	clk := apiretrytest.NewClock(time.Now())
	calls := 0
	err := policy(clk).Do(context.Background(), func(context.Context) error {
		calls++
		return apierrors.NewServiceUnavailable("apiserver is shutting down")
	})
	if calls != 4 || !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("Do = %v after %d calls; want the 503 after 4", err, calls)
	}
	if want := "gave up after 4 attempts in 6s: "; err == nil || err.Error()[:len(want)] != want {
		t.Errorf("error %q does not say how hard it tried (%q)", err, want)
	}
	if got, want := clk.Waits(), []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v (doubling, capped at 3s)", got, want)
	}
}

// A policy of one try says so in the singular.
func TestDoGivesUpAfterOneAttempt(t *testing.T) {
	err := apiretry.Policy{Clock: apiretrytest.NewClock(time.Now())}.Do(context.Background(), func(context.Context) error {
		return apierrors.NewServiceUnavailable("apiserver is shutting down")
	})
	if want := "gave up after 1 attempt in 0s: "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q; want it to start %q", err, want)
	}
}

// What is not transient is returned at once, as is a transient fault when
// the caller's context has ended.
func TestDoStopsOnOtherErrors(t *testing.T) {
	clk := apiretrytest.NewClock(time.Now())
	conflict := apierrors.NewConflict(nodes, "n1", errors.New("modified"))
	calls := 0
	if err := policy(clk).Do(context.Background(), func(context.Context) error { calls++; return conflict }); !errors.Is(err, conflict) || calls != 1 {
		t.Errorf("a conflict: Do = %v after %d calls; want it back after 1", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	calls = 0
	err := policy(clk).Do(ctx, func(context.Context) error {
		calls++
		cancel()
		return apierrors.NewInternalError(errors.New("boom"))
	})
	if calls != 1 || !apierrors.IsInternalError(err) {
		t.Errorf("cancelled: Do = %v after %d calls; want the 500 after 1", err, calls)
	}
	if w := clk.Waits(); len(w) != 0 {
		t.Errorf("waited %v", w)
	}
}

// Each attempt has its own deadline: a request the server never answers
// ends as a timeout and is tried again.
func TestDoBoundsEachAttempt(t *testing.T) {
	clk := apiretrytest.NewClock(time.Now())
	p := policy(clk)
	p.AttemptTimeout = 10 * time.Millisecond
	calls := 0
	err := p.Do(context.Background(), func(ctx context.Context) error {
		calls++
		if calls == 1 {
			<-ctx.Done() // a hung request
			return ctx.Err()
		}
		return nil
	})
	if err != nil || calls != 2 {
		t.Errorf("Do = %v after %d calls; want success on the 2nd", err, calls)
	}
}
