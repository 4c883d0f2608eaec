package actions

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/protocol"
)

// nextReport waits for the handler's next report; the timeout only keeps a
// broken test from hanging.
func nextReport(t *testing.T, reports <-chan protocol.RequestPhase) protocol.RequestPhase {
	t.Helper()
	select {
	case p := <-reports:
		return p
	case <-time.After(30 * time.Second):
		t.Fatal("no report")
		return ""
	}
}

// noWatchList is a fake Node client that says, as the fake clientset does,
// that it cannot serve watch-list semantics: the reflector lists and
// watches instead of waiting for a bookmark the fake never sends.
type noWatchList struct{ nodeclient.Nodes }

func (noWatchList) IsWatchListSemanticsUnSupported() bool { return true }

// A Handle that fails is retried after the queue's back-off, with no new
// event from the Node: here the Node never changes (the reporter is a fake
// that does not write to it).
func TestWatcherRetriesAFailedHandleWithoutANodeEvent(t *testing.T) {
	e := newEnv(t)
	e.node.attempts = make(chan protocol.RequestPhase, 16)
	e.node.failNext(protocol.PhaseAccepted, 2)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{
		protocol.AnnotationRequest: request("req-1", protocol.ActionKubeletRestart, "node-a", e.clock.Now()),
	}}}
	client := fake.NewClientset(node)
	w, err := NewWatcher(WatcherConfig{Client: noWatchList{client.CoreV1().Nodes()}, NodeName: "node-a", Handler: e.agent(t), Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// The queue's heartbeat is the fake clock's one waiter; a retry
	// waiting for its back-off is a second.
	waitForRetry := func() {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			return e.clock.Waiters() == 2, nil
		}); err != nil {
			t.Fatalf("no retry scheduled on the clock: %v", err)
		}
		select {
		case p := <-e.node.attempts:
			t.Fatalf("reported %s before the back-off passed", p)
		default:
		}
	}
	if p := nextReport(t, e.node.attempts); p != protocol.PhaseAccepted {
		t.Fatalf("first report %s, want accepted", p)
	}
	waitForRetry()
	e.clock.Step(retryBaseDelay)
	if p := nextReport(t, e.node.attempts); p != protocol.PhaseAccepted {
		t.Fatalf("second report %s, want accepted again", p)
	}
	// The second failure waits twice as long.
	waitForRetry()
	if n := w.queue.NumRequeues(workRequest); n != 2 {
		t.Errorf("%d retries counted, want 2", n)
	}
	e.clock.Step(2 * retryBaseDelay)
	for _, want := range []protocol.RequestPhase{protocol.PhaseAccepted, protocol.PhaseRunning, protocol.PhaseDone} {
		if p := nextReport(t, e.node.attempts); p != want {
			t.Fatalf("report %s, want %s", p, want)
		}
	}
	// Success forgets the failures: the next one starts from the base delay.
	if err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return w.queue.NumRequeues(workRequest) == 0, nil
	}); err != nil {
		t.Errorf("failures not forgotten after success: %v", err)
	}
	if e.exec.restart != 1 {
		t.Errorf("restarted the kubelet %d times, want once", e.exec.restart)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "list" && a.GetVerb() != "watch" {
			t.Errorf("the watcher wrote to the API server: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
}

// The scanner, when the executor runs in a container of its own, keeps
// reboot-required in step with the sentinel and never touches a request:
// the request stays unanswered for the executor.
func TestWatcherWithoutHandlerOnlyReportsTheSentinel(t *testing.T) {
	if _, err := NewWatcher(WatcherConfig{Client: fake.NewClientset().CoreV1().Nodes(), NodeName: "node-a"}); err == nil {
		t.Error("a watcher with neither a handler nor a sentinel was built")
	}
	sentinel := filepath.Join(t.TempDir(), "reboot-required")
	if err := os.WriteFile(sentinel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{
		protocol.AnnotationRequest: request("req-1", protocol.ActionKubeletRestart, "node-a", time.Now()),
	}}}
	client := fake.NewClientset(node)
	nodes := client.CoreV1().Nodes()
	w, err := NewWatcher(WatcherConfig{Client: noWatchList{nodes}, NodeName: "node-a", RebootSentinel: sentinel})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var n *corev1.Node
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if n, err = nodes.Get(ctx, "node-a", metav1.GetOptions{}); err != nil {
			return false, err
		}
		required, err := protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired])
		return err == nil && required, nil
	}); err != nil {
		t.Fatalf("reboot-required never reported: %v", err)
	}
	if s, ok := n.Annotations[protocol.AnnotationStatus]; ok {
		t.Errorf("a watcher without a handler answered the request: %s", s)
	}
}
