package replicasim

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// harness is a cluster of simulated nodes with the controller running.
type harness struct {
	c    *simtest.Cluster
	ctrl *Controller
	logs *logWatch
}

func start(t *testing.T, nodes ...string) *harness {
	t.Helper()
	c := simtest.Start(t, "https://kubernetes.default.svc", nodes...)
	if err := c.CP.PrepareNamespace(context.Background(), "apps"); err != nil {
		t.Fatal(err)
	}
	logs := newLogWatch(t)
	ctrl, err := New(Config{Client: c.Admin, Namespaces: []string{"apps"}, Log: logs.logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	return &harness{c: c, ctrl: ctrl, logs: logs}
}

// webReplicaSet runs pods with a projected token for the audience "vault"
// beside the default kube-api-access volume.
func webReplicaSet(replicas int32) *appsv1.ReplicaSet {
	labels := map[string]string{"app": "web"}
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "web", Image: "registry.example/web:1",
						VolumeMounts: []corev1.VolumeMount{{Name: "vault-token", MountPath: "/var/run/secrets/tokens"}},
					}},
					Volumes: []corev1.Volume{{
						Name: "vault-token",
						VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
							ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", ExpirationSeconds: ptr.To[int64](7200), Audience: "vault"},
						}}}},
					}},
				},
			},
		},
	}
}

var podName = regexp.MustCompile(`^web-[a-z0-9]{5}$`)

func TestReplicaSetThroughEvictionsAndCordons(t *testing.T) {
	h := start(t, "node-1", "node-2", "node-3")
	c := h.c
	ctx := context.Background()

	// Two pods, spread over two nodes, bound by their controller reference,
	// running with their tokens on disk; the status says so.
	mark := c.Events.Mark()
	if _, err := c.Admin.AppsV1().ReplicaSets("apps").Create(ctx, webReplicaSet(2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rs := h.waitRS(t, "", "2 ready replicas", func(rs *appsv1.ReplicaSet) bool {
		s := rs.Status
		return s.Replicas == 2 && s.ReadyReplicas == 2 && s.AvailableReplicas == 2 && s.FullyLabeledReplicas == 2 && s.ObservedGeneration == rs.Generation
	})
	pods := h.activePods(t)
	if got := nodesOf(pods); !slices.Equal(got, []string{"node-1", "node-2"}) {
		t.Fatalf("pods on %v, want node-1 and node-2", got)
	}
	for _, p := range pods {
		if !podName.MatchString(p.Name) {
			t.Errorf("pod %s: want the name web-<5 random characters>", p.Name)
		}
		ref := metav1.GetControllerOf(&p)
		if ref == nil || ref.UID != rs.UID || ref.Kind != "ReplicaSet" || ref.APIVersion != "apps/v1" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("pod %s: controller reference %+v, want ReplicaSet web blocking owner deletion", p.Name, ref)
		}
		if p.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s is %s, want Running", p.Name, p.Status.Phase)
		}
		c.Events.Wait(t, mark, p.Name+" vault token written", simtest.Is(kubeletsim.EventVolumeWritten, p.Spec.NodeName, p.Name, "vault-token"))
	}

	// An eviction: the evicted pod stops counting at once, a replacement
	// goes to the emptiest schedulable node (node-1 again, first by name
	// among node-1 and node-3), and the status dips and comes back.
	replacement := h.evictAndReplace(t, onNode(pods, "node-1"))
	if replacement.Spec.NodeName != "node-1" {
		t.Errorf("replacement on %s, want node-1", replacement.Spec.NodeName)
	}

	// node-1 cordoned: its pod's replacement avoids it.
	h.cordon(t, "node-1", true)
	replacement = h.evictAndReplace(t, replacement)
	if replacement.Spec.NodeName != "node-3" {
		t.Errorf("replacement on %s, want node-3 (node-1 is cordoned, node-2 holds a pod)", replacement.Spec.NodeName)
	}

	// No node left: the controller waits, says so once, and acts on a
	// change of the ReplicaSet without placing anything.
	h.cordon(t, "node-2", true)
	h.cordon(t, "node-3", true)
	from := h.rv(t)
	h.evict(t, onNode(h.activePods(t), "node-2"))
	h.waitRS(t, from, "1 replica, none placed", func(rs *appsv1.ReplicaSet) bool { return rs.Status.Replicas == 1 && rs.Status.ReadyReplicas == 1 })
	h.logs.wait(t, "no node can take")
	rs = h.scale(t, 3)
	h.waitRS(t, "", "the scale-up observed", func(got *appsv1.ReplicaSet) bool {
		return got.Status.ObservedGeneration == rs.Generation && got.Status.Replicas == 1
	})
	if n := len(h.activePods(t)); n != 1 {
		t.Errorf("%d pods while no node is schedulable, want 1", n)
	}

	// node-3 back: both missing pods go there, the only choice.
	h.cordon(t, "node-3", false)
	h.waitRS(t, "", "3 ready replicas", func(got *appsv1.ReplicaSet) bool {
		s := got.Status
		return s.ObservedGeneration == rs.Generation && s.Replicas == 3 && s.ReadyReplicas == 3 && s.AvailableReplicas == 3
	})
	if got := nodesOf(h.activePods(t)); !slices.Equal(got, []string{"node-3", "node-3", "node-3"}) {
		t.Errorf("pods on %v, want all three on node-3", got)
	}
	if n := h.logs.count("no node can take"); n != 1 {
		t.Errorf("logged %d times that no node can take the pods, want once", n)
	}
	if n := h.logs.count("can take the ReplicaSet's pods again"); n != 1 {
		t.Errorf("logged %d times that a node can take the pods again, want once", n)
	}

	// Scaled down: surplus pods are deleted.
	rs = h.scale(t, 1)
	h.waitRS(t, "", "1 replica", func(got *appsv1.ReplicaSet) bool {
		s := got.Status
		return s.ObservedGeneration == rs.Generation && s.Replicas == 1 && s.ReadyReplicas == 1
	})
	if n := len(h.activePods(t)); n != 1 {
		t.Errorf("%d pods after scaling to 1", n)
	}
	if errs := h.logs.count("syncing ReplicaSet"); errs != 0 {
		t.Errorf("%d failed syncs logged", errs)
	}
}

// evictAndReplace evicts pod and waits for its replacement to run and the
// ReplicaSet's status to dip and come back to what it was.
func (h *harness) evictAndReplace(t *testing.T, pod corev1.Pod) corev1.Pod {
	t.Helper()
	from := h.rv(t)
	before := h.activePods(t)
	h.evict(t, pod)
	want := int32(len(before))
	dipped := false
	h.waitRS(t, from, "readyReplicas back after the eviction", func(rs *appsv1.ReplicaSet) bool {
		if rs.Status.ReadyReplicas < want {
			dipped = true
		}
		return dipped && rs.Status.Replicas == want && rs.Status.ReadyReplicas == want && rs.Status.AvailableReplicas == want
	})
	for _, p := range h.activePods(t) {
		if !slices.ContainsFunc(before, func(b corev1.Pod) bool { return b.UID == p.UID }) {
			return p
		}
	}
	t.Fatalf("no replacement for %s", pod.Name)
	return corev1.Pod{}
}

func (h *harness) evict(t *testing.T, pod corev1.Pod) {
	t.Helper()
	err := h.c.Admin.PolicyV1().Evictions(pod.Namespace).Evict(context.Background(), &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}})
	if err != nil {
		t.Fatalf("evicting %s: %v", pod.Name, err)
	}
}

func (h *harness) scale(t *testing.T, replicas int32) *appsv1.ReplicaSet {
	t.Helper()
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas)
	rs, err := h.c.Admin.AppsV1().ReplicaSets("apps").Patch(context.Background(), "web", types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// cordon sets spec.unschedulable and returns once the controller's node
// cache holds the change, so what the test does next meets it.
func (h *harness) cordon(t *testing.T, node string, on bool) {
	t.Helper()
	seen := make(chan struct{})
	var once sync.Once
	check := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == node && n.Spec.Unschedulable == on {
			once.Do(func() { close(seen) })
		}
	}
	reg, err := h.ctrl.nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: check, UpdateFunc: func(_, o any) { check(o) }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.ctrl.nodeInformer.RemoveEventHandler(reg) }()
	patch := fmt.Appendf(nil, `{"spec":{"unschedulable":%t}}`, on)
	if _, err := h.c.Admin.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-seen:
	case <-time.After(time.Minute):
		t.Fatalf("the controller did not see node %s unschedulable=%t", node, on)
	}
}

// rv is the ReplicaSet's resourceVersion now: waitRS from it sees only
// later changes.
func (h *harness) rv(t *testing.T) string {
	t.Helper()
	rs, err := h.c.Admin.AppsV1().ReplicaSets("apps").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rs.ResourceVersion
}

// waitRS watches ReplicaSet apps/web from resourceVersion from (empty:
// its current state first) until cond holds, for two minutes at most.
func (h *harness) waitRS(t *testing.T, from, what string, cond func(*appsv1.ReplicaSet) bool) *appsv1.ReplicaSet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var last *appsv1.ReplicaSet
	for ctx.Err() == nil {
		w, err := h.c.Admin.AppsV1().ReplicaSets("apps").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=web", ResourceVersion: from})
		if err != nil {
			continue
		}
		for ev := range w.ResultChan() {
			rs, ok := ev.Object.(*appsv1.ReplicaSet)
			if !ok {
				continue
			}
			last, from = rs, rs.ResourceVersion
			if cond(rs) {
				w.Stop()
				return rs
			}
		}
		w.Stop()
	}
	var status any
	if last != nil {
		status = last.Status
	}
	t.Fatalf("timed out waiting for %s; last status %+v", what, status)
	return nil
}

// activePods lists the ReplicaSet's pods that are not being deleted.
func (h *harness) activePods(t *testing.T) []corev1.Pod {
	t.Helper()
	list, err := h.c.Admin.CoreV1().Pods("apps").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func nodesOf(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Spec.NodeName)
	}
	slices.Sort(out)
	return out
}

func onNode(pods []corev1.Pod, node string) corev1.Pod {
	for _, p := range pods {
		if p.Spec.NodeName == node {
			return p
		}
	}
	panic("no pod on " + node)
}

// logWatch records the controller's log and lets a test wait for a line.
type logWatch struct {
	logger *zap.Logger
	obs    *observer.ObservedLogs
	mu     sync.Mutex
	more   chan struct{}
}

func newLogWatch(t *testing.T) *logWatch {
	core, obs := observer.New(zapcore.DebugLevel)
	lw := &logWatch{obs: obs, more: make(chan struct{})}
	notify := notifyingCore{Core: core, notify: func() {
		lw.mu.Lock()
		close(lw.more)
		lw.more = make(chan struct{})
		lw.mu.Unlock()
	}}
	lw.logger = zap.New(zapcore.NewTee(notify, zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)).Core()))
	return lw
}

func (lw *logWatch) count(substr string) int {
	n := 0
	for _, e := range lw.obs.All() {
		if strings.Contains(e.Message, substr) {
			n++
		}
	}
	return n
}

func (lw *logWatch) wait(t *testing.T, substr string) {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		lw.mu.Lock()
		more := lw.more
		lw.mu.Unlock()
		if lw.count(substr) > 0 {
			return
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("no log line saying %q", substr)
		}
	}
}

// notifyingCore calls notify after each entry is written.
type notifyingCore struct {
	zapcore.Core
	notify func()
}

func (c notifyingCore) With(f []zapcore.Field) zapcore.Core {
	return notifyingCore{Core: c.Core.With(f), notify: c.notify}
}

func (c notifyingCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c notifyingCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	err := c.Core.Write(e, f)
	c.notify()
	return err
}
