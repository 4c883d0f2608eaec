package apps

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unique"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
)

// TestTrimPodSharesNames: pods decoded apart hold their own copies of
// their node's, namespace's and workload's names; trimmed, they share one.
func TestTrimPodSharesNames(t *testing.T) {
	pod := func(name string) *corev1.Pod {
		// Built byte by byte, as a decoder does: no two share memory.
		fresh := func(s string) string { return string([]byte(s)) }
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fresh("shop"),
				Labels:          map[string]string{"pod-template-hash": fresh("abc")},
				OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: fresh("web-abc"), Controller: new(true)}}},
			Spec:   corev1.PodSpec{NodeName: fresh("node-1")},
			Status: corev1.PodStatus{Phase: corev1.PodRunning},
		}
	}
	trim := func(p *corev1.Pod) *Pod {
		o, err := TrimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		return o.(*trimmedPod).pod
	}
	// The interned copies live as long as a handle does: a collection
	// between the two trims must not make two.
	held := []unique.Handle[string]{unique.Make("shop"), unique.Make("node-1"), unique.Make("Deployment/web")}
	defer runtime.KeepAlive(held)
	a, b := trim(pod("a")), trim(pod("b"))
	if a.Namespace != "shop" || a.Node != "node-1" || a.Workload != "Deployment/web" {
		t.Fatalf("trimmed pod %+v", *a)
	}
	for _, f := range []struct{ name, a, b string }{{"namespace", a.Namespace, b.Namespace}, {"node", a.Node, b.Node}, {"workload", a.Workload, b.Workload}} {
		if unsafe.StringData(f.a) != unsafe.StringData(f.b) {
			t.Errorf("two pods' %s names are two copies, want one", f.name)
		}
	}
}

// TestStamp: a stamp keeps a time to the nanosecond, and the zero time as
// the zero time.
func TestStamp(t *testing.T) {
	if s := stampOf(time.Time{}); s != 0 || !s.t().IsZero() {
		t.Fatalf("the zero time is stamp %d, back %v", s, s.t())
	}
	at := time.Date(2026, 11, 27, 10, 31, 5, 123456789, time.UTC)
	if got := stampOf(at).t(); got != at {
		t.Fatalf("stamp of %v is back %v", at, got)
	}
	if stampOf(at) >= stampOf(at.Add(time.Nanosecond)) {
		t.Fatal("stamps do not order as their times")
	}
}

// TestPodStateSize: the detector holds one podState per pod of the
// cluster; its times are stamps, not time.Times, and a pod no audit event
// named holds no evidence.
func TestPodStateSize(t *testing.T) {
	if size := unsafe.Sizeof(podState{}); size > 256 {
		t.Fatalf("a podState takes %d bytes, want at most 256", size)
	}
	d := NewDetector(Config{})
	d.SetPod(Pod{UID: "a", Namespace: "shop", Name: "a", Node: "n1", Running: true, TokenAudiences: []string{""}}, false)
	d.Evaluate()
	if d.pods["a"].evidence != nil {
		t.Fatal("a pod no event named holds evidence")
	}
}

// TestSharedIPAttribution: a failed request from an IP two pods hold is
// neither's; once one of them is gone, it is the other's again.
func TestSharedIPAttribution(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	d := NewDetector(Config{Grace: 2 * time.Minute, Window: 15 * time.Minute, Clock: clk})
	ip := netip.MustParseAddr("10.1.0.7")
	for _, uid := range []types.UID{"a", "b"} {
		d.SetPod(Pod{UID: uid, Namespace: "shop", Name: string(uid), Node: "n1", IPs: []netip.Addr{ip}, Running: true, TokenAudiences: []string{""}}, false)
	}
	fail := func() {
		clk.Step(time.Second)
		d.Observe(audit.Event{Kind: audit.AuthFailed, Time: clk.Now(), Code: 401, SourceIP: ip})
	}
	fail()
	if got := d.counts[audit.AuthFailed][Ignored]; got != 1 {
		t.Fatalf("a failure from a shared IP: %d ignored, want 1", got)
	}
	d.DeletePod("a")
	fail()
	if got := d.counts[audit.AuthFailed][Counted]; got != 1 {
		t.Fatalf("a failure from b's IP once a is gone: %d counted, want 1", got)
	}
	d.DeletePod("b")
	fail()
	if got := d.counts[audit.AuthFailed][UnknownPod]; got != 1 || len(d.byIP) != 0 || len(d.sharedIP) != 0 {
		t.Fatalf("a failure from an IP no pod holds: %d unknown, index %v %v", got, d.byIP, d.sharedIP)
	}
}
