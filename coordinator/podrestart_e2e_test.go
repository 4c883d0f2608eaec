package coordinator_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// Pod restart: only the pods holding old-issuer tokens are evicted, through
// the eviction API, and replaced by the ReplicaSet controller on a node the
// scheduler picks (kube-controller-manager and kube-scheduler). A pod no
// controller would recreate is never evicted: the rollout halts naming it,
// and goes on once an administrator has dealt with it and resumed.
func TestPodRestartEvictsStalePods(t *testing.T) {
	nodes := []string{"node-a", "node-b"}
	e := startEnv(t, 1, nodes...)
	if err := e.cp.StartControllers(e.ctx, controlplane.ControllersConfig{
		Controllers: []string{controlplane.ReplicaSetController, controlplane.NodeLifecycleController}, Scheduler: true,
	}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	labels := map[string]string{"app": "api"}
	if _, err := e.admin.AppsV1().ReplicaSets("build").Create(e.ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.ReplicaSetSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "registry.example/api:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Running means the kubelet wrote their tokens, all of the old issuer.
	// The agents' reports are not waited for: a change in healthy-token
	// counts alone is written back only after a minute.
	e.waitPods("the ReplicaSet's pods running", "app=api", func(pods []*corev1.Pod) bool {
		running := 0
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == 2
	})
	before := e.podUIDs("app=api")
	e.startCoordinator("c1", nil, func(c *coordinator.Config) { c.Strategy = coordinator.PodRestart })
	e.waitObserved(oldIssuer)
	e.restartAPIServers(newIssuer)

	st := e.waitState("the rollout halted on the bare pods", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutHalted
	})
	if st.Rollout.HaltReason != coordinator.HaltDrainFailed || !strings.Contains(st.Rollout.Message, "not managed by a controller") ||
		!strings.Contains(st.Rollout.Message, "build/web-"+st.Rollout.HaltNode) {
		t.Errorf("halt %s: %s; want DrainFailed naming the bare pods", st.Rollout.HaltReason, st.Rollout.Message)
	}
	for _, p := range []string{"nginx-", "web-"} {
		for _, n := range nodes {
			if _, err := e.admin.CoreV1().Pods("build").Get(e.ctx, p+n, metav1.GetOptions{}); err != nil {
				t.Errorf("bare pod %s%s lost: %v", p, n, err)
			}
		}
	}
	// The administrator restarts the bare pods themselves (here: deletes
	// them) and resumes.
	for _, p := range []string{"nginx-", "web-"} {
		for _, n := range nodes {
			if err := e.admin.CoreV1().Pods("build").Delete(e.ctx, p+n, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.steer(coordinator.VerbResume)
	e.waitState("the rollout finished", func(s coordinator.State) bool { return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone })
	e.waitNodes("every token from the new issuer (the replacements may land on either node)", func(m map[string]*corev1.Node) bool {
		total := 0
		for _, name := range nodes {
			rep, err := protocol.ParseTokenReport(m[name].Annotations[protocol.AnnotationTokens])
			if err != nil {
				return false
			}
			for _, it := range rep.Issuers {
				if it.Issuer != newIssuer {
					return false
				}
				total += it.Tokens
			}
		}
		return total == 2
	})
	after := e.podUIDs("app=api")
	if len(after) != 2 {
		t.Fatalf("%d api pods after the rollout, want 2", len(after))
	}
	for uid := range after {
		if before[uid] {
			t.Errorf("pod %s was not restarted", uid)
		}
	}
	s := e.checkInvariants(1)
	for _, n := range nodes {
		if s.ActionsPerNode[n] != 0 || e.fleet.Members[n].KubeletRestarts.Load() != 0 || e.fleet.Members[n].Reboots.Load() != 0 {
			t.Errorf("node %s: a pod restart asked the agent to act", n)
		}
	}
}

// waitPods watches the pods of namespace build matching selector until cond
// holds for them.
func (e *env) waitPods(what, selector string, cond func([]*corev1.Pod) bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	lw := cache.NewFilteredListWatchFromClient(e.admin.CoreV1().RESTClient(), "pods", "build",
		func(o *metav1.ListOptions) { o.LabelSelector = selector })
	pods := map[types.UID]*corev1.Pod{}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			return false, nil
		}
		if ev.Type == watch.Deleted {
			delete(pods, p.UID)
		} else {
			pods[p.UID] = p
		}
		return cond(slices.Collect(maps.Values(pods))), nil
	})
	if err != nil {
		e.t.Fatalf("waiting until %s: %v", what, err)
	}
}

func (e *env) podUIDs(selector string) map[string]bool {
	e.t.Helper()
	pods, err := e.admin.CoreV1().Pods("build").List(e.ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out[string(p.UID)] = true
		}
	}
	return out
}
