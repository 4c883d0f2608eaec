package coordinator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// auto against a real API server: after the kubelet restarts, the pod app
// detection finds app-stale is evicted through the eviction API, and a
// PodDisruptionBudget that allows no disruption holds it: the eviction
// waits until --drain-timeout, then the rollout halts with the budget's
// refusal as the reason. The pod is still there, no node rebooted, and
// no other pod was touched.
func TestAutoAppStalePodBehindAPDBHaltsWithTheReason(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	nodes := []string{"node-a", "node-b"}
	e := startEnv(t, 1, nodes...)
	if err := e.cp.StartControllers(e.ctx, controlplane.ControllersConfig{
		Controllers: []string{controlplane.ReplicaSetController, controlplane.NodeLifecycleController, controlplane.DisruptionController}, Scheduler: true,
	}); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	labels := map[string]string{"app": "legacy"}
	if _, err := e.admin.AppsV1().ReplicaSets("build").Create(e.ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy"},
		Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "legacy", Image: "registry.example/legacy:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	minAvail := intstr.FromInt32(1)
	if _, err := e.admin.PolicyV1().PodDisruptionBudgets("build").Create(e.ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvail, Selector: &metav1.LabelSelector{MatchLabels: labels}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var legacy *corev1.Pod
	e.waitPods("the legacy pod running", "app=legacy", func(pods []*corev1.Pod) bool {
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning {
				legacy = p
				return true
			}
		}
		return false
	})
	// Until the disruption controller has processed the budget, the API
	// server asks evictions to come back later, which client-go does by
	// itself: the refusal would never reach the coordinator.
	if err := wait.PollUntilContextCancel(e.ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pdb, err := e.admin.PolicyV1().PodDisruptionBudgets("build").Get(ctx, "legacy", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.CurrentHealthy == 1 && pdb.Status.DisruptionsAllowed == 0, nil
	}); err != nil {
		t.Fatalf("the disruption controller never processed the budget: %v", err)
	}
	before := e.podUIDs("")
	run := e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Strategy, c.DrainTimeout = coordinator.Auto, 6*time.Second
		c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Log: e.log.Named("drain")}
		c.Apps = &apps.Options{Grace: 2 * time.Minute, Window: 15 * time.Minute, Interval: time.Second}
	})
	e.waitObserved(oldIssuer)
	// What the audit stream says of the legacy pod's app: its node's
	// kubelet replaced its token five minutes ago, and it keeps presenting
	// the one before. (The events' times are in the past; the detector
	// takes them as they come.)
	node := legacy.Spec.NodeName
	ref := audit.PodRef{Namespace: legacy.Namespace, Name: legacy.Name, UID: legacy.UID}
	issued := func(jti string, at time.Time) audit.Event {
		return audit.Event{Kind: audit.Issued, Time: at, User: "system:node:" + node, Code: 201, Pod: ref, JTI: jti}
	}
	presented := audit.PodRef{Namespace: legacy.Namespace, Name: legacy.Name, UID: legacy.UID, Node: node}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for {
			now := time.Now()
			run.c.Observe(issued("jti-1", now.Add(-10*time.Minute)))
			run.c.Observe(issued("jti-2", now.Add(-5*time.Minute)))
			run.c.Observe(audit.Event{Kind: audit.Presented, Time: now, Code: 200, Pod: presented, JTI: "jti-1"})
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	e.restartAPIServers(newIssuer)

	st := e.waitState("the rollout halted on the legacy pod's budget", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutHalted
	})
	if st.Rollout.Strategy != coordinator.Auto || st.Rollout.HaltReason != coordinator.HaltDrainTimeout || st.Rollout.HaltNode != node ||
		!strings.Contains(st.Rollout.Message, "evicting pod build/"+legacy.Name) || !strings.Contains(st.Rollout.Message, "disruption budget") {
		t.Errorf("halted %s on %s: %s; want DrainTimeout on %s naming the legacy pod and its disruption budget", st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message, node)
	}
	n, err := e.admin.CoreV1().Nodes().Get(e.ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err != nil || s.Step != protocol.StepHalted || s.Rung != coordinator.KubeletRestart || n.Spec.Unschedulable {
		t.Errorf("node %s: state %+v (%v), unschedulable %v; want halted after its kubelet restart, schedulable", node, s, err, n.Spec.Unschedulable)
	}
	after := e.podUIDs("")
	for uid := range before {
		if !after[uid] {
			t.Errorf("pod %s was evicted; only the legacy pod may be, and its budget holds it", uid)
		}
	}
	s := e.checkInvariants(1)
	for _, name := range nodes {
		if r := e.fleet.Members[name].Reboots.Load(); r != 0 {
			t.Errorf("node %s rebooted %d times", name, r)
		}
	}
	if s.ActionsPerNode[node] != 1 || e.fleet.Members[node].KubeletRestarts.Load() != 1 {
		t.Errorf("node %s: %d actions, %d kubelet restarts; want the one kubelet restart", node, s.ActionsPerNode[node], e.fleet.Members[node].KubeletRestarts.Load())
	}
}
