package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// warnings collects the API server's warnings (deprecations, Pod Security).
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// applier applies unstructured objects with server-side apply, strict field
// validation and, when asked, dryRun=All.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t testing.TB, cfg *rest.Config) *applier {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

func (a *applier) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset()
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return a.dyn.Resource(m.Resource), nil
}

func (a *applier) apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
	ri, err := a.resource(obj)
	if err != nil {
		return err
	}
	data, err := json.Marshal(obj.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "tokenroll-deploy-test", Force: ptr.To(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
	return err
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs installs the pinned prometheus-operator and OpenShift CRDs
// (test/deploy/tools/build.sh) and waits until they are served.
func installCRDs(ctx context.Context, t testing.TB, a *applier, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "crds", "*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("CRDs in %s: %v %v", dir, files, err)
	}
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeObjects(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			if err := a.apply(ctx, o, false); err != nil {
				t.Fatalf("installing CRD %s from %s: %v", o.GetName(), f, err)
			}
			names = append(names, o.GetName())
		}
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			crd, err := a.dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
	}
	a.mapper.Reset()
}

// TestCluster applies the manifests to a real API server: every rendering
// with server-side dry-run, then the base for real, whose admission policy
// and RBAC are exercised with the agent's and the coordinator's own tokens.
func TestCluster(t *testing.T) {
	dir := tools(t)
	cp := controlplane.StartForTest(t, controlplane.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	warn := &warnings{}
	adminCfg := cp.AdminConfig()
	adminCfg.WarningHandler = warn
	admin := kubernetes.NewForConfigOrDie(adminCfg)
	a := newApplier(t, adminCfg)
	installCRDs(ctx, t, a, dir)
	warn.take()

	// The namespaces must exist for a dry-run of what goes in them: the
	// kustomize one as rendered, the Helm one as deploy/README.md says.
	ns := find(t, render(t, findRendering("kustomize-base")), "Namespace", "tokenroll")
	if err := a.apply(ctx, ns, false); err != nil {
		t.Fatal(err)
	}
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "tokenroll-system", Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tokenroll", "tokenroll-system"} {
		if err := cp.PrepareNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("dry-run", func(t *testing.T) {
		for _, r := range renderings {
			t.Run(r.name, func(t *testing.T) {
				for _, o := range render(t, r) {
					if err := a.apply(ctx, o, true); err != nil {
						t.Errorf("%s: rejected: %v", objectKey(o), err)
					}
				}
				if w := warn.take(); len(w) > 0 {
					t.Errorf("warnings from the API server:\n%s", strings.Join(w, "\n"))
				}
			})
		}
	})
	if t.Failed() {
		return
	}

	base := render(t, findRendering("kustomize-base"))
	for _, o := range base {
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatalf("applying %s: %v", objectKey(o), err)
		}
	}

	// The policy's CEL, type-checked against the API server's schemas (what
	// kube-controller-manager reports in the policy's status; this control
	// plane runs none). Without this a misspelt field would compile, read as
	// absent and check nothing.
	t.Run("policy-type-checked", func(t *testing.T) {
		kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
		if err := controlplane.WriteKubeconfig(kubeconfig, cp.AdminConfig()); err != nil {
			t.Fatal(err)
		}
		for _, r := range renderings {
			for _, o := range render(t, r) {
				if o.GetKind() != "ValidatingAdmissionPolicy" {
					continue
				}
				data, err := json.Marshal(o.Object)
				if err != nil {
					t.Fatal(err)
				}
				if out, err := typecheck(kubeconfig, data); err != nil {
					t.Errorf("%s: %s: %v\n%s", r.name, objectKey(o), err, out)
				}
			}
		}
		// The check itself works: a misspelt field is reported.
		o := find(t, base, "ValidatingAdmissionPolicy", "tokenroll-agent-own-node")
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(data), "status.?addresses", "status.?adresses", 1)
		if out, err := typecheck(kubeconfig, []byte(bad)); err == nil || !strings.Contains(string(out), "adresses") {
			t.Errorf("a policy reading status.adresses passed type checking: %v\n%s", err, out)
		}
	})

	env := newClusterEnv(ctx, t, cp, admin, base)
	t.Run("policy", func(t *testing.T) { testPolicy(ctx, t, env) })
	t.Run("agent-status-fields", func(t *testing.T) { testAgentStatusFields(ctx, t, env) })
	t.Run("coordinator-policy", func(t *testing.T) { testCoordinatorPolicy(ctx, t, env) })
	t.Run("protocol-annotations", func(t *testing.T) { testProtocolAnnotations(ctx, t, env) })
	t.Run("missing-binding", func(t *testing.T) { testMissingBinding(ctx, t, env) })
	t.Run("renamed-namespace", func(t *testing.T) { testRenamedNamespace(ctx, t, env, a, base) })
	t.Run("agent", func(t *testing.T) { testAgentRBAC(ctx, t, env) })
	t.Run("coordinator", func(t *testing.T) { testCoordinatorRBAC(ctx, t, env) })
	t.Run("end-to-end", func(t *testing.T) { testEndToEnd(ctx, t, env) })
}

// clusterEnv is the cluster the identity tests run in: nodes A and B, the
// agent's pod on A, and clients for every identity.
type clusterEnv struct {
	cp       *controlplane.ControlPlane
	admin    kubernetes.Interface
	agentPod *corev1.Pod
	// agent authenticates as the agent's pod on node A (a pod-bound token,
	// carrying the node's name); agentUnbound as its service account with a
	// token bound to nothing.
	agent, agentUnbound, coordinator kubernetes.Interface
	agentCfg, coordinatorCfg         *rest.Config
	dir                              string
}

const (
	nodeA = "node-a"
	nodeB = "node-b"
	appNS = "apps"
)

func newClusterEnv(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, admin kubernetes.Interface, base []*unstructured.Unstructured) *clusterEnv {
	t.Helper()
	for _, name := range []string{nodeA, nodeB} {
		node, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
			Annotations: map[string]string{"example.com/owner": "platform"},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.Now()
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}, {Type: corev1.NodeHostName, Address: name}}
		if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's pod, exactly as its DaemonSet would make it, on node A.
	ds := toTyped[appsv1.DaemonSet](t, find(t, base, "DaemonSet", "tokenroll-agent"))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent-a", Namespace: ds.Namespace, Labels: ds.Spec.Template.Labels},
		Spec: *ds.Spec.Template.Spec.DeepCopy()}
	pod.Spec.NodeName = nodeA
	pod, err := admin.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the agent's pod from its DaemonSet's template: %v", err)
	}
	env := &clusterEnv{cp: cp, admin: admin, agentPod: pod, dir: t.TempDir()}
	if env.agentCfg, err = cp.PodServiceAccountConfig(ctx, pod, time.Hour); err != nil {
		t.Fatal(err)
	}
	unbound, err := cp.ServiceAccountConfig(ctx, ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dep := toTyped[appsv1.Deployment](t, find(t, base, "Deployment", "tokenroll-coordinator"))
	if env.coordinatorCfg, err = cp.ServiceAccountConfig(ctx, dep.Namespace, dep.Spec.Template.Spec.ServiceAccountName, time.Hour); err != nil {
		t.Fatal(err)
	}
	env.agent = kubernetes.NewForConfigOrDie(env.agentCfg)
	env.agentUnbound = kubernetes.NewForConfigOrDie(unbound)
	env.coordinator = kubernetes.NewForConfigOrDie(env.coordinatorCfg)
	if err := cp.PrepareNamespace(ctx, appNS); err != nil {
		t.Fatal(err)
	}
	// The policy takes effect once the API server's informers have it: wait
	// until a dry-run of a write it forbids is refused.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := env.agent.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"annotations":{"tokenroll.io/tokens":"{}"}}}`),
			metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy"), nil
	})
	if err != nil {
		t.Fatalf("the admission policy never took effect: %v", err)
	}
	return env
}

// typecheck runs `render vap-typecheck` on a policy.
func typecheck(kubeconfig string, policy []byte) ([]byte, error) {
	cmd := exec.Command(filepath.Join(toolsDir, "render"), "vap-typecheck", kubeconfig)
	cmd.Stdin = bytes.NewReader(policy)
	return cmd.CombinedOutput()
}

// expectPolicyDenied checks that err is the admission policy's refusal
// saying want.
func expectPolicyDenied(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed, want the admission policy to refuse it", what)
	case !strings.Contains(err.Error(), "ValidatingAdmissionPolicy 'tokenroll-agent-own-node'") || !strings.Contains(err.Error(), want):
		t.Errorf("%s: %v, want the admission policy's refusal saying %q", what, err, want)
	}
}

// expectForbidden checks that err is RBAC's refusal.
func expectForbidden(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed, want RBAC to refuse it", what)
	case !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "cannot"):
		t.Errorf("%s: %v, want RBAC's refusal", what, err)
	}
}

func mergePatch(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func annotationPatch(key string, value any) []byte {
	return mergePatch(map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: value}}})
}

func conditionPatch(typ, status string) []byte {
	now := time.Now().UTC().Format(time.RFC3339)
	return mergePatch(map[string]any{"status": map[string]any{"conditions": []map[string]any{{
		"type": typ, "status": status, "reason": "TokensExpired", "message": "1 expired",
		"lastHeartbeatTime": now, "lastTransitionTime": now,
	}}}})
}

// testPolicy: the agent of node A changes node A's annotations and
// condition, and nothing else anywhere.
func testPolicy(ctx context.Context, t *testing.T, env *clusterEnv) {
	nodes := env.agent.CoreV1().Nodes()
	before, err := env.admin.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Allowed: what the agent does.
	for _, key := range []string{"tokenroll.io/tokens", "tokenroll.io/request-status", "tokenroll.io/reboot-required"} {
		if _, err := nodes.Patch(ctx, nodeA, types.MergePatchType, annotationPatch(key, "true"), metav1.PatchOptions{}); err != nil {
			t.Errorf("the agent setting %s on its own Node: %v", key, err)
		}
		if _, err := nodes.Patch(ctx, nodeA, types.MergePatchType, annotationPatch(key, nil), metav1.PatchOptions{}); err != nil {
			t.Errorf("the agent removing %s from its own Node: %v", key, err)
		}
	}
	if _, err := nodes.Patch(ctx, nodeA, types.StrategicMergePatchType, conditionPatch("ServiceAccountTokensStale", "True"), metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("the agent setting ServiceAccountTokensStale on its own Node: %v", err)
	}

	// Denied by the policy.
	_, err = nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch("tokenroll.io/tokens", "{}"), metav1.PatchOptions{})
	expectPolicyDenied(t, "annotating node B", err, "may change only that Node, not node-b")
	_, err = nodes.Patch(ctx, nodeB, types.StrategicMergePatchType, conditionPatch("ServiceAccountTokensStale", "True"), metav1.PatchOptions{}, "status")
	expectPolicyDenied(t, "setting node B's condition", err, "may change only that Node, not node-b")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, mergePatch(map[string]any{"metadata": map[string]any{"labels": map[string]any{"node-role.kubernetes.io/control-plane": ""}}}), metav1.PatchOptions{})
	expectPolicyDenied(t, "labelling node A", err, "labels")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, mergePatch(map[string]any{"metadata": map[string]any{"labels": map[string]any{"kubernetes.io/os": nil}}}), metav1.PatchOptions{})
	expectPolicyDenied(t, "removing a label of node A", err, "labels")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
	expectPolicyDenied(t, "cordoning node A", err, "spec")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, []byte(`{"spec":{"taints":[{"key":"evil","effect":"NoExecute"}]}}`), metav1.PatchOptions{})
	expectPolicyDenied(t, "tainting node A", err, "spec")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, annotationPatch("example.com/owner", "attacker"), metav1.PatchOptions{})
	expectPolicyDenied(t, "changing another annotation of node A", err, "annotations")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, annotationPatch("example.com/owner", nil), metav1.PatchOptions{})
	expectPolicyDenied(t, "removing another annotation of node A", err, "annotations")
	for _, key := range []string{"tokenroll.io/request", "tokenroll.io/node-state"} {
		_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, annotationPatch(key, `{"id":"forged"}`), metav1.PatchOptions{})
		expectPolicyDenied(t, "writing the coordinator's "+key+" on node A", err, "annotations")
	}
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, mergePatch(map[string]any{"metadata": map[string]any{"finalizers": []string{"example.com/block"}}}), metav1.PatchOptions{})
	expectPolicyDenied(t, "adding a finalizer to node A", err, "finalizers")
	_, err = nodes.Patch(ctx, nodeA, types.StrategicMergePatchType, conditionPatch("Ready", "False"), metav1.PatchOptions{}, "status")
	expectPolicyDenied(t, "setting node A's Ready condition", err, "ServiceAccountTokensStale condition")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, []byte(`{"status":{"addresses":[{"type":"InternalIP","address":"203.0.113.66"}]}}`), metav1.PatchOptions{}, "status")
	expectPolicyDenied(t, "changing node A's addresses", err, "in a Node's status")
	_, err = nodes.Patch(ctx, nodeA, types.MergePatchType, []byte(`{"status":{"capacity":{"pods":"1000"}}}`), metav1.PatchOptions{}, "status")
	expectPolicyDenied(t, "changing node A's capacity", err, "in a Node's status")
	// A token of the agent's service account that is not bound to a pod
	// names no node, and may change none.
	_, err = env.agentUnbound.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch("tokenroll.io/tokens", "{}"), metav1.PatchOptions{})
	expectPolicyDenied(t, "annotating node A with an unbound token", err, "names none")

	// Denied by RBAC.
	expectForbidden(t, "deleting node A", nodes.Delete(ctx, nodeA, metav1.DeleteOptions{}))
	_, err = nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-c"}}, metav1.CreateOptions{})
	expectForbidden(t, "creating a node", err)
	a, err := nodes.Get(ctx, nodeA, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = nodes.Update(ctx, a, metav1.UpdateOptions{})
	expectForbidden(t, "updating (PUT) node A", err)

	// Nothing of the refused requests stuck.
	a, err = env.admin.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Spec.Unschedulable || slices.ContainsFunc(a.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "evil" }) || a.Labels["kubernetes.io/os"] != "linux" || len(a.Labels) != 2 ||
		a.Annotations["example.com/owner"] != "platform" || a.Annotations["tokenroll.io/request"] != "" || len(a.Finalizers) > 0 ||
		a.Status.Addresses[0].Address != "192.0.2.1" {
		t.Errorf("node A changed: labels %v, annotations %v, spec %+v, finalizers %v, addresses %v", a.Labels, a.Annotations, a.Spec, a.Finalizers, a.Status.Addresses)
	}
	if i := slices.IndexFunc(a.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == corev1.NodeReady }); i < 0 || a.Status.Conditions[i].Status != corev1.ConditionTrue {
		t.Errorf("node A's Ready condition changed: %+v", a.Status.Conditions)
	}
	after, err := env.admin.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Errorf("node B changed: %v %v", after.Annotations, after.Status.Conditions)
	}
}

// attempt is a request an identity must be refused, and what came of it.
type attempt struct {
	what string
	err  error
}

func execErr(ctx context.Context, c kubernetes.Interface, ns, pod string) error {
	return c.CoreV1().RESTClient().Post().Namespace(ns).Resource("pods").Name(pod).SubResource("exec").
		Param("command", "id").Param("stdout", "true").Do(ctx).Error()
}

// deniedToBoth are requests neither component may make.
func deniedToBoth(ctx context.Context, env *clusterEnv, c kubernetes.Interface) []attempt {
	_, listSecrets := c.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	_, getSecret := c.CoreV1().Secrets("tokenroll").Get(ctx, "anything", metav1.GetOptions{})
	_, createSecret := c.CoreV1().Secrets("tokenroll").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	_, token := c.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "default", nil, metav1.CreateOptions{})
	_, podCreate := c.CoreV1().Pods(appNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, metav1.CreateOptions{})
	_, crCreate := c.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	_, nsCreate := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	_, dsPatch := c.AppsV1().DaemonSets("tokenroll").Patch(ctx, "tokenroll-agent", types.MergePatchType, []byte(`{"spec":{"template":{"spec":{"hostPID":true}}}}`), metav1.PatchOptions{})
	_, vapDelete := c.AdmissionregistrationV1().ValidatingAdmissionPolicies().List(ctx, metav1.ListOptions{})
	return []attempt{
		{"list secrets", listSecrets}, {"get a secret", getSecret}, {"create a secret", createSecret},
		{"exec into a pod", execErr(ctx, c, env.agentPod.Namespace, env.agentPod.Name)},
		{"delete a pod", c.CoreV1().Pods(env.agentPod.Namespace).Delete(ctx, env.agentPod.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})},
		{"create a pod", podCreate},
		{"request a token for another service account", token},
		{"list cluster role bindings", crCreate}, {"create a namespace", nsCreate},
		{"change its own DaemonSet", dsPatch}, {"list admission policies", vapDelete},
	}
}

// testAgentRBAC: what the agent may not do.
func testAgentRBAC(ctx context.Context, t *testing.T, env *clusterEnv) {
	c := env.agent
	_, pods := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	_, cms := c.CoreV1().ConfigMaps("tokenroll").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	_, lease := c.CoordinationV1().Leases("tokenroll").Get(ctx, "tokenroll-coordinator", metav1.GetOptions{})
	evict := c.CoreV1().Pods(env.agentPod.Namespace).EvictV1(ctx, evictionFor(env.agentPod.Namespace, env.agentPod.Name))
	_, ev := c.EventsV1().Events("default").List(ctx, metav1.ListOptions{})
	for _, a := range append(deniedToBoth(ctx, env, c),
		attempt{"list pods", pods}, attempt{"read a ConfigMap", cms}, attempt{"read the Lease", lease},
		attempt{"evict a pod", evict}, attempt{"list events", ev}) {
		expectForbidden(t, a.what, a.err)
	}
}

// testCoordinatorRBAC: what the coordinator may not do.
func testCoordinatorRBAC(ctx context.Context, t *testing.T, env *clusterEnv) {
	c := env.coordinator
	_, cm := c.CoreV1().ConfigMaps("tokenroll").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	_, cms := c.CoreV1().ConfigMaps("tokenroll").List(ctx, metav1.ListOptions{})
	_, otherCM := c.CoreV1().ConfigMaps(appNS).Get(ctx, "tokenroll-rollout", metav1.GetOptions{})
	_, lease := c.CoordinationV1().Leases("tokenroll").Get(ctx, "someone-else", metav1.GetOptions{})
	_, status := c.CoreV1().Nodes().Patch(ctx, nodeB, types.StrategicMergePatchType, conditionPatch("Ready", "False"), metav1.PatchOptions{}, "status")
	_, update := c.CoreV1().Nodes().Update(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeB}}, metav1.UpdateOptions{})
	// It creates Events on Pods in their namespaces (app detection), and
	// reads none.
	_, ev := c.EventsV1().Events(appNS).List(ctx, metav1.ListOptions{})
	for _, a := range append(deniedToBoth(ctx, env, c),
		attempt{"read another ConfigMap", cm}, attempt{"list every ConfigMap", cms}, attempt{"read a ConfigMap in another namespace", otherCM},
		attempt{"read another Lease", lease}, attempt{"patch a Node's status", status}, attempt{"update (PUT) a Node", update},
		attempt{"delete a Node", c.CoreV1().Nodes().Delete(ctx, nodeB, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})},
		attempt{"list the Events of another namespace", ev}) {
		expectForbidden(t, a.what, a.err)
	}
	// kured's lock: the one DaemonSet, listed and watched through a field
	// selector on its name, as the coordinator's informer does; no other.
	dss := c.AppsV1().DaemonSets("kube-system")
	one := metav1.ListOptions{FieldSelector: "metadata.name=kured"}
	if _, err := dss.List(ctx, one); err != nil {
		t.Errorf("the coordinator cannot list kured's DaemonSet by name: %v", err)
	}
	w, err := dss.Watch(ctx, one)
	if err != nil {
		t.Errorf("the coordinator cannot watch kured's DaemonSet by name: %v", err)
	} else {
		w.Stop()
	}
	_, all := dss.List(ctx, metav1.ListOptions{})
	_, other := dss.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=kube-proxy"})
	_, elsewhere := c.AppsV1().DaemonSets(appNS).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=kured"})
	expectForbidden(t, "list every DaemonSet in kube-system", all)
	expectForbidden(t, "list another DaemonSet", other)
	expectForbidden(t, "list a DaemonSet named kured in another namespace", elsewhere)

	// The RolloutPolicies, which it reads by default: listed, watched and
	// their status written, as its informer and status writer do; their
	// spec is a person's.
	var rp *v1alpha1.RolloutPolicy
	adminPolicies := versioned.NewForConfigOrDie(env.cp.AdminConfig()).TokenrollV1alpha1().RolloutPolicies()
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		// A CRD just applied is served a moment later: tried again.
		var err error
		rp, err = adminPolicies.Create(ctx, &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rbac-check"}}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("creating a RolloutPolicy as the administrator: %v", err)
	}
	defer func() { _ = adminPolicies.Delete(context.WithoutCancel(ctx), rp.Name, metav1.DeleteOptions{}) }()
	pc := versioned.NewForConfigOrDie(env.coordinatorCfg).TokenrollV1alpha1().RolloutPolicies()
	if _, err := pc.List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("the coordinator cannot list the RolloutPolicies: %v", err)
	}
	if w, err := pc.Watch(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("the coordinator cannot watch the RolloutPolicies: %v", err)
	} else {
		w.Stop()
	}
	st := rp.DeepCopy()
	st.Status.Nodes = 2
	if _, err := pc.UpdateStatus(ctx, st, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the coordinator cannot write a RolloutPolicy's status: %v", err)
	}
	spec := rp.DeepCopy()
	spec.Spec.DryRun = true
	_, create := pc.Create(ctx, &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: "by-the-coordinator"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	_, updateSpec := pc.Update(ctx, spec, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
	expectForbidden(t, "create a RolloutPolicy", create)
	expectForbidden(t, "change a RolloutPolicy's spec", updateSpec)
	expectForbidden(t, "delete a RolloutPolicy", pc.Delete(ctx, rp.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}))
}

func evictionFor(ns, name string) *policyv1.Eviction {
	return &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
}
