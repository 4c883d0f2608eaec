package policy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

var when = time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)

// receiver records what it is posted, failing the first fail requests.
type receiver struct {
	mu     sync.Mutex
	fail   int
	bodies []string
	got    chan struct{}
}

func newReceiver(t *testing.T, fail int) (*receiver, *httptest.Server) {
	r := &receiver{fail: fail, got: make(chan struct{}, 100)}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if req.Header.Get("Content-Type") != "application/json" {
			t.Errorf("content type %q", req.Header.Get("Content-Type"))
		}
		if r.fail > 0 {
			r.fail--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		r.bodies = append(r.bodies, string(b))
		r.got <- struct{}{}
	}))
	t.Cleanup(s.Close)
	return r, s
}

func TestNotifierRetriesWithBackoff(t *testing.T) {
	rcv, srv := newReceiver(t, 2)
	clk := clocktesting.NewFakeClock(when)
	reg := prometheus.NewRegistry()
	n := NewNotifier(NotifierConfig{Clock: clk, Registry: reg, Backoff: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	n.Notify([]Target{{Policy: "workers", Name: "ops", URL: srv.URL, Format: v1alpha1.NotificationJSON}},
		Event{Type: v1alpha1.NotifyRolloutHalted, Rollout: "r-1", Policy: "workers", Node: "n1", Message: "DrainTimeout", Time: when})
	// Two failures: the second try waits 1 s, the third 2 s more.
	for _, step := range []time.Duration{time.Second, 2 * time.Second} {
		deadline := time.Now().Add(10 * time.Second)
		for !clk.HasWaiters() {
			if time.Now().After(deadline) {
				t.Fatal("the notifier never waited to retry")
			}
			time.Sleep(time.Millisecond)
		}
		clk.Step(step - time.Nanosecond)
		if len(rcv.got) > 0 {
			t.Fatal("retried before its backoff")
		}
		clk.Step(time.Nanosecond)
	}
	select {
	case <-rcv.got:
	case <-time.After(10 * time.Second):
		t.Fatal("never delivered")
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(rcv.bodies[0]), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["source"] != "tokenroll" || doc["event"] != "RolloutHalted" || doc["node"] != "n1" || doc["rollout"] != "r-1" || doc["time"] != "2026-12-01T03:00:00Z" {
		t.Errorf("body %v", doc)
	}
	// The receiver answers before the notifier counts.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(n.results.WithLabelValues(ResultSent)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("sent = %v, want 1", testutil.ToFloat64(n.results.WithLabelValues(ResultSent)))
		}
		time.Sleep(time.Millisecond)
	}
}

// A full queue drops its oldest delivery and counts it; Notify never
// blocks, even with no worker running.
func TestNotifierDropsOldest(t *testing.T) {
	rcv, srv := newReceiver(t, 0)
	n := NewNotifier(NotifierConfig{QueueSize: 2, Registry: prometheus.NewRegistry()})
	target := []Target{{Name: "ops", URL: srv.URL, Format: v1alpha1.NotificationSlack, Events: []v1alpha1.NotificationEvent{v1alpha1.NotifyNodeDone}}}
	for _, node := range []string{"n1", "n2", "n3"} {
		n.Notify(target, Event{Type: v1alpha1.NotifyNodeDone, Rollout: "r-1", Node: node, Message: "verified"})
	}
	n.Notify(target, Event{Type: v1alpha1.NotifyRolloutStarted, Rollout: "r-1"}) // not wanted
	if got := testutil.ToFloat64(n.results.WithLabelValues(ResultDropped)); got != 1 || n.Pending() != 2 {
		t.Fatalf("dropped %v, pending %d; want 1 and 2", got, n.Pending())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	for range 2 {
		select {
		case <-rcv.got:
		case <-time.After(10 * time.Second):
			t.Fatal("never delivered")
		}
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.bodies) != 2 || !strings.Contains(rcv.bodies[0], "node `n2`") || !strings.Contains(rcv.bodies[1], "node `n3`") {
		t.Errorf("delivered %q, want n2 and n3 as Slack messages", rcv.bodies)
	}
	var msg map[string]string
	if err := json.Unmarshal([]byte(rcv.bodies[0]), &msg); err != nil || !strings.HasPrefix(msg["text"], ":white_check_mark: *tokenroll NodeDone* rollout `r-1`") {
		t.Errorf("Slack body %q: %v", rcv.bodies[0], err)
	}
}

// A webhook's URL is its credential: a failed delivery's log says what
// failed without it. A 4xx is not retried.
func TestNotifierKeepsTheURLSecret(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	defer srv.Close()
	core, logs := observer.New(zap.DebugLevel)
	n := NewNotifier(NotifierConfig{Registry: prometheus.NewRegistry(), Log: zap.New(core)})
	secretURL := srv.URL + "/services/T000/B000/XXXXSECRET"
	deadURL := "http://127.0.0.1:1/hooks/YYYYSECRET"
	n.Notify([]Target{{Name: "a", URL: secretURL}, {Name: "b", URL: deadURL}}, Event{Type: v1alpha1.NotifyRolloutComplete, Rollout: "r-1"})
	n.cfg.Attempts = 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(n.results.WithLabelValues(ResultFailed)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the deliveries never failed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	all := ""
	for _, e := range logs.All() {
		all += e.Message + " " + e.ContextMap()["error"].(string) + "\n"
	}
	if strings.Contains(all, "SECRET") {
		t.Errorf("a log holds the webhook URL:\n%s", all)
	}
	if !strings.Contains(all, "403 Forbidden; not retried") || !strings.Contains(all, "posting to the webhook: dial tcp") {
		t.Errorf("the logs do not say what failed:\n%s", all)
	}
}
