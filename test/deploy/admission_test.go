package deploy_test

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The admission policies, by their names in the kustomize base.
const (
	agentPolicy       = "tokenroll-agent-own-node"
	coordinatorPolicy = "tokenroll-coordinator-nodes"
	protocolPolicy    = "tokenroll-node-protocol"
)

// The annotations tokenroll writes on a Node, by writer.
var (
	coordinatorKeys = []string{"tokenroll.io/request", "tokenroll.io/node-state"}
	agentKeys       = []string{"tokenroll.io/request-status", "tokenroll.io/reboot-required", "tokenroll.io/tokens"}
)

// expectRefusedBy checks that err is the named admission policy's refusal
// saying want.
func expectRefusedBy(t *testing.T, what string, err error, policy, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed, want the admission policy %s to refuse it", what, policy)
	case !strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policy+"'") || !strings.Contains(err.Error(), want):
		t.Errorf("%s: %v, want the admission policy %s's refusal saying %q", what, err, policy, want)
	}
}

// jsonFields are the JSON names of a struct type's fields.
func jsonFields(typ reflect.Type) []string {
	var out []string
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// statusChanges sets every NodeStatus field but conditions to something a
// fresh Node does not have: what a compromised agent would forge.
var statusChanges = map[string]any{
	"addresses":        []any{map[string]any{"type": "InternalIP", "address": "203.0.113.66"}},
	"allocatable":      map[string]any{"pods": "1000"},
	"capacity":         map[string]any{"pods": "1000"},
	"config":           map[string]any{"error": "forged"},
	"daemonEndpoints":  map[string]any{"kubeletEndpoint": map[string]any{"Port": 10666}},
	"declaredFeatures": []any{"ForgedFeature"},
	"features":         map[string]any{"supplementalGroupsPolicy": true},
	"images":           []any{map[string]any{"names": []any{"registry.example/forged:1"}, "sizeBytes": 1}},
	"nodeInfo":         map[string]any{"bootID": "forged", "machineID": "forged"},
	"phase":            "Terminated",
	"runtimeHandlers":  []any{map[string]any{"name": "forged", "features": map[string]any{"recursiveReadOnlyMounts": true}}},
	"volumesAttached":  []any{map[string]any{"name": "kubernetes.io/csi/example^forged", "devicePath": ""}},
	"volumesInUse":     []any{"kubernetes.io/csi/example^forged"},
}

// statusWritable are the status fields the API server must keep, so that
// the test of each is a test.
var statusWritable = []string{"addresses", "allocatable", "capacity", "daemonEndpoints", "declaredFeatures", "features", "images",
	"nodeInfo", "phase", "runtimeHandlers", "volumesAttached", "volumesInUse"}

// specChanges sets every NodeSpec field but unschedulable.
var specChanges = map[string]any{
	"configSource":        map[string]any{"configMap": map[string]any{"name": "forged", "namespace": "kube-system", "kubeletConfigKey": "kubelet"}},
	"externalID":          "forged",
	"podCIDR":             "10.244.66.0/24",
	"podCIDRs":            []any{"10.244.66.0/24"},
	"podPreemptionPolicy": "Never",
	"providerID":          "example://forged",
	"taints":              []any{map[string]any{"key": "forged", "effect": "NoExecute"}},
}

// TestChangeTablesCoverNodeTypes: the tables above name every field of the
// k8s.io/api NodeStatus and NodeSpec, so a field added by a new Kubernetes
// version fails here until the policies and the tests check it.
func TestChangeTablesCoverNodeTypes(t *testing.T) {
	for _, c := range []struct {
		typ    reflect.Type
		table  map[string]any
		except string
	}{{reflect.TypeFor[corev1.NodeStatus](), statusChanges, "conditions"}, {reflect.TypeFor[corev1.NodeSpec](), specChanges, "unschedulable"}} {
		var names []string
		for k := range c.table {
			names = append(names, k)
		}
		sort.Strings(names)
		want := slices.DeleteFunc(jsonFields(c.typ), func(s string) bool { return s == c.except })
		if !slices.Equal(names, want) {
			t.Errorf("%s: the table names %v, the type has %v (besides %s)", c.typ, names, want, c.except)
		}
	}
}

// effective reports whether the API server keeps patch on node: a dry run
// as the admin, whom no policy binds. A field the API server drops (a
// disabled feature, a removed one) or refuses to change is no write anyone
// can make.
func effective(ctx context.Context, t *testing.T, admin kubernetes.Interface, node string, patch []byte, sub ...string) bool {
	t.Helper()
	before, err := admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	after, err := admin.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, sub...)
	if apierrors.IsInvalid(err) {
		return false
	}
	if err != nil {
		t.Fatalf("a dry run of %s as the admin: %v", patch, err)
	}
	return !reflect.DeepEqual(before.Spec, after.Spec) || !reflect.DeepEqual(before.Status, after.Status)
}

// testAgentStatusFields: the agent may change no status field but its
// condition; each field is tried on its own.
func testAgentStatusFields(ctx context.Context, t *testing.T, env *clusterEnv) {
	for field, value := range statusChanges {
		patch := mergePatch(map[string]any{"status": map[string]any{field: value}})
		if !effective(ctx, t, env.admin, nodeA, patch, "status") {
			// status.config is dropped since dynamic kubelet configuration
			// went: no one can write it, so there is nothing to refuse.
			t.Logf("status.%s: the API server drops or refuses it", field)
			if slices.Contains(statusWritable, field) {
				t.Errorf("status.%s: the API server drops %s, so this test proves nothing about it: choose a value it keeps", field, patch)
			}
			continue
		}
		_, err := env.agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
		expectRefusedBy(t, "the agent changing its Node's status."+field, err, agentPolicy, "in a Node's status")
	}
}

// waitForPolicy waits until the API server's informers have the policy:
// until write, a dry run, is refused by it.
func waitForPolicy(ctx context.Context, t *testing.T, policy string, write func(context.Context) error) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		err := write(ctx)
		return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policy+"'"), nil
	})
	if err != nil {
		t.Fatalf("the admission policy %s never took effect: %v", policy, err)
	}
}

var dryRun = metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}

// nodePatcher grants subjects what a CNI operator or a person with node
// rights holds: patch on Nodes and their status, and create; the grant is
// removed when the test ends. It returns once the API server's authorizer
// allows every subject to patch Nodes: RBAC reads bindings from an
// informer, so a binding just created can take a moment to count.
func nodePatcher(ctx context.Context, t *testing.T, admin kubernetes.Interface, name string, subjects ...rbacv1.Subject) {
	t.Helper()
	_, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes", "nodes/status"}, Verbs: []string{"get", "list", "patch", "update", "create"}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects: subjects}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range subjects {
		user, groups := sub.Name, []string(nil)
		if sub.Kind == rbacv1.ServiceAccountKind {
			user, groups = serviceAccountUser(sub.Namespace, sub.Name)
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			r, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: groups, ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "patch", Resource: "nodes"}}}, metav1.CreateOptions{})
			return err == nil && r.Status.Allowed, nil
		})
		if err != nil {
			t.Fatalf("ClusterRoleBinding %s: %s %s is still not allowed to patch Nodes: %v", name, sub.Kind, user, err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := admin.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
		if err := admin.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})
}

func impersonating(t *testing.T, env *clusterEnv, user string, groups []string, extra map[string][]string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.cp.AdminConfig())
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups, Extra: extra}
	return kubernetes.NewForConfigOrDie(cfg)
}

func serviceAccountUser(ns, name string) (string, []string) {
	return "system:serviceaccount:" + ns + ":" + name, []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
}

// testCoordinatorPolicy: the coordinator cordons, uncordons and writes its
// annotations, and nothing else.
func testCoordinatorPolicy(ctx context.Context, t *testing.T, env *clusterEnv) {
	nodes := env.coordinator.CoreV1().Nodes()
	waitForPolicy(ctx, t, coordinatorPolicy, func(ctx context.Context) error {
		_, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch("example.com/owner", "coordinator"), dryRun)
		return err
	})
	for _, key := range coordinatorKeys {
		if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch(key, `{"id":"r-1"}`), metav1.PatchOptions{}); err != nil {
			t.Errorf("the coordinator setting %s: %v", key, err)
		}
		if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch(key, nil), metav1.PatchOptions{}); err != nil {
			t.Errorf("the coordinator removing %s: %v", key, err)
		}
	}
	for _, v := range []bool{true, false} {
		if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, mergePatch(map[string]any{"spec": map[string]any{"unschedulable": v}}), metav1.PatchOptions{}); err != nil {
			t.Errorf("the coordinator setting unschedulable=%v: %v", v, err)
		}
	}
	// Both at once, as it writes them.
	both := mergePatch(map[string]any{"metadata": map[string]any{"annotations": map[string]any{coordinatorKeys[1]: `{"step":"cordoned"}`}}, "spec": map[string]any{"unschedulable": true}})
	if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, both, dryRun); err != nil {
		t.Errorf("the coordinator cordoning with its record: %v", err)
	}

	for _, key := range agentKeys {
		_, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch(key, "forged"), metav1.PatchOptions{})
		expectRefusedBy(t, "the coordinator forging the agent's "+key, err, coordinatorPolicy, "may change only the annotations")
	}
	_, err := nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch("example.com/owner", "coordinator"), metav1.PatchOptions{})
	expectRefusedBy(t, "the coordinator changing another annotation", err, coordinatorPolicy, "may change only the annotations")
	_, err = nodes.Patch(ctx, nodeB, types.MergePatchType, annotationPatch("example.com/owner", nil), metav1.PatchOptions{})
	expectRefusedBy(t, "the coordinator removing another annotation", err, coordinatorPolicy, "may change only the annotations")
	_, err = nodes.Patch(ctx, nodeB, types.MergePatchType, mergePatch(map[string]any{"metadata": map[string]any{"labels": map[string]any{"node-role.kubernetes.io/control-plane": ""}}}), metav1.PatchOptions{})
	expectRefusedBy(t, "the coordinator labelling a Node", err, coordinatorPolicy, "labels")
	_, err = nodes.Patch(ctx, nodeB, types.MergePatchType, mergePatch(map[string]any{"metadata": map[string]any{"finalizers": []string{"example.com/block"}}}), metav1.PatchOptions{})
	expectRefusedBy(t, "the coordinator adding a finalizer", err, coordinatorPolicy, "finalizers")
	for field, value := range specChanges {
		patch := mergePatch(map[string]any{"spec": map[string]any{field: value}})
		if !effective(ctx, t, env.admin, nodeB, patch) {
			// The API server drops the field (configSource since dynamic
			// kubelet configuration went; a disabled feature): no one can
			// write it, so there is nothing to refuse.
			t.Logf("spec.%s: the API server drops or refuses it", field)
			continue
		}
		_, err := nodes.Patch(ctx, nodeB, types.MergePatchType, patch, metav1.PatchOptions{})
		expectRefusedBy(t, "the coordinator changing spec."+field, err, coordinatorPolicy, "only spec.unschedulable")
	}
	b, err := env.admin.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(b.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "forged" }) || b.Spec.ProviderID != "" || b.Spec.PodCIDR != "" || len(b.Labels) != 2 || len(b.Finalizers) > 0 || b.Annotations["example.com/owner"] != "platform" {
		t.Errorf("node B changed: spec %+v, labels %v, annotations %v, finalizers %v", b.Spec, b.Labels, b.Annotations, b.Finalizers)
	}
	for _, k := range append(slices.Clone(agentKeys), coordinatorKeys...) {
		if _, ok := b.Annotations[k]; ok {
			t.Errorf("node B has %s after the test", k)
		}
	}
	if _, err := nodes.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"spec":{"unschedulable":false}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testProtocolAnnotations: anyone else with `patch nodes`, a kubelet
// included, may not write, change or remove tokenroll's annotations on any
// Node, through nodes or nodes/status, nor create a Node carrying them;
// system:masters may (break-glass).
func testProtocolAnnotations(ctx context.Context, t *testing.T, env *clusterEnv) {
	nodePatcher(ctx, t, env.admin, "test-cni-operator", rbacv1.Subject{Kind: "User", APIGroup: rbacv1.GroupName, Name: "cni-operator"})
	cfg, err := env.cp.UserConfig("cni-operator")
	if err != nil {
		t.Fatal(err)
	}
	cni := kubernetes.NewForConfigOrDie(cfg)
	kcfg, err := env.cp.NodeConfig(nodeA)
	if err != nil {
		t.Fatal(err)
	}
	kubelet := kubernetes.NewForConfigOrDie(kcfg)
	waitForPolicy(ctx, t, protocolPolicy, func(ctx context.Context) error {
		_, err := cni.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(coordinatorKeys[0], "{}"), dryRun)
		return err
	})

	// What others do with Nodes stays allowed.
	if _, err := cni.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, mergePatch(map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{"example.com/cni": "ready"}, "labels": map[string]any{"example.com/cni": "ready"}},
		"spec":     map[string]any{"taints": []any{map[string]any{"key": "example.com/cni-not-ready", "effect": "NoSchedule"}}},
	}), dryRun); err != nil {
		t.Errorf("the CNI operator annotating, labelling and tainting a Node: %v", err)
	}
	if _, err := kubelet.CoreV1().Nodes().Patch(ctx, nodeA, types.StrategicMergePatchType, conditionPatch("Ready", "True"), dryRun, "status"); err != nil {
		t.Errorf("the kubelet updating its Node's status: %v", err)
	}

	// Values to change and remove: the coordinator's on node B, the agent's
	// on node A, each written by its owner.
	for _, key := range coordinatorKeys {
		if _, err := env.coordinator.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(key, `{"id":"r-1"}`), metav1.PatchOptions{}); err != nil {
			t.Fatalf("the coordinator setting %s: %v", key, err)
		}
	}
	for _, key := range agentKeys {
		if _, err := env.agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(key, "true"), metav1.PatchOptions{}); err != nil {
			t.Fatalf("the agent setting %s: %v", key, err)
		}
	}
	for who, c := range map[string]kubernetes.Interface{"the CNI operator": cni, "node A's kubelet": kubelet} {
		for _, key := range append(slices.Clone(coordinatorKeys), agentKeys...) {
			want, owned := "only the tokenroll coordinator", nodeB
			if slices.Contains(agentKeys, key) {
				want, owned = "only the tokenroll agent of the Node", nodeA
			}
			for _, sub := range [][]string{nil, {"status"}} {
				via := "/" + strings.Join(append([]string{"nodes"}, sub...), "/")
				for node, value := range map[string]any{nodeA: "forged", nodeB: "forged", owned: nil} {
					if node == owned && value != nil {
						continue
					}
					if c == kubelet && node != nodeA {
						// The Node authorizer refuses it before admission.
						continue
					}
					_, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, annotationPatch(key, value), metav1.PatchOptions{}, sub...)
					action := "setting"
					if value == nil {
						action = "removing"
					}
					expectRefusedBy(t, who+" "+action+" "+key+" on "+node+" through "+via, err, protocolPolicy, want)
				}
			}
		}
	}
	_, err = cni.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-forged",
		Annotations: map[string]string{coordinatorKeys[0]: `{"id":"forged","action":"reboot"}`}}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	expectRefusedBy(t, "the CNI operator creating a Node with a request", err, protocolPolicy, "only the tokenroll coordinator")

	// Break-glass: system:masters removes a request.
	masters := impersonating(t, env, "break-glass", []string{"system:masters", "system:authenticated"}, nil)
	if _, err := masters.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(coordinatorKeys[0], nil), dryRun); err != nil {
		t.Errorf("system:masters removing a request: %v", err)
	}

	// Nothing stuck: clean up as the owners.
	for _, key := range coordinatorKeys {
		if _, err := env.coordinator.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(key, nil), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := env.admin.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range agentKeys {
		if a.Annotations[key] != "true" {
			t.Errorf("node A's %s is %q after refused writes, want the agent's true", key, a.Annotations[key])
		}
		if _, err := env.agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(key, nil), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := a.Annotations[coordinatorKeys[0]]; ok {
		t.Error("node A has a request after refused writes")
	}
}

// testMissingBinding: the check deploy/README.md gives finds a missing
// binding: the kubelet's identity, which may patch its own Node, must be
// refused a request annotation; once the binding is gone it is not.
func testMissingBinding(ctx context.Context, t *testing.T, env *clusterEnv) {
	check := func(ctx context.Context) error {
		// kubectl annotate node NODE tokenroll.io/request=check --dry-run=server --as=system:node:NODE --as-group=system:nodes
		c := impersonating(t, env, "system:node:"+nodeA, []string{"system:nodes", "system:authenticated"}, nil)
		_, err := c.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(coordinatorKeys[0], "check"), dryRun)
		return err
	}
	expectRefusedBy(t, "the documented check with the binding", check(ctx), protocolPolicy, "only the tokenroll coordinator")
	bindings := env.admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings()
	saved, err := bindings.Get(ctx, protocolPolicy, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bindings.Delete(ctx, protocolPolicy, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		return check(ctx) == nil, nil
	})
	if err != nil {
		t.Errorf("without the binding the check still reports it: %v", check(ctx))
	}
	saved.ResourceVersion, saved.UID = "", ""
	if _, err := bindings.Create(ctx, saved, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForPolicy(ctx, t, protocolPolicy, check)
}

// testRenamedNamespace installs the policies and RBAC of the kubeadm
// overlay renamed with `kustomize edit set namespace`, and shows them
// confining the renamed agent and coordinator, and refusing the identities
// of the old namespace as anyone else's. The base's are put back after.
func testRenamedNamespace(ctx context.Context, t *testing.T, env *clusterEnv, a *applier, base []*unstructured.Unstructured) {
	const ns = "tokenroll-renamed"
	renamed := render(t, renamedKustomize(t, "overlays/kubeadm", ns))
	clusterScoped := func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
		var out []*unstructured.Unstructured
		for _, o := range objs {
			switch o.GetKind() {
			case "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole", "ClusterRoleBinding":
				out = append(out, o)
			}
		}
		return out
	}
	for _, o := range clusterScoped(renamed) {
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatalf("applying %s: %v", objectKey(o), err)
		}
	}
	defer func() {
		for _, o := range clusterScoped(base) {
			if err := a.apply(ctx, o, false); err != nil {
				t.Errorf("restoring %s: %v", objectKey(o), err)
			}
		}
		waitForPolicy(ctx, t, agentPolicy, func(ctx context.Context) error {
			_, err := env.agent.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(agentKeys[2], "{}"), dryRun)
			return err
		})
	}()

	user, groups := serviceAccountUser(ns, "tokenroll-agent")
	agent := impersonating(t, env, user, groups, map[string][]string{"authentication.kubernetes.io/node-name": {nodeA}})
	user, groups = serviceAccountUser(ns, "tokenroll-coordinator")
	coord := impersonating(t, env, user, groups, nil)
	waitForPolicy(ctx, t, agentPolicy, func(ctx context.Context) error {
		_, err := agent.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(agentKeys[2], "{}"), dryRun)
		return err
	})
	waitForPolicy(ctx, t, coordinatorPolicy, func(ctx context.Context) error {
		_, err := coord.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(agentKeys[2], "{}"), dryRun)
		return err
	})

	if _, err := agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(agentKeys[2], "{}"), dryRun); err != nil {
		t.Errorf("the renamed agent reporting on its own Node: %v", err)
	}
	_, err := agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), dryRun)
	expectRefusedBy(t, "the renamed agent cordoning its Node", err, agentPolicy, "spec")
	_, err = agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, mergePatch(map[string]any{"status": map[string]any{"images": statusChanges["images"]}}), dryRun, "status")
	expectRefusedBy(t, "the renamed agent changing its Node's images", err, agentPolicy, "in a Node's status")
	if _, err := coord.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(coordinatorKeys[0], `{"id":"r-1"}`), dryRun); err != nil {
		t.Errorf("the renamed coordinator requesting an action: %v", err)
	}
	_, err = coord.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, []byte(`{"spec":{"taints":[{"key":"forged","effect":"NoExecute"}]}}`), dryRun)
	expectRefusedBy(t, "the renamed coordinator tainting a Node", err, coordinatorPolicy, "only spec.unschedulable")

	// The identities of the namespace the policies no longer name are
	// anyone else: given `patch nodes`, they are refused tokenroll's
	// annotations.
	oldAgent, _ := serviceAccountUser("tokenroll", "tokenroll-agent")
	oldCoordinator, _ := serviceAccountUser("tokenroll", "tokenroll-coordinator")
	nodePatcher(ctx, t, env.admin, "test-old-identities",
		rbacv1.Subject{Kind: "ServiceAccount", Namespace: "tokenroll", Name: "tokenroll-agent"},
		rbacv1.Subject{Kind: "ServiceAccount", Namespace: "tokenroll", Name: "tokenroll-coordinator"})
	_, err = env.agent.CoreV1().Nodes().Patch(ctx, nodeA, types.MergePatchType, annotationPatch(agentKeys[2], "{}"), dryRun)
	expectRefusedBy(t, oldAgent+" reporting after the rename", err, protocolPolicy, "only the tokenroll agent")
	_, err = env.coordinator.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, annotationPatch(coordinatorKeys[0], "{}"), dryRun)
	expectRefusedBy(t, oldCoordinator+" requesting after the rename", err, protocolPolicy, "only the tokenroll coordinator")
}

// renamedKustomize copies deploy/kustomize and sets the namespace of the
// kustomization at dir as `kustomize edit set namespace ns` does.
func renamedKustomize(t testing.TB, dir, ns string) rendering {
	t.Helper()
	root := filepath.Join(t.TempDir(), "kustomize")
	src := filepath.Join(repoRoot, "deploy", "kustomize")
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(root, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(root, dir, "kustomization.yaml")
	data, err := os.ReadFile(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k, append(data, []byte("namespace: "+ns+"\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	return rendering{name: "kustomize-" + strings.ReplaceAll(dir, "/", "-") + "-" + ns, args: []string{"kustomize", filepath.Join(root, dir)}, namespace: ns}
}

// policyIdentities are the service-account users the policies' match
// conditions name.
func policyIdentities(t testing.TB, objs []*unstructured.Unstructured) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, o := range objs {
		if o.GetKind() != "ValidatingAdmissionPolicy" {
			continue
		}
		conds, _, _ := unstructured.NestedSlice(o.Object, "spec", "matchConditions")
		raw, _ := json.Marshal(conds)
		for _, m := range saUser.FindAllString(string(raw), -1) {
			out[o.GetName()] = append(out[o.GetName()], m)
		}
	}
	return out
}

var saUser = regexp.MustCompile(`system:serviceaccount:[a-z0-9.-]*:[a-z0-9.-]*`)

// elsewhere is every rendering, and each kustomization after a namespace
// change (`kustomize edit set namespace`), and the chart in another
// namespace under another release name.
func elsewhere(t testing.TB) []rendering {
	all := slices.Clone(renderings)
	for _, dir := range []string{"base", "overlays/kubeadm", "overlays/openshift"} {
		all = append(all, renamedKustomize(t, dir, "tokenroll-renamed"))
	}
	return append(all, rendering{name: "helm-elsewhere", args: []string{"helm", "deploy/helm/tokenroll", "--namespace", "ops", "--release", "roll"}, namespace: "ops", release: "roll"})
}

// TestRolesOutsideTheNamespace: wherever tokenroll is installed, the two
// Roles it needs elsewhere stay where what they grant is (the kubernetes
// Service's EndpointSlices in "default", kured's DaemonSet in
// "kube-system"), and every binding names tokenroll's service accounts in
// the namespace they now live in. A namespace transformer moves every
// object it sees; the kustomizations put these back.
func TestRolesOutsideTheNamespace(t *testing.T) {
	for _, r := range elsewhere(t) {
		t.Run(r.name, func(t *testing.T) {
			fixed := map[string]string{"-coordinator-apiserver-endpoints": "default", "-coordinator-kured-lock": "kube-system"}
			found := 0
			for _, o := range render(t, r) {
				switch o.GetKind() {
				case "Role", "RoleBinding", "ClusterRoleBinding":
				default:
					continue
				}
				for suffix, ns := range fixed {
					if strings.HasSuffix(o.GetName(), suffix) {
						found++
						if o.GetNamespace() != ns {
							t.Errorf("%s %s is in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), ns)
						}
					}
				}
				subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
				for _, s := range subjects {
					s, _ := s.(map[string]any)
					if s["kind"] == "ServiceAccount" && s["namespace"] != r.namespace {
						t.Errorf("%s %s/%s binds service account %v in namespace %v, want %q", o.GetKind(), o.GetNamespace(), o.GetName(), s["name"], s["namespace"], r.namespace)
					}
				}
			}
			if found != 2*len(fixed) {
				t.Errorf("found %d Roles and RoleBindings outside the namespace, want %d", found, 2*len(fixed))
			}
		})
	}
}

// TestPolicyIdentities: in every rendering, and after a namespace change in
// each kustomization (`kustomize edit set namespace`) or another Helm
// namespace and release, the policies name exactly the agent's and the
// coordinator's service accounts as rendered.
func TestPolicyIdentities(t *testing.T) {
	for _, r := range elsewhere(t) {
		t.Run(r.name, func(t *testing.T) {
			objs := render(t, r)
			ds, dep := workloads(t, r)
			agent := "system:serviceaccount:" + ds.Namespace + ":" + ds.Spec.Template.Spec.ServiceAccountName
			coordinator := "system:serviceaccount:" + dep.Namespace + ":" + dep.Spec.Template.Spec.ServiceAccountName
			if ds.Namespace != r.namespace || dep.Namespace != r.namespace {
				t.Fatalf("the agent runs in %s, the coordinator in %s, want %s", ds.Namespace, dep.Namespace, r.namespace)
			}
			got := policyIdentities(t, objs)
			want := map[string][]string{}
			for _, o := range objs {
				if o.GetKind() != "ValidatingAdmissionPolicy" {
					continue
				}
				switch {
				case strings.HasSuffix(o.GetName(), "-own-node"):
					want[o.GetName()] = []string{agent}
				case strings.HasSuffix(o.GetName(), "-coordinator-nodes"):
					want[o.GetName()] = []string{coordinator}
				case strings.HasSuffix(o.GetName(), "-node-protocol"):
					want[o.GetName()] = []string{agent, coordinator}
				default:
					t.Errorf("unknown policy %s", o.GetName())
				}
			}
			if len(want) != 3 || !reflect.DeepEqual(got, want) {
				t.Errorf("the policies name %v, want %v", got, want)
			}
			// Every policy has its binding, which enforces it.
			for name := range want {
				b := find(t, objs, "ValidatingAdmissionPolicyBinding", name)
				actions, _, _ := unstructured.NestedStringSlice(b.Object, "spec", "validationActions")
				policy, _, _ := unstructured.NestedString(b.Object, "spec", "policyName")
				if policy != name || !slices.Equal(actions, []string{"Deny"}) {
					t.Errorf("binding %s: policy %s, actions %v, want %s and Deny", name, policy, actions, name)
				}
				p := find(t, objs, "ValidatingAdmissionPolicy", name)
				if fp, _, _ := unstructured.NestedString(p.Object, "spec", "failurePolicy"); fp != "Fail" {
					t.Errorf("policy %s: failurePolicy %q, want Fail", name, fp)
				}
			}
		})
	}
}

// TestPoliciesNameEveryField: the agent's policy compares every NodeStatus
// field but conditions; the coordinator's every NodeStatus field and every
// NodeSpec field but unschedulable.
func TestPoliciesNameEveryField(t *testing.T) {
	objs := render(t, findRendering("kustomize-base"))
	text := func(name string) string {
		raw, err := json.Marshal(find(t, objs, "ValidatingAdmissionPolicy", name).Object["spec"])
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	agent, coordinator := text(agentPolicy), text(coordinatorPolicy)
	for _, f := range jsonFields(reflect.TypeFor[corev1.NodeStatus]()) {
		ref := "status.?" + f + " == "
		if f != "conditions" && !strings.Contains(agent, ref) {
			t.Errorf("%s does not compare status.%s", agentPolicy, f)
		}
		if !strings.Contains(coordinator, ref) {
			t.Errorf("%s does not compare status.%s", coordinatorPolicy, f)
		}
	}
	for _, f := range jsonFields(reflect.TypeFor[corev1.NodeSpec]()) {
		if f != "unschedulable" && !strings.Contains(coordinator, "spec.?"+f+" == ") {
			t.Errorf("%s does not compare spec.%s", coordinatorPolicy, f)
		}
	}
}

// TestPoliciesKnowEveryAnnotation: every Node annotation the protocol
// package declares (Annotation* = Prefix + "...") is in the agent's or the
// coordinator's list in the policies, so a new one is not refused to its
// writer in production, nor left writable by anyone.
func TestPoliciesKnowEveryAnnotation(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(repoPath("protocol"), "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string]string{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Annotation") || i >= len(vs.Values) {
					continue
				}
				bin, ok := vs.Values[i].(*ast.BinaryExpr)
				if !ok {
					t.Errorf("protocol.%s is not Prefix + \"...\"", name.Name)
					continue
				}
				if lit, ok := bin.Y.(*ast.BasicLit); ok {
					v, _ := strconv.Unquote(lit.Value)
					declared[name.Name] = "tokenroll.io/" + v
				}
			}
			return true
		})
	}
	if len(declared) < 5 {
		t.Fatalf("found %v in protocol/, want at least the five annotations", declared)
	}
	objs := render(t, findRendering("kustomize-base"))
	lists := map[string][]string{}
	for _, name := range []string{agentPolicy, coordinatorPolicy, protocolPolicy} {
		vars, _, _ := unstructured.NestedSlice(find(t, objs, "ValidatingAdmissionPolicy", name).Object, "spec", "variables")
		for _, v := range vars {
			m, _ := v.(map[string]any)
			if n, _ := m["name"].(string); strings.HasSuffix(n, "Annotations") && !strings.HasPrefix(n, "old") && !strings.HasPrefix(n, "new") {
				lists[name+" "+n] = quoted.FindAllString(m["expression"].(string), -1)
			}
		}
	}
	agent, coordinator := lists[agentPolicy+" agentAnnotations"], lists[coordinatorPolicy+" coordinatorAnnotations"]
	if !slices.Equal(lists[protocolPolicy+" agentAnnotations"], agent) || !slices.Equal(lists[protocolPolicy+" coordinatorAnnotations"], coordinator) {
		t.Errorf("the policies' lists disagree: %v", lists)
	}
	if !slices.Equal(agent, quoteAll(agentKeys)) || !slices.Equal(coordinator, quoteAll(coordinatorKeys)) {
		t.Errorf("the policies list %v and %v, the tests %v and %v", agent, coordinator, agentKeys, coordinatorKeys)
	}
	for name, key := range declared {
		if !slices.Contains(agent, "'"+key+"'") && !slices.Contains(coordinator, "'"+key+"'") {
			t.Errorf("protocol.%s (%s) is in no admission policy's list: add it to the agent's or the coordinator's annotations in deploy/ (kustomize and Helm) and here", name, key)
		}
	}
}

var quoted = regexp.MustCompile(`'[^']*'`)

func quoteAll(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = "'" + k + "'"
	}
	return out
}
