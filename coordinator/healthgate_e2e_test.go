package coordinator_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/coordinator"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// The health gate's evictedPodsReady, with the real ReplicaSet and
// Deployment controllers and the real scheduler: a reboot drains n-1,
// whose Deployment pod may then run only on a node labelled web-ok (the
// test takes the label off n-1 once the pod runs there, so the
// replacement stays Pending: taken off as n-1 is cordoned, the label may
// still be on n-1 in the scheduler's cache, its watches just restarted
// with the API server, and the replacement lands back on n-1). The gate holds n-2 while the Deployment's ReplicaSet
// has no Ready replica, and says so; once a node is labelled and the
// replacement is Ready there, it lets n-2 start, and the rollout ends.
func TestPolicyHealthGateWaitsForEvictedPodsReadyElsewhere(t *testing.T) {
	nodes := []string{"n-1", "n-2", "n-3"}
	e := startEnv(t, 1, nodes...)
	if err := e.cp.StartControllers(e.ctx, controlplane.ControllersConfig{
		Controllers: []string{controlplane.DeploymentController, controlplane.ReplicaSetController, controlplane.NodeLifecycleController}, Scheduler: true,
	}); err != nil {
		t.Fatal(err)
	}
	vc := e.installCRDs()
	webOK := func(node string, on bool) {
		t.Helper()
		v := any(nil)
		if on {
			v = "yes"
		}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{"web-ok": v}}})
		if _, err := e.admin.CoreV1().Nodes().Patch(e.ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Error(err)
		}
	}
	webOK("n-1", true)
	labels := map[string]string{"app": "api"}
	one := int32(1)
	if _, err := e.admin.AppsV1().Deployments("build").Create(e.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "registry.example/api:1"}},
					Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
						NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "web-ok", Operator: corev1.NodeSelectorOpIn, Values: []string{"yes"}}}}},
					}}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPods("the Deployment's pod Ready on n-1", "app=api", func(pods []*corev1.Pod) bool {
		return len(pods) == 1 && pods[0].Spec.NodeName == "n-1" && podIsReady(pods[0])
	})
	webOK("n-1", false)
	e.createPolicy(vc, "gated", nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.HealthGate = &v1alpha1.HealthGate{EvictedPodsReady: true}
	})
	// readyWhenN2Started: whether the replacement was Ready, on a node
	// other than n-1, the moment n-2 went out of service.
	var readyWhenN2Started atomic.Value
	e.watchConcurrency(byPrefix, func(node string) {
		if node != "n-2" {
			return
		}
		pods, err := e.admin.CoreV1().Pods("build").List(e.ctx, metav1.ListOptions{LabelSelector: "app=api"})
		ok := err == nil && len(pods.Items) > 0
		for i := range pods.Items {
			p := &pods.Items[i]
			ok = ok && p.DeletionTimestamp == nil && p.Spec.NodeName != "n-1" && podIsReady(p)
		}
		readyWhenN2Started.Store(ok)
	})
	e.policyCoordinator(vc, func(cfg *coordinator.Config) {
		cfg.Strategy = coordinator.Reboot
		cfg.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	e.waitObserved(oldIssuer)
	e.changeIssuer(newIssuer)
	st := e.waitState("n-2 held by the health gate", func(s coordinator.State) bool {
		return s.Waiting != nil && s.Waiting.Reason == coordinator.WaitHealthGate
	})
	if want := "RolloutPolicy gated's health gate waits until the pods evicted from the last node are Ready again: ReplicaSet/build/api-"; !strings.Contains(st.Waiting.Message, want) ||
		!strings.Contains(st.Waiting.Message, "has 0 of 1 replicas ready") {
		t.Errorf("wait %q; want %q naming the ReplicaSet with 0 of 1 replicas ready", st.Waiting.Message, want)
	}
	e.waitNodes("n-1 done, its owners recorded, while n-2 and n-3 wait", func(m map[string]*corev1.Node) bool {
		return readStep(m["n-1"]) == protocol.StepDone && readStep(m["n-2"]) == "" && readStep(m["n-3"]) == ""
	})
	// However long the coordinator looks, n-2 waits for the replacement.
	time.Sleep(3 * time.Second)
	for _, n := range []string{"n-2", "n-3"} {
		node, err := e.admin.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Spec.Unschedulable || readStep(node) != "" {
			t.Errorf("node %s started while the evicted pod was not Ready: step %q", n, readStep(node))
		}
	}
	webOK("n-3", true)
	e.waitState("the rollout completed once the pod was Ready elsewhere", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Issuer == newIssuer && s.Rollout.Phase == coordinator.RolloutDone
	})
	if ok, _ := readyWhenN2Started.Load().(bool); !ok {
		t.Errorf("n-2 started before the Deployment's replacement pod was Ready on another node")
	}
	e.checkInvariants(1)
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
