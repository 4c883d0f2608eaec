package sandbox

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"
)

var disruptT0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func atSec(s float64) time.Time { return disruptT0.Add(time.Duration(s * float64(time.Second))) }

// running is pod uid as the kubelet posts it: each container running,
// started at the given second with the given restart count.
func running(uid string, containers ...containerStart) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p-" + uid, Namespace: "apps", UID: types.UID(uid)}}
	for i, c := range containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: string(rune('a' + i)), RestartCount: c.Restarts,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.StartedAt)}},
		})
	}
	return p
}

func pending(uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p-" + uid, Namespace: "apps", UID: types.UID(uid)},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "a", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{}}}}}}
}

func TestDisruptionCountsPodStartsAfterBegin(t *testing.T) {
	c := newDisruptionCounter()
	// Before the issuer change: three pods running, one of which the
	// watch shows twice (a status update that starts nothing).
	c.pod(running("a", containerStart{0, atSec(-60)}))
	c.pod(running("b", containerStart{0, atSec(-60)}))
	c.pod(running("b", containerStart{0, atSec(-60)}))
	c.pod(running("c", containerStart{0, atSec(-60)}, containerStart{0, atSec(-60)}))
	c.begin(atSec(0))
	if got := c.figures(atSec(1)).PodsRestarted; got != 0 {
		t.Fatalf("before anything changed: %d pods restarted, want 0", got)
	}
	// The same pods seen again after begin start nothing.
	c.pod(running("a", containerStart{0, atSec(-60)}))
	// a is deleted and replaced by d: d pending, then running (one start,
	// however often the watch shows it).
	c.podGone("a")
	c.pod(pending("d"))
	if got := c.figures(atSec(2)).PodsRestarted; got != 0 {
		t.Errorf("a pending replacement: %d pods restarted, want 0", got)
	}
	c.pod(running("d", containerStart{0, atSec(3)}))
	c.pod(running("d", containerStart{0, atSec(3)}))
	// b's node reboots: its container starts again in place.
	c.pod(running("b", containerStart{1, atSec(10)}))
	// c has two containers; the reboot restarts both, the kubelet posts
	// them one at a time: one pod restarted.
	c.pod(running("c", containerStart{1, atSec(10)}, containerStart{0, atSec(-60)}))
	c.pod(running("c", containerStart{1, atSec(10)}, containerStart{1, atSec(11)}))
	if got := c.figures(atSec(20)).PodsRestarted; got != 3 {
		t.Errorf("d replaced a, b and c restarted in place: %d pods restarted, want 3", got)
	}
	// A start known by its time alone (a runtime that lost its restart
	// count with the reboot) still counts.
	c.pod(running("b", containerStart{0, atSec(30)}))
	if got := c.figures(atSec(40)).PodsRestarted; got != 4 {
		t.Errorf("b started again with restart count 0: %d pods restarted, want 4", got)
	}
}

func TestDisruptionCountsBootIDChanges(t *testing.T) {
	c := newDisruptionCounter()
	c.boot("worker-1", "boot-a")
	c.boot("worker-2", "boot-x")
	c.boot("worker-1", "boot-b") // before the issuer change: not counted
	c.begin(atSec(0))
	c.boot("worker-1", "boot-b")
	c.boot("worker-1", "")
	if got := c.figures(atSec(1)).NodeReboots; got != 0 {
		t.Fatalf("no boot ID changed since begin: %d reboots, want 0", got)
	}
	c.boot("worker-1", "boot-c")
	c.boot("worker-1", "boot-c") // the event and the final look both see it
	c.boot("worker-2", "boot-y")
	c.boot("worker-1", "boot-d")
	c.boot("worker-3", "boot-new") // first seen: a baseline, not a reboot
	if got := c.figures(atSec(2)).NodeReboots; got != 3 {
		t.Errorf("worker-1 rebooted twice and worker-2 once: %d reboots, want 3", got)
	}
}

func TestDisruptionAddsNodeSecondsOutOfService(t *testing.T) {
	c := newDisruptionCounter()
	c.node("worker-1", false, atSec(-30))
	c.node("worker-2", true, atSec(-30)) // cordoned by someone before the change
	c.begin(atSec(0))
	c.node("worker-1", true, atSec(10))
	c.node("worker-1", true, atSec(12)) // still out: NotReady while cordoned
	c.node("worker-1", false, atSec(16.5))
	c.node("worker-2", false, atSec(4))
	c.node("worker-3", true, atSec(20))
	got := c.figures(atSec(25)).NodeSecondsOutOfService
	// worker-1 6.5 s, worker-2 4 s counted from begin, worker-3 still out
	// for 5 s at the end.
	if got != 15.5 {
		t.Errorf("node-seconds out of service = %v, want 15.5", got)
	}
	if got := c.figures(atSec(30)).NodeSecondsOutOfService; got != 20.5 {
		t.Errorf("five seconds later = %v, want 20.5", got)
	}
	c.node("worker-3", false, atSec(30))
	if got := c.figures(atSec(100)).NodeSecondsOutOfService; got != 20.5 {
		t.Errorf("every node back = %v, want 20.5", got)
	}
}

// The watch feeds the counter: a pod that a ReplicaSet recreated counts
// once it runs, a cordoned node counts until uncordoned.
func TestWatchDisruptionFeedsTheCounter(t *testing.T) {
	ready := func(name string, cordoned bool) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Unschedulable: cordoned},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	}
	client := fake.NewClientset(running("a", containerStart{0, atSec(-60)}), ready("worker-1", false))
	clk := clocktesting.NewFakePassiveClock(atSec(-1))
	c := newDisruptionCounter()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := watchDisruption(ctx, client, clk, c); err != nil {
		t.Fatal(err)
	}
	c.begin(atSec(0))
	clk.SetTime(atSec(5))
	if _, err := client.CoreV1().Nodes().Update(ctx, ready("worker-1", true), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("apps").Delete(ctx, "p-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("apps").Create(ctx, running("b", containerStart{0, atSec(6)}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFigures(ctx, t, c, atSec(8), func(d Disruption) bool { return d.PodsRestarted == 1 && d.NodeSecondsOutOfService == 3 })
	clk.SetTime(atSec(9))
	if _, err := client.CoreV1().Nodes().Update(ctx, ready("worker-1", false), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFigures(ctx, t, c, atSec(100), func(d Disruption) bool { return d.PodsRestarted == 1 && d.NodeSecondsOutOfService == 4 })
}

// waitFigures waits until the watch has delivered what makes ok hold on
// the figures at now.
func waitFigures(ctx context.Context, t *testing.T, c *disruptionCounter, now time.Time, ok func(Disruption) bool) {
	t.Helper()
	for {
		d := c.figures(now)
		if ok(d) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("figures %+v at %s never held", d, now)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
