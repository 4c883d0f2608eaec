package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

func TestFindControllerBinariesNamesTheFix(t *testing.T) {
	_, err := controlplane.FindControllerBinaries(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "make controllers") {
		t.Fatalf("FindControllerBinaries on an empty dir: got %v, want an error naming `make controllers`", err)
	}
}

func TestStartControllersRefusesWhatCannotWork(t *testing.T) {
	var cp controlplane.ControlPlane
	for _, tc := range []struct {
		cfg  controlplane.ControllersConfig
		want string
	}{
		{controlplane.ControllersConfig{}, "nothing to start"},
		{controlplane.ControllersConfig{Controllers: []string{"replicaset-controller,deployment-controller"}}, "one controller name per entry"},
		{controlplane.ControllersConfig{Controllers: []string{controlplane.ReplicaSetController}, Scheduler: true}, controlplane.NodeLifecycleController},
	} {
		err := cp.StartControllers(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("StartControllers(%+v): %v; want an error saying %q", tc.cfg, err, tc.want)
		}
	}
}

// The real controllers run against the control plane as in a cluster: a
// new namespace gets its default service account and kube-root-ca.crt; a
// Deployment's pods are created by its ReplicaSet, scheduled onto simulated
// nodes and become ready; a node whose kubelet stops heartbeating is marked
// unreachable and tainted, its pods are evicted and come back on the live
// node; deleting the Deployment deletes its ReplicaSet (the garbage
// collector).
func TestControllersRunTheCluster(t *testing.T) {
	t.Parallel() // as TestIdentities
	cp := controlplane.StartForTest(t, controlplane.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cp.StartControllers(ctx, controlplane.ControllersConfig{
		Controllers: []string{
			controlplane.DeploymentController, controlplane.ReplicaSetController, controlplane.GarbageCollectorController,
			controlplane.ServiceAccountController, controlplane.RootCAPublisherController,
			controlplane.NodeLifecycleController, controlplane.TaintEvictionController,
		},
		Scheduler: true,
		// The defaults (50 s) are for production; the simulated nodes
		// heartbeat every second.
		ControllerManagerArgs: []string{"--node-monitor-grace-period=5s", "--node-monitor-period=1s"},
	}); err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())

	nodes := map[string]context.CancelFunc{}
	for _, name := range []string{"worker-1", "worker-2"} {
		rc, err := cp.NodeConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		n, err := kubeletsim.New(kubeletsim.Config{Name: name, Root: t.TempDir(), RESTConfig: rc, HeartbeatInterval: time.Second, StatusInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		nctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = n.Run(nctx) }()
		t.Cleanup(func() { stop(); <-done })
		nodes[name] = stop
		select {
		case <-n.Registered():
		case <-ctx.Done():
			t.Fatalf("node %s did not register", name)
		}
	}

	const ns = "web"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(ctx, t, "kube-root-ca.crt and the default service account in the new namespace", func() (bool, string) {
		cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if cm.Data["ca.crt"] != string(cp.CACert()) {
			return false, "kube-root-ca.crt holds another CA than the API server's"
		}
		if _, err := admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, err.Error()
		}
		return true, ""
	})

	labels := map[string]string{"app": "web"}
	// Evicted one second after its node is tainted, not after the
	// default five minutes.
	tolerate := func(key string) corev1.Toleration {
		return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](1)}
	}
	if _, err := admin.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				Containers:  []corev1.Container{{Name: "web", Image: "registry.example/web:1"}},
				Tolerations: []corev1.Toleration{tolerate(corev1.TaintNodeNotReady), tolerate(corev1.TaintNodeUnreachable)},
			}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var dead string
	poll(ctx, t, "the Deployment's two pods ready on the simulated nodes", func() (bool, string) {
		d, err := admin.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pods := livePods(ctx, t, admin, ns)
		if d.Status.ReadyReplicas != 2 || len(pods) != 2 {
			return false, fmt.Sprintf("%d ready replicas, pods %v", d.Status.ReadyReplicas, pods)
		}
		for _, node := range pods {
			if nodes[node] == nil {
				return false, fmt.Sprintf("pods %v: one is not on a simulated node", pods)
			}
			dead = node
		}
		return true, ""
	})

	// The kubelet of a node holding a pod dies: no more heartbeats.
	nodes[dead]()
	poll(ctx, t, "node "+dead+" unreachable and tainted", func() (bool, string) {
		n, err := admin.CoreV1().Nodes().Get(ctx, dead, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := corev1.ConditionTrue
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready = c.Status
			}
		}
		tainted := slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool {
			return t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute
		})
		return ready == corev1.ConditionUnknown && tainted, fmt.Sprintf("Ready=%s, taints %v", ready, n.Spec.Taints)
	})
	poll(ctx, t, "the pods evicted from "+dead+" back on the live node", func() (bool, string) {
		pods := livePods(ctx, t, admin, ns)
		d, err := admin.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, node := range pods {
			if node == dead {
				return false, fmt.Sprintf("pods %v", pods)
			}
		}
		return len(pods) == 2 && d.Status.ReadyReplicas == 2, fmt.Sprintf("%d ready replicas, pods %v", d.Status.ReadyReplicas, pods)
	})

	if err := admin.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil {
		t.Fatal(err)
	}
	poll(ctx, t, "the garbage collector deleted the Deployment's ReplicaSet", func() (bool, string) {
		sets, err := admin.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		return len(sets.Items) == 0, fmt.Sprintf("%d ReplicaSets left", len(sets.Items))
	})

	cp.Stop()
	if left := processesNaming(t, cp.Dir()); len(left) > 0 {
		t.Errorf("still running after Stop: %v", left)
	}
}

// processesNaming lists the command lines of this machine's processes
// that mention s (every program of a control plane names its directory).
func processesNaming(t *testing.T, s string) []string {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, path := range cmdlines {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // ended meanwhile
		}
		if cmd := strings.ReplaceAll(string(data), "\x00", " "); strings.Contains(cmd, s) {
			out = append(out, cmd)
		}
	}
	return out
}

// livePods maps the names of the namespace's pods that are not being
// deleted to their nodes.
func livePods(ctx context.Context, t *testing.T, c kubernetes.Interface, ns string) map[string]string {
	t.Helper()
	list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Logf("listing pods in %s: %v", ns, err)
	}
	out := map[string]string{}
	if list == nil {
		return out
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out[p.Name] = p.Spec.NodeName
		}
	}
	return out
}

// poll waits until cond holds; a controller's work shows only in the
// objects it writes.
func poll(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
		ok, msg := cond()
		last = msg
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v; last: %s", what, err, last)
	}
}
