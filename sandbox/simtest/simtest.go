// Package simtest starts a real control plane with simulated kubelets for a
// test, and records what the nodes do so tests wait on events, not sleeps.
// Only tests import it.
package simtest

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/workload"
)

// Recorder keeps every event the simulated nodes emit.
type Recorder struct {
	mu     sync.Mutex
	events []kubeletsim.Event
	more   chan struct{}
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{more: make(chan struct{})} }

// Observe is a kubeletsim.Config.Observer.
func (r *Recorder) Observe(e kubeletsim.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	close(r.more)
	r.more = make(chan struct{})
	r.mu.Unlock()
}

// Mark is a position in the event log; Wait looks only at events after it.
func (r *Recorder) Mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// Wait blocks until an event after from matches, failing the test after
// two minutes (a loaded machine can delay the Node authorizer's graph).
func (r *Recorder) Wait(t testing.TB, from int, what string, match func(kubeletsim.Event) bool) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for i := from; ; {
		r.mu.Lock()
		for ; i < len(r.events); i++ {
			if match(r.events[i]) {
				r.mu.Unlock()
				return
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; last sync errors: %s", what, r.lastErrors(3))
		}
	}
}

func (r *Recorder) lastErrors(n int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for i := len(r.events) - 1; i >= 0 && len(out) < n; i-- {
		if e := r.events[i]; e.Err != nil {
			out = append(out, e.Node+" "+e.Pod.String()+": "+e.Err.Error())
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

// Is matches an event by kind and, where not empty, node, pod and volume.
func Is(kind kubeletsim.EventKind, node, pod, volume string) func(kubeletsim.Event) bool {
	return func(e kubeletsim.Event) bool {
		return e.Kind == kind && (node == "" || e.Node == node) && (pod == "" || e.Pod.Name == pod) && (volume == "" || e.Volume == volume)
	}
}

// Cluster is a control plane and simulated nodes sharing one fake clock.
type Cluster struct {
	CP     *controlplane.ControlPlane
	Admin  kubernetes.Interface
	Clock  *clocktesting.FakeClock
	Nodes  map[string]*kubeletsim.Node
	Events *Recorder
}

// Start runs a control plane signing as issuer and the named nodes, all
// stopped when the test ends.
func Start(t testing.TB, issuer string, names ...string) *Cluster {
	t.Helper()
	cp := controlplane.StartForTest(t, controlplane.Config{Issuers: []string{issuer}})
	c := &Cluster{
		CP:     cp,
		Admin:  kubernetes.NewForConfigOrDie(cp.AdminConfig()),
		Clock:  clocktesting.NewFakeClock(time.Now()),
		Nodes:  map[string]*kubeletsim.Node{},
		Events: NewRecorder(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, name := range names {
		cfg, err := cp.NodeConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		n, err := kubeletsim.New(kubeletsim.Config{
			Name: name, Root: filepath.Join(t.TempDir(), name), RESTConfig: cfg,
			Clock: c.Clock, Observer: c.Events.Observe,
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Nodes[name] = n
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.Run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("node %s: %v", name, err)
			}
		}()
	}
	for _, n := range c.Nodes {
		select {
		case <-n.Registered():
		case <-time.After(60 * time.Second):
			t.Fatalf("node %s did not register", n.Name())
		}
	}
	return c
}

// CreatePod creates pod (with a container if it has none).
func (c *Cluster) CreatePod(t testing.TB, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if len(pod.Spec.Containers) == 0 {
		pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}
	}
	out, err := c.Admin.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return out
}

// KubeAPIAccess names the volume the ServiceAccount admission plugin added.
func KubeAPIAccess(t testing.TB, pod *corev1.Pod) string {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return v.Name
		}
	}
	t.Fatalf("pod %s has no kube-api-access volume", pod.Name)
	return ""
}

// BuildRobotPod is workload.BuildRobotPod, the OpenShift documentation's example.
var BuildRobotPod = workload.BuildRobotPod

// PrepareBuildNamespace makes namespace ns with the build-robot account.
func (c *Cluster) PrepareBuildNamespace(t testing.TB, ns string) {
	t.Helper()
	ctx := context.Background()
	if err := c.CP.PrepareNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "build-robot"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ExamplePods creates, in namespace "build" on node, the documentation's nginx pod (as
// build-robot, with the vault token) and a plain "web" pod, and waits until
// the node has written their volumes.
func (c *Cluster) ExamplePods(t testing.TB, node string) (robot, web *corev1.Pod) {
	t.Helper()
	c.PrepareBuildNamespace(t, "build")
	mark := c.Events.Mark()
	robot = c.CreatePod(t, BuildRobotPod("nginx", "build", node))
	web = c.CreatePod(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "build"}, Spec: corev1.PodSpec{NodeName: node}})
	c.Events.Wait(t, mark, "nginx synced", Is(kubeletsim.EventPodSynced, node, "nginx", ""))
	c.Events.Wait(t, mark, "web synced", Is(kubeletsim.EventPodSynced, node, "web", ""))
	return robot, web
}

// WaitNode watches Node name until cond holds, failing the test after a
// minute; what names the wait in the failure.
func (c *Cluster) WaitNode(t testing.TB, name, what string, cond func(*corev1.Node) bool) *corev1.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last *corev1.Node
	for ctx.Err() == nil {
		w, err := c.Admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			continue
		}
		for ev := range w.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok {
				last = n
				if cond(n) {
					w.Stop()
					return n
				}
			}
		}
		w.Stop()
	}
	var annotations map[string]string
	if last != nil {
		annotations = last.Annotations
	}
	t.Fatalf("node %s: timed out waiting for %s (annotations %v)", name, what, annotations)
	return nil
}
