package kubeletsim

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func boundPod(name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps"}, Spec: corev1.PodSpec{NodeName: node}}
}

// recorder keeps what a node's handler was told, as "add p1".
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) handler() cache.ResourceEventHandler {
	note := func(what string, obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.seen = append(r.seen, what+" "+obj.(*corev1.Pod).Name)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { note("add", obj) },
		UpdateFunc: func(_, obj any) { note("update", obj) },
		DeleteFunc: func(obj any) { note("delete", obj) },
	}
}

func (r *recorder) has(what string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.seen, what)
}

// A node on the shared informer is handed its own pods alone: those there
// before it subscribed, then every change; its lister lists and gets its
// own pods alone, as a node's informer with a spec.nodeName field selector
// would.
func TestSharedPodsHandEachNodeItsOwn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(boundPod("a1", "n1"), boundPod("b1", "n2"), boundPod("a2", "n1"))
	s, err := NewSharedPods(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var r1 recorder
	stop := s.subscribe("n1", r1.handler())
	if !r1.has("add a1") || !r1.has("add a2") || r1.has("add b1") {
		t.Errorf("n1 was handed %v on subscribing, want its pods a1 and a2 alone", r1.seen)
	}
	pods := client.CoreV1().Pods("apps")
	if _, err := pods.Create(ctx, boundPod("b2", "n2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, boundPod("a3", "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pods.Delete(ctx, "a1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !r1.has("add a3") || !r1.has("delete a1") {
		if time.Now().After(deadline) {
			t.Fatalf("n1 was not told of its new pod a3 and its pod a1 gone: %v", r1.seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r1.has("add b2") {
		t.Errorf("n1 was handed n2's pod b2: %v", r1.seen)
	}

	l := s.lister("n1")
	listed, err := l.List(everything)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range listed {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a2", "a3"}) {
		t.Errorf("n1's lister listed %v, want [a2 a3]", names)
	}
	if p, err := l.Pods("apps").Get("a2"); err != nil || p.Name != "a2" {
		t.Errorf("n1's lister got a2: %v, %v", p, err)
	}
	if _, err := l.Pods("apps").Get("b1"); !apierrors.IsNotFound(err) {
		t.Errorf("n1's lister got n2's pod b1: %v, want not found", err)
	}
	if got, _ := l.Pods("other").List(everything); len(got) != 0 {
		t.Errorf("n1's lister listed %d pods in a namespace with none", len(got))
	}

	stop()
	if _, err := pods.Create(ctx, boundPod("a4", "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var r2 recorder
	s.subscribe("n2", r2.handler()) // its replay waits for nothing: a4 may or may not be in the cache yet
	deadline = time.Now().Add(10 * time.Second)
	for {
		if got, _ := l.Pods("apps").Get("a4"); got != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a4 never reached the cache")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r1.has("add a4") {
		t.Errorf("n1 was told of a pod after it unsubscribed: %v", r1.seen)
	}
}

// A node on the shared informer builds a projected ConfigMap from the
// shared cache, with no GET of its own, as a kubelet reads ConfigMaps from
// its watches; a ConfigMap the cache lacks is not found, which an optional
// source skips.
func TestSharedNodesReadConfigMapsFromTheCache(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: "apps"}, Data: map[string]string{"ca.crt": "CA"}})
	s, err := NewSharedPods(admin)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	own := fake.NewClientset()
	n := &Node{client: own, cfg: Config{Pods: s}}
	pod := boundPod("a1", "n1")
	vol := &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
		{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
			Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
		{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: new(true)}},
	}}
	payload, err := n.projectedPayload(ctx, pod, vol)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(payload["ca.crt"].Data); got != "CA" || len(payload) != 1 {
		t.Errorf("payload %v, want ca.crt from the shared cache alone", payload)
	}
	if a := own.Actions(); len(a) != 0 {
		t.Errorf("the node made %d requests of its own (first: %v), want none", len(a), a[0])
	}
}
