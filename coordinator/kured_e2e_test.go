package coordinator_test

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/protocol"
)

// kured holds its lock on node-a: through the real API server (the field
// selector, the watch) the coordinator leaves node-a alone and says why,
// and starts it once kured lets go.
func TestKuredLockThroughTheAPIServer(t *testing.T) {
	e := startEnv(t, 1, "node-a")
	labels := map[string]string{"name": "kured"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "kured", Namespace: "kube-system",
			Annotations: map[string]string{coordinator.AnnotationKuredLock: `{"nodeID":"node-a","metadata":{"unschedulable":false},"created":"2026-11-27T12:00:00Z","TTL":0}`}},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "kured", Image: "registry.example/kured:1"}}}}},
	}
	ds, err := e.admin.AppsV1().DaemonSets("kube-system").Create(e.ctx, ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Auto, c.KuredLock = false, coordinator.DefaultKuredLock
	})
	e.requestStart(coordinator.KubeletRestart, "")
	e.waitState("the rollout waits on kured's lock", func(s coordinator.State) bool {
		// Read, not merely unread: the message names the holder.
		return s.Rollout != nil && s.Waiting != nil && s.Waiting.Reason == coordinator.WaitKuredLock &&
			strings.Contains(s.Waiting.Message, "kuredLock=node-a")
	})
	n, err := e.admin.CoreV1().Nodes().Get(e.ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Annotations[protocol.AnnotationNodeState]; ok || n.Spec.Unschedulable {
		t.Fatalf("node-a touched while it holds kured's lock: unschedulable %v, state %s", n.Spec.Unschedulable, n.Annotations[protocol.AnnotationNodeState])
	}

	delete(ds.Annotations, coordinator.AnnotationKuredLock)
	if _, err := e.admin.AppsV1().DaemonSets("kube-system").Update(e.ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := e.waitState("the rollout done", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase.Final()
	})
	if st.Rollout.Phase != coordinator.RolloutDone {
		t.Errorf("rollout %s: %s", st.Rollout.Phase, st.Rollout.Message)
	}
	e.checkInvariants(1)
}
