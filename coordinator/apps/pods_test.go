package apps

import (
	"testing"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestTrimPodSharesNames: pods decoded apart hold their own copies of
// their node's, namespace's and workload's names; the cache keeps one.
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
		return o.(*cachedPod).pod
	}
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

// TestFollowedPodIsTheCachedOne: the detector keeps the pod the informer
// caches, not a copy of it.
func TestFollowedPodIsTheCachedOne(t *testing.T) {
	d := NewDetector(Config{})
	o, err := TrimPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "shop", UID: "u"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}})
	if err != nil {
		t.Fatal(err)
	}
	cp := o.(*cachedPod)
	d.setPod(cp.pod, cp.ended)
	if d.pods["u"].pod != cp.pod {
		t.Fatal("the detector copied the cached pod")
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
// cluster; its times are stamps, not time.Times.
func TestPodStateSize(t *testing.T) {
	if size := unsafe.Sizeof(podState{}); size > 384 {
		t.Fatalf("a podState takes %d bytes, want at most 384", size)
	}
}
