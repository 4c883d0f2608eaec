package apps

import (
	"context"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
)

// fullPod is a pod with everything the API server returns, the fields
// the detector reads among many it does not.
func fullPod(name, node, ip string, phase corev1.PodPhase, exp int64, aud string) *corev1.Pod {
	ctrl := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), ResourceVersion: "7",
			Labels: map[string]string{"pod-template-hash": "5d8f", "app": "web"}, Annotations: map[string]string{"a": "b"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", UID: "rs", Controller: &ctrl}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet", FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:status":{}}`)}}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "web:1"}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &exp, Audience: aud, Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}}}}}}}}},
		Status: corev1.PodStatus{Phase: phase, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "10.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

// What FollowPods keeps of a pod is what the detector reads of the whole
// pod: the detector following pods through a clientset holds exactly what
// PodFrom takes from the full objects, through pods added, updated and
// deleted, and ended.
func TestFollowPodsKeepsWhatTheDetectorReads(t *testing.T) {
	full := map[string]*corev1.Pod{
		"a": fullPod("a", "n1", "10.1.0.1", corev1.PodRunning, ExtendedSeconds, ""),
		"b": fullPod("b", "n2", "10.1.0.2", corev1.PodPending, 600, "vault"),
		"c": fullPod("c", "n1", "10.1.0.3", corev1.PodRunning, ExtendedSeconds, ""),
	}
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range full {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d := NewDetector(Config{Grace: grace, Window: window, Clock: clocktesting.NewFakeClock(t0)})
	synced, stop := FollowPods(ctx, client, d)
	defer func() { cancel(); stop() }()
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		t.Fatal("not synced")
	}
	check := func(when string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			want := map[string]Pod{}
			for _, p := range full {
				if pod, ended := PodFrom(p); !ended {
					want[pod.Name] = pod
				}
			}
			got := map[string]Pod{}
			d.mu.Lock()
			for _, ps := range d.pods {
				got[ps.pod.Name] = *ps.pod
			}
			d.mu.Unlock()
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the detector holds\n%+v\nwant what PodFrom takes from the full pods\n%+v", when, got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check("listed")
	if p := full["a"]; p != nil {
		if pod, _ := PodFrom(p); pod.Workload != "Deployment/web" || !pod.Running || pod.ShortLivedTokens || len(pod.IPs) != 1 || pod.IPs[0] != netip.MustParseAddr("10.1.0.1") {
			t.Fatalf("PodFrom(a) = %+v", pod)
		}
	}
	b := full["b"].DeepCopy()
	b.Status.Phase, b.Status.PodIP, b.Status.PodIPs, b.ResourceVersion = corev1.PodRunning, "10.1.0.9", []corev1.PodIP{{IP: "10.1.0.9"}}, "8"
	full["b"] = b
	if _, err := client.CoreV1().Pods("shop").Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("b running with a new IP")
	c := full["c"].DeepCopy()
	c.Status.Phase, c.ResourceVersion = corev1.PodSucceeded, "9"
	full["c"] = c
	if _, err := client.CoreV1().Pods("shop").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("c ended")
	delete(full, "a")
	if err := client.CoreV1().Pods("shop").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("a deleted")
}

// podServer is a fake API server's pods for a reflector: a list returns
// list (the first once release is closed); each watch started is handed
// to the test on watches, and the test sends its events.
type podServer struct {
	mu   sync.Mutex
	list []*corev1.Pod
	// listing is told of each list asked for.
	listing chan struct{}
	release chan struct{}
	watches chan watchCall
}

type watchCall struct {
	opts metav1.ListOptions
	w    *watch.FakeWatcher
}

func newPodServer(pods ...*corev1.Pod) *podServer {
	return &podServer{list: pods, listing: make(chan struct{}, 8), release: make(chan struct{}), watches: make(chan watchCall)}
}

func (s *podServer) setList(pods ...*corev1.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = pods
}

func (s *podServer) listWatch() *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, _ metav1.ListOptions) (runtime.Object, error) {
			s.listing <- struct{}{}
			select {
			case <-s.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			l := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "10"}}
			for _, p := range s.list {
				l.Items = append(l.Items, *p.DeepCopy())
			}
			return l, nil
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			// Unbuffered: once the reflector has received an event, it has
			// applied the one before.
			w := watch.NewFake()
			select {
			case s.watches <- watchCall{opts, w}:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return w, nil
		},
	}
}

// listOnly is a client that cannot stream a list in a watch, as a fake
// clientset.
type listOnly struct{}

func (listOnly) IsWatchListSemanticsUnSupported() bool { return true }

// applied returns once the reflector has applied every event sent on w:
// it has received a bookmark after them, which changes no pod.
func applied(w *watch.FakeWatcher) {
	w.Action(watch.Bookmark, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "11"}})
}

// streamList sends pods on a watch-list's watch as its initial events,
// calls before, sends the bookmark that ends them, and returns once the
// reflector has applied them.
func streamList(t *testing.T, c watchCall, before func(), pods ...*corev1.Pod) {
	t.Helper()
	if c.opts.SendInitialEvents == nil || !*c.opts.SendInitialEvents {
		t.Fatalf("the reflector watches with %+v, want a watch-list", c.opts)
	}
	for _, p := range pods {
		c.w.Add(p.DeepCopy())
	}
	before()
	c.w.Action(watch.Bookmark, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "10", Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}})
	applied(c.w)
}

// held is what the detector holds of each pod, by name.
func held(d *Detector) map[string]Pod {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]Pod{}
	for _, ps := range d.pods {
		name := ps.pod.Name
		if _, ok := out[name]; ok {
			// Two pods of one name: shown apart, never as expected.
			name += " (again)"
		}
		out[name] = *ps.pod
	}
	return out
}

// fromFull is what the detector should hold of the pods that have not
// ended.
func fromFull(pods ...*corev1.Pod) map[string]Pod {
	out := map[string]Pod{}
	for _, p := range pods {
		if pod, ended := PodFrom(p); !ended {
			out[pod.Name] = pod
		}
	}
	return out
}

// The detector is the pod reflector's store, with nothing beside it: the
// first list (a list, or a watch-list's initial events) gives it every
// pod, synced only then; watch events add, update (an IP re-indexed),
// end and delete pods, a deletion of a pod it never held changing
// nothing; a relist after the watch expired deletes the pods it does not
// list, a pod recreated under the same name among them, and keeps what
// the detector learnt of a pod it lists again.
func TestPodStore(t *testing.T) {
	for _, mode := range []string{"list", "watch-list"} {
		t.Run(mode, func(t *testing.T) {
			a := fullPod("a", "n1", "10.1.0.1", corev1.PodRunning, ExtendedSeconds, "")
			b := fullPod("b", "n2", "10.1.0.2", corev1.PodPending, ExtendedSeconds, "")
			c := fullPod("c", "n1", "10.1.0.3", corev1.PodRunning, ExtendedSeconds, "")
			e := fullPod("e", "n2", "10.1.0.4", corev1.PodSucceeded, ExtendedSeconds, "")
			srv := newPodServer(a, b, c, e)
			var lw cache.ListerWatcher = srv.listWatch()
			if mode == "list" {
				lw = cache.ToListWatcherWithWatchListSemantics(srv.listWatch(), listOnly{})
			}
			clock := clocktesting.NewFakeClock(t0)
			d := NewDetector(Config{Grace: grace, Window: window, RepeatEvents: time.Hour, Clock: clock})
			ctx, cancel := context.WithCancel(context.Background())
			// A relist follows an expired watch without the backoff's
			// second.
			synced, stop := followPods(ctx, lw, d, cache.ReflectorOptions{Backoff: &wait.Backoff{Duration: time.Millisecond}})
			defer func() { cancel(); stop() }()

			var w *watch.FakeWatcher
			if mode == "list" {
				<-srv.listing
				if synced() {
					t.Fatal("synced before the first list")
				}
				close(srv.release)
				call := <-srv.watches
				if call.opts.SendInitialEvents != nil {
					t.Fatalf("the reflector watches with %+v, want a watch from the list", call.opts)
				}
				w = call.w
			} else {
				close(srv.release)
				call := <-srv.watches
				streamList(t, call, func() {
					if synced() {
						t.Fatal("synced before the watch-list's initial events ended")
					}
				}, a, b, c, e)
				w = call.w
			}
			if !synced() {
				t.Fatal("not synced after the first list")
			}
			if got, want := held(d), fromFull(a, b, c); !reflect.DeepEqual(got, want) {
				t.Fatalf("listed: the detector holds\n%+v\nwant\n%+v", got, want)
			}
			// a authenticates: the detector's own state of it.
			d.Observe(audit.Event{Kind: audit.Presented, Time: t0, Code: 200, JTI: "jti-a",
				Pod: audit.PodRef{Namespace: "shop", Name: "a", UID: a.UID, Node: "n1"}})
			if res := d.Evaluate(); res.Healthy != 1 || res.Unobserved != 1 {
				t.Fatalf("before the relist: healthy %d, unobserved %d; want a healthy, c unobserved", res.Healthy, res.Unobserved)
			}
			stateA := d.pods[a.UID]

			f := fullPod("f", "n1", "10.1.0.5", corev1.PodRunning, ExtendedSeconds, "")
			w.Add(f)
			b = b.DeepCopy()
			b.Status.Phase, b.Status.PodIP, b.Status.PodIPs = corev1.PodRunning, "10.1.0.9", []corev1.PodIP{{IP: "10.1.0.9"}}
			w.Modify(b)
			w.Delete(c)
			w.Delete(fullPod("ghost", "n9", "10.1.0.7", corev1.PodRunning, ExtendedSeconds, ""))
			g := fullPod("g", "n2", "10.1.0.6", corev1.PodRunning, ExtendedSeconds, "")
			w.Add(g)
			applied(w)
			if got, want := held(d), fromFull(a, b, f, g); !reflect.DeepEqual(got, want) {
				t.Fatalf("watched: the detector holds\n%+v\nwant\n%+v", got, want)
			}
			d.mu.Lock()
			uid9, n9 := d.holding(netip.MustParseAddr("10.1.0.9"))
			_, n2 := d.holding(netip.MustParseAddr("10.1.0.2"))
			_, n3 := d.holding(netip.MustParseAddr("10.1.0.3"))
			d.mu.Unlock()
			if uid9 != b.UID || n9 != 1 || n2 != 0 || n3 != 0 {
				t.Fatalf("10.1.0.9 is held by %q (%d pods), 10.1.0.2 by %d, 10.1.0.3 by %d; want b's new IP alone, the old and the deleted pod's none", uid9, n9, n2, n3)
			}
			f = f.DeepCopy()
			f.Status.Phase = corev1.PodFailed
			w.Modify(f)
			applied(w)
			if got := held(d); len(got) != 3 || got["f"].Name != "" {
				t.Fatalf("f ended: the detector holds %+v", got)
			}

			// The watch expires; the relist lists a, b recreated (another
			// UID, another IP) and h, not g.
			b2 := fullPod("b", "n2", "10.1.0.10", corev1.PodRunning, ExtendedSeconds, "")
			b2.UID = "uid-b-2"
			h := fullPod("h", "n1", "10.1.0.11", corev1.PodRunning, ExtendedSeconds, "")
			a2 := a.DeepCopy()
			a2.ResourceVersion = "9"
			srv.setList(a2, b2, h)
			w.Error(&apierrors.NewResourceExpired("too old resource version").ErrStatus)
			if mode == "list" {
				<-srv.listing
				if call := <-srv.watches; call.opts.SendInitialEvents != nil {
					t.Fatalf("the reflector watches with %+v, want a watch from the list", call.opts)
				}
			} else {
				streamList(t, <-srv.watches, func() {}, a2, b2, h)
			}
			if got, want := held(d), fromFull(a2, b2, h); !reflect.DeepEqual(got, want) {
				t.Fatalf("relisted: the detector holds\n%+v\nwant\n%+v", got, want)
			}
			d.mu.Lock()
			_, oldB := d.pods[b.UID]
			stateA2 := d.pods[a.UID]
			_, n9 = d.holding(netip.MustParseAddr("10.1.0.9"))
			_, n6 := d.holding(netip.MustParseAddr("10.1.0.6"))
			d.mu.Unlock()
			if oldB || n9 != 0 || n6 != 0 {
				t.Fatalf("relisted: b's old UID held %v, its old IP by %d pods, g's by %d; want neither", oldB, n9, n6)
			}
			if stateA2 != stateA {
				t.Fatal("relisted: a, listed again, has a new state")
			}
			if res := d.Evaluate(); res.Healthy != 1 || res.Unobserved != 2 || !synced() {
				t.Fatalf("relisted: healthy %d, unobserved %d, synced %v; want a still healthy (its presentation kept), b and h unobserved", res.Healthy, res.Unobserved, synced())
			}
		})
	}
}
