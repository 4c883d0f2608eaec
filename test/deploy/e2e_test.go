package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	coordinatorapp "github.com/tokenroll/tokenroll/cmd/tokenroll-coordinator/app"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/internal/logging/logtest"
	"github.com/tokenroll/tokenroll/metrics"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// testEndToEnd runs what each component does under its own identity, the
// RBAC and the admission policy as installed: the agent's real scan loop and
// request handler (dry-run executor) on node A, and the coordinator's API
// calls (leader election with client-go's LeaseLock, its TokenRollouts,
// cordon, a request to the agent, a drain's pod listing and eviction, the
// owner checks, Events on a Node, OIDC discovery).
func testEndToEnd(ctx context.Context, t *testing.T, env *clusterEnv) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	coord := env.coordinator

	// The coordinator becomes leader, as coordinator/leader.go does.
	t.Run("coordinator-leader-election", func(t *testing.T) {
		lctx, lcancel := context.WithCancel(ctx)
		defer lcancel()
		led, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			leaderelection.RunOrDie(lctx, leaderelection.LeaderElectionConfig{
				Lock: &resourcelock.LeaseLock{
					LeaseMeta:  metav1.ObjectMeta{Name: "tokenroll-coordinator", Namespace: "tokenroll"},
					Client:     coord.CoordinationV1(),
					LockConfig: resourcelock.ResourceLockConfig{Identity: "deploy-test_1"},
				},
				LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
				ReleaseOnCancel: true,
				Callbacks: leaderelection.LeaderCallbacks{
					OnStartedLeading: func(context.Context) { close(led) },
					OnStoppedLeading: func() {},
				},
			})
		}()
		select {
		case <-led:
		case <-time.After(time.Minute):
			t.Fatal("the coordinator's identity did not acquire the Lease in a minute")
		}
		lcancel()
		<-done
		lease, err := env.admin.CoordinationV1().Leases("tokenroll").Get(ctx, "tokenroll-coordinator", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h := lease.Spec.HolderIdentity; h == nil || *h != "" {
			t.Errorf("the Lease was not released (holder %v): update denied?", h)
		}
	})

	// The rollout record: a TokenRollout per rollout, whose status the
	// coordinator writes through the status subresource; it creates the
	// TokenRollout of a rollout it plans and deletes finished ones beyond
	// its history. The ConfigMap of a coordinator from before is read once
	// and deleted.
	rollouts := versioned.NewForConfigOrDie(env.coordinatorCfg).TokenrollV1alpha1().TokenRollouts()
	adminRollouts := versioned.NewForConfigOrDie(env.cp.AdminConfig()).TokenrollV1alpha1().TokenRollouts()
	t.Run("coordinator-state", func(t *testing.T) {
		var ro *v1alpha1.TokenRollout
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			// A CRD just applied is served a moment later: tried again.
			var err error
			ro, err = rollouts.Create(ctx, &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: "deploy-test"}}, metav1.CreateOptions{})
			if apierrors.IsForbidden(err) {
				return false, err
			}
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("creating a TokenRollout: %v", err)
		}
		ro.Status.Phase, ro.Status.StartTime = v1alpha1.PhaseRunning, &metav1.Time{Time: time.Now()}
		if _, err := rollouts.UpdateStatus(ctx, ro, metav1.UpdateOptions{}); err != nil {
			t.Errorf("writing a TokenRollout's status: %v", err)
		}
		if _, err := rollouts.Get(ctx, ro.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("reading a TokenRollout: %v", err)
		}
		if _, err := rollouts.List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("listing the TokenRollouts (its informer): %v", err)
		}
		if w, err := rollouts.Watch(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("watching the TokenRollouts (its informer): %v", err)
		} else {
			w.Stop()
		}
		spec := ro.DeepCopy()
		spec.Spec.State = v1alpha1.StatePaused
		_, err = rollouts.Update(ctx, spec, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the coordinator changing a TokenRollout's spec: %v, want RBAC's refusal", err)
		}
		if err := rollouts.Delete(ctx, ro.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("deleting a TokenRollout: %v", err)
		}

		cms := env.admin.CoreV1().ConfigMaps("tokenroll")
		if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-rollout"}, Data: map[string]string{"state": "{}"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		legacy := coord.CoreV1().ConfigMaps("tokenroll")
		if _, err := legacy.Get(ctx, "tokenroll-rollout", metav1.GetOptions{}); err != nil {
			t.Errorf("reading the ConfigMap of a coordinator from before: %v", err)
		}
		if err := legacy.Delete(ctx, "tokenroll-rollout", metav1.DeleteOptions{}); err != nil {
			t.Errorf("deleting the ConfigMap of a coordinator from before: %v", err)
		}
	})

	// The agent on node A: its scan loop sets the condition and the tokens
	// annotation; its handler carries out a request the coordinator writes.
	reg := metrics.NewRegistry("agent")
	ag, err := agent.New(agent.Config{NodeName: nodeA, KubeletRoot: t.TempDir(), Client: env.agent.CoreV1().Nodes(), Discovery: env.agent.CoreV1().RESTClient(),
		Interval: time.Hour, Grace: 5 * time.Minute, IssuerRefresh: time.Hour, MaxTokenSeries: 100, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	handler, err := actions.NewHandler(actions.HandlerConfig{NodeName: nodeA, Executor: actions.DryRun{Log: zap.NewNop()},
		StateDir: t.TempDir(), MaxRequestAge: time.Hour, Reporter: actions.NodeReporter{Client: env.agent.CoreV1().Nodes(), NodeName: nodeA}, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := actions.NewWatcher(actions.WatcherConfig{Client: env.agent.CoreV1().Nodes(), NodeName: nodeA, Handler: handler})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- ag.Run(ctx) }()
	go func() { errs <- watcher.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}()

	t.Run("agent-reports", func(t *testing.T) {
		var node *corev1.Node
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			node, err = env.admin.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			i := slices.IndexFunc(node.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == protocol.ConditionTokensStale })
			return i >= 0 && node.Status.Conditions[i].Reason == "TokensFresh" && node.Annotations[protocol.AnnotationTokens] != "", nil
		})
		if err != nil {
			t.Fatalf("the agent did not report on its Node (conditions %+v, annotations %v): %v", node.Status.Conditions, node.Annotations, err)
		}
		body := scrape(t, reg)
		for _, want := range []string{"tokenroll_expected_issuer_known 1"} {
			if !strings.Contains(body, want) {
				t.Errorf("agent metrics lack %q: OIDC discovery refused?", want)
			}
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "tokenroll_scan_errors_total{") && !strings.HasSuffix(line, " 0") {
				t.Errorf("agent scan error: %s", line)
			}
		}
	})

	t.Run("agent-carries-out-a-request", func(t *testing.T) {
		select {
		case <-watcher.Synced():
		case <-time.After(time.Minute):
			t.Fatal("the agent's watch on its own Node did not sync: list/watch refused?")
		}
		req, _ := json.Marshal(protocol.Request{ID: "r-deploy-test", Action: protocol.ActionKubeletRestart, Node: nodeA, CreatedAt: time.Now().UTC()})
		if _, err := coord.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(protocol.AnnotationRequest, string(req)), metav1.PatchOptions{}); err != nil {
			t.Fatalf("the coordinator writing a request on node A: %v", err)
		}
		var status protocol.Status
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			node, err := env.admin.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			status, _ = protocol.ParseStatus(node.Annotations[protocol.AnnotationStatus])
			return status.ID == "r-deploy-test" && status.Phase.Final(), nil
		})
		if err != nil || status.Phase != protocol.PhaseDone {
			t.Fatalf("request status %+v, want done: %v", status, err)
		}
	})

	// promtool's lint of the agent's real /metrics output.
	t.Run("agent-metrics-lint", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(tools(t), "promtool"), "check", "metrics")
		cmd.Stdin = strings.NewReader(scrape(t, reg))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("coordinator-cordon", func(t *testing.T) {
		nodes := coord.CoreV1().Nodes()
		if _, err := nodes.List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("listing Nodes: %v", err)
		}
		w, err := nodes.Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("watching Nodes: %v", err)
		} else {
			w.Stop()
		}
		for _, v := range []bool{true, false} {
			if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, mergePatch(map[string]any{"spec": map[string]any{"unschedulable": v}}), metav1.PatchOptions{}); err != nil {
				t.Errorf("setting node B unschedulable=%v: %v", v, err)
			}
		}
		if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch(protocol.AnnotationNodeState, `{"rollout":"r","step":"done"}`), metav1.PatchOptions{}); err != nil {
			t.Errorf("recording node B's state: %v", err)
		}
	})

	t.Run("coordinator-drain", func(t *testing.T) {
		pod, err := env.admin.CoreV1().Pods(appNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.PodSpec{NodeName: nodeB, Containers: []corev1.Container{{Name: "web", Image: "registry.example/web"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		onB := metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeB}
		list, err := coord.CoreV1().Pods("").List(ctx, onB)
		if err != nil || !slices.ContainsFunc(list.Items, func(p corev1.Pod) bool { return p.Name == "web" }) {
			t.Errorf("listing node B's pods: %v", err)
		}
		if w, err := coord.CoreV1().Pods("").Watch(ctx, onB); err != nil {
			t.Errorf("watching node B's pods: %v", err)
		} else {
			w.Stop()
		}
		if _, err := coord.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "component=kube-apiserver"}); err != nil {
			t.Errorf("listing the kube-apiserver mirror pods (static-pods gate): %v", err)
		}
		if _, err := coord.CoreV1().Pods(appNS).Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Errorf("reading a pod: %v", err)
		}
		if err := coord.CoreV1().Pods(appNS).EvictV1(ctx, evictionFor(appNS, pod.Name)); err != nil {
			t.Errorf("evicting a pod: %v", err)
		}
		if _, err := coord.AppsV1().DaemonSets("tokenroll").Get(ctx, "tokenroll-agent", metav1.GetOptions{}); err != nil {
			t.Errorf("reading a DaemonSet: %v", err)
		}
		_, rs := coord.AppsV1().ReplicaSets(appNS).Get(ctx, "web-1", metav1.GetOptions{})
		_, ss := coord.AppsV1().StatefulSets(appNS).Get(ctx, "db", metav1.GetOptions{})
		for what, err := range map[string]error{"ReplicaSet": rs, "StatefulSet": ss} {
			if !apierrors.IsNotFound(err) {
				t.Errorf("reading a %s: %v, want NotFound (allowed, absent)", what, err)
			}
		}
	})

	// The static-pods gate under the coordinator's identity, on a real API
	// server: its informers on kube-system's kube-apiserver pods and the
	// kubernetes Service's EndpointSlices sync (the RBAC allows them); a pod
	// anyone allowed to create pods in kube-system can make is ignored; a
	// mirror pod whose status (the kubelet's to write) puts it on the
	// Service's endpoint opens the gate. This control plane reconciles no
	// endpoints and runs no kubelet: the test writes what they would.
	t.Run("coordinator-static-pods-gate", func(t *testing.T) {
		bg := context.Background()
		// An address in a documentation range: an object's field, never dialled
		// (the API server refuses loopback endpoints).
		const apiserverAddr = "192.0.2.10"
		mirror := func(node, issuer string) *corev1.Pod {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kube-apiserver-" + node, Namespace: "kube-system",
				Labels:          map[string]string{"component": "kube-apiserver"},
				Annotations:     map[string]string{"kubernetes.io/config.mirror": "0123abcd"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID("uid-" + node)}}},
				Spec: corev1.PodSpec{NodeName: node, HostNetwork: true, AutomountServiceAccountToken: new(false),
					Containers: []corev1.Container{{Name: "kube-apiserver", Image: "registry.example/kube-apiserver",
						Command: []string{"kube-apiserver", "--service-account-issuer=" + issuer}}}}}
		}
		pods := env.admin.CoreV1().Pods("kube-system")
		forged := mirror(nodeB, "https://forged.example")
		if _, err := pods.Create(ctx, forged, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pods.Delete(bg, forged.Name, metav1.DeleteOptions{}) }()
		slices := env.admin.DiscoveryV1().EndpointSlices("default")
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
			AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{apiserverAddr}, Conditions: discoveryv1.EndpointConditions{Ready: new(true)}}}}
		if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = slices.Delete(bg, slice.Name, metav1.DeleteOptions{}) }()

		gate, err := coordinator.NewGate(ctx, coordinator.GateAuto, coord, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st := gate.State(); st.Provider != coordinator.GateNone {
			t.Errorf("--gate=auto with only a forged mirror pod picked %s, want none", st.Provider)
		}
		gate, err = coordinator.NewGate(ctx, coordinator.GateStaticPods, coord, nil)
		if err != nil {
			t.Fatal(err)
		}
		gctx, stop := context.WithTimeout(ctx, 30*time.Second)
		defer stop()
		changed := make(chan struct{}, 100)
		if err := gate.Start(gctx, func() { changed <- struct{}{} }); err != nil {
			t.Fatalf("the coordinator's identity cannot run the static-pods gate: %v", err)
		}
		if st := gate.State(); st.Open || !strings.Contains(st.Message, "no kube-apiserver mirror pods") || !strings.Contains(st.Message, "1 other pod labelled component=kube-apiserver ignored") {
			t.Errorf("static-pods gate: %+v; want closed, no mirror pods, the forged one ignored", st)
		}

		real, err := pods.Create(ctx, mirror(nodeA, "https://real.example"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pods.Delete(bg, real.Name, metav1.DeleteOptions{}) }()
		real.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: apiserverAddr, HostIPs: []corev1.HostIP{{IP: apiserverAddr}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := pods.UpdateStatus(ctx, real, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for st := gate.State(); !st.Open; st = gate.State() {
			select {
			case <-changed:
			case <-gctx.Done():
				t.Fatalf("the gate did not open on the mirror pod behind the kubernetes Service: %+v", st)
			}
		}
		if st := gate.State(); st.SigningIssuer != "https://real.example" {
			t.Errorf("static-pods gate: %+v; want open, signing with the mirror pod's issuer", st)
		}
	})

	t.Run("coordinator-events", func(t *testing.T) {
		b := events.NewBroadcaster(&events.EventSinkImpl{Interface: coord.EventsV1()})
		b.StartRecordingToSink(ctx.Done())
		defer b.Shutdown()
		rec := b.NewRecorder(scheme.Scheme, "tokenroll-coordinator")
		node, err := env.admin.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rec.Eventf(node, nil, corev1.EventTypeNormal, "Cordoned", "Cordon", "cordoned by the deploy test")
		ro, err := adminRollouts.Get(ctx, "deploy-test", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// As the coordinator refers to its rollout: cluster-scoped, so the
		// Event is in namespace default.
		rec.Eventf(&corev1.ObjectReference{Kind: "TokenRollout", Name: ro.Name, UID: ro.UID, APIVersion: v1alpha1.SchemeGroupVersion.String()},
			nil, corev1.EventTypeNormal, "RolloutPlanned", "Plan", "planned by the deploy test")
		for _, reason := range []string{"Cordoned", "RolloutPlanned"} {
			const ns = "default"
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				list, err := env.admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
				return err == nil && slices.ContainsFunc(list.Items, func(e eventsv1.Event) bool { return e.Reason == reason }), err
			})
			if err != nil {
				t.Errorf("no %s Event in namespace %s: recording refused? %v", reason, ns, err)
			}
		}
	})

	// Last, the real coordinator command, as its Deployment runs it, under
	// its own identity: it must win the Lease, find its gate and keep its
	// state without one refused request.
	t.Run("coordinator-command", func(t *testing.T) {
		// What the steps above left would read as another rollout's.
		if err := adminRollouts.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.admin.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(protocol.AnnotationNodeState, nil), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		// A person's request, which the coordinator answers in the status:
		// a dry run, so nothing is cordoned.
		request, err := adminRollouts.Create(ctx, &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: "deploy-test-request"},
			Spec: v1alpha1.TokenRolloutSpec{NodeNames: []string{nodeB}, DryRun: true}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
		if err := controlplane.WriteKubeconfig(kubeconfig, env.coordinatorCfg); err != nil {
			t.Fatal(err)
		}
		_, dep := workloads(t, findRendering("kustomize-base"))
		var args []string
		for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
			switch {
			case strings.HasPrefix(a, "--metrics-bind-address="):
				a = "--metrics-bind-address=127.0.0.1:0"
			case strings.HasPrefix(a, "--namespace="):
				a = "--namespace=tokenroll"
			}
			args = append(args, a)
		}
		args = append(args, "--kubeconfig="+kubeconfig)
		cctx, ccancel := context.WithCancel(ctx)
		defer ccancel()
		var logs logtest.Buffer
		exit := make(chan int, 1)
		go func() { exit <- cli.Execute(cctx, coordinatorapp.NewCommand(io.Discard, &logs), args) }()
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			select {
			case code := <-exit:
				exit <- code
				return false, fmt.Errorf("tokenroll-coordinator exited with status %d", code)
			default:
			}
			lease, err := env.admin.CoordinationV1().Leases("tokenroll").Get(ctx, "tokenroll-coordinator", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if h := lease.Spec.HolderIdentity; h == nil || *h == "" {
				return false, nil
			}
			ro, err := adminRollouts.Get(ctx, request.Name, metav1.GetOptions{})
			return err == nil && ro.Status.Phase != "", nil
		})
		if err != nil {
			t.Errorf("the coordinator did not take the Lease and write the status of the rollout asked for: %v", err)
		}
		// A few rounds of its loops.
		time.Sleep(3 * time.Second)
		ccancel()
		select {
		case code := <-exit:
			if code != 0 {
				t.Errorf("tokenroll-coordinator exited with status %d", code)
			}
		case <-time.After(30 * time.Second):
			t.Error("tokenroll-coordinator did not stop within 30s of its context ending")
		}
		out := logs.String()
		if strings.Contains(out, "forbidden") || strings.Contains(out, "Forbidden") {
			t.Errorf("the coordinator was refused something:\n%s", out)
		}
		if t.Failed() {
			t.Logf("coordinator log:\n%s", out)
		}
	})

	t.Run("oidc-discovery", func(t *testing.T) {
		for who, client := range map[string]rest.Interface{"agent": env.agent.Discovery().RESTClient(), "coordinator": coord.Discovery().RESTClient()} {
			if _, err := client.Get().AbsPath(issuer.DiscoveryPath).DoRaw(ctx); err != nil {
				t.Errorf("%s reading %s: %v", who, issuer.DiscoveryPath, err)
			}
		}
	})
}

// scrape is the registry's /metrics output.
func scrape(t testing.TB, reg *prometheus.Registry) string {
	t.Helper()
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rr.Code)
	}
	return rr.Body.String()
}
