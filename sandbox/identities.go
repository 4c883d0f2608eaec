package sandbox

import (
	"context"
	"fmt"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/protocol"
)

// CoordinatorUser is the identity the sandbox's coordinators run as: a
// client-certificate user, bound to exactly what the coordinator needs (the
// deploy manifests give the same rights to its service account).
const CoordinatorUser = "tokenroll-coordinator"

// Namespace is where the coordinators keep their Lease and state, as in a
// cluster.
const Namespace = "tokenroll"

// LeaseName is the coordinators' leader-election Lease.
const LeaseName = "tokenroll-coordinator"

// nodePublishedIssuer names the Role and binding that let the agents
// watch the issuer the coordinator publishes.
const nodePublishedIssuer = "tokenroll-sandbox-node-published-issuer"

func rule(groups, resources, verbs []string, names ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: groups, Resources: resources, Verbs: verbs, ResourceNames: names}
}

var (
	core     = []string{""}
	getOnly  = []string{"get"}
	readOnly = []string{"get", "list", "watch"}
)

// rbacObjects are the roles and bindings the sandbox's agents and
// coordinators act under.
//
// The agents act with their node's identity (system:node:NAME in
// system:nodes, a client certificate): the Node authorizer lets a node read
// Nodes and patch its own, which is all an agent does besides reading OIDC
// discovery and watching the issuer the coordinator publishes, granted here
// to system:nodes (the latter as deploy's Role tokenroll-agent grants it). In a cluster the agent has a
// service account and a pod-bound token; a client certificate is used here
// because the scenario changes the issuer without a trust window, which
// would cut every service-account token off until its pod restarts.
func rbacObjects() []runtime.Object {
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: CoordinatorUser}}
	labels := map[string]string{"app.kubernetes.io/name": "tokenroll", "app.kubernetes.io/part-of": "tokenroll-sandbox"}
	meta := func(name, namespace string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels}
	}
	roleRef := func(kind, name string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
	}
	return []runtime.Object{
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: meta("tokenroll-sandbox-node-issuer-discovery", ""),
			RoleRef:    roleRef("ClusterRole", "system:service-account-issuer-discovery"),
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}},
		},
		&rbacv1.ClusterRole{ObjectMeta: meta(CoordinatorUser, ""), Rules: []rbacv1.PolicyRule{
			rule(core, []string{"nodes"}, []string{"get", "list", "watch", "patch"}),
			rule(core, []string{"pods"}, readOnly),
			rule(core, []string{"pods/eviction"}, []string{"create"}),
			// Events in every namespace: app detection's on Pods, the node
			// protocol's on Nodes (recorded in "default"), the rollout's.
			rule([]string{"events.k8s.io"}, []string{"events"}, []string{"create", "patch"}),
			rule([]string{"apps"}, []string{"daemonsets", "replicasets", "statefulsets"}, getOnly),
			rule([]string{"operator.openshift.io"}, []string{"kubeapiservers"}, readOnly),
			rule([]string{"config.openshift.io"}, []string{"authentications"}, readOnly),
			// The RolloutPolicies (an informer) and their status, which the
			// coordinator alone writes; namespaces: a blocking-pod
			// selector's namespaceSelector.
			rule([]string{"tokenroll.io"}, []string{"rolloutpolicies"}, readOnly),
			rule([]string{"tokenroll.io"}, []string{"rolloutpolicies/status"}, []string{"update", "patch"}),
			rule(core, []string{"namespaces"}, getOnly),
			{NonResourceURLs: []string{"/.well-known/openid-configuration"}, Verbs: getOnly}, // the signing issuer; no signature is verified, so no jwks
			// The rollout record: each rollout a TokenRollout, created (and
			// pruned) by the coordinator, its status the coordinator's alone.
			rule([]string{"tokenroll.io"}, []string{"tokenrollouts"}, []string{"get", "list", "watch", "create", "delete"}),
			rule([]string{"tokenroll.io"}, []string{"tokenrollouts/status"}, []string{"update", "patch"}),
		}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: meta(CoordinatorUser, ""), RoleRef: roleRef("ClusterRole", CoordinatorUser), Subjects: subject},
		&rbacv1.Role{ObjectMeta: meta(CoordinatorUser, Namespace), Rules: []rbacv1.PolicyRule{
			rule([]string{"coordination.k8s.io"}, []string{"leases"}, []string{"create"}),
			rule([]string{"coordination.k8s.io"}, []string{"leases"}, []string{"get", "update"}, LeaseName),
			rule(core, []string{"configmaps"}, []string{"create"}),
			rule(core, []string{"configmaps"}, []string{"get", "delete"}, "tokenroll-rollout"), // the one-time migration to TokenRollouts
			rule(core, []string{"configmaps"}, []string{"update"}, "tokenroll-apps"),
			rule(core, []string{"configmaps"}, []string{"get", "update"}, protocol.IssuerConfigMapName), // the issuer it publishes for the agents
		}},
		&rbacv1.RoleBinding{ObjectMeta: meta(CoordinatorUser, Namespace), RoleRef: roleRef("Role", CoordinatorUser), Subjects: subject},
		&rbacv1.Role{ObjectMeta: meta(nodePublishedIssuer, Namespace), Rules: []rbacv1.PolicyRule{
			rule(core, []string{"configmaps"}, []string{"list", "watch"}, protocol.IssuerConfigMapName),
		}},
		&rbacv1.RoleBinding{ObjectMeta: meta(nodePublishedIssuer, Namespace), RoleRef: roleRef("Role", nodePublishedIssuer),
			Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}}},
		// The static-pods gate: which API servers back the kubernetes Service.
		&rbacv1.Role{ObjectMeta: meta(CoordinatorUser+"-apiserver-endpoints", metav1.NamespaceDefault), Rules: []rbacv1.PolicyRule{
			rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, []string{"list", "watch"}),
		}},
		&rbacv1.RoleBinding{ObjectMeta: meta(CoordinatorUser+"-apiserver-endpoints", metav1.NamespaceDefault),
			RoleRef: roleRef("Role", CoordinatorUser+"-apiserver-endpoints"), Subjects: subject},
		// kured's reboot lock (--kured-lock, default kube-system/kured): the
		// one DaemonSet, watched through a field selector on its name.
		&rbacv1.Role{ObjectMeta: meta(CoordinatorUser+"-kured-lock", metav1.NamespaceSystem), Rules: []rbacv1.PolicyRule{
			rule([]string{"apps"}, []string{"daemonsets"}, []string{"list", "watch"}, "kured"),
		}},
		&rbacv1.RoleBinding{ObjectMeta: meta(CoordinatorUser+"-kured-lock", metav1.NamespaceSystem),
			RoleRef: roleRef("Role", CoordinatorUser+"-kured-lock"), Subjects: subject},
	}
}

// applyRBAC creates the roles and bindings (they may exist from an earlier
// run in the same --dir).
func applyRBAC(ctx context.Context, admin kubernetes.Interface) error {
	rbac := admin.RbacV1()
	for _, obj := range rbacObjects() {
		var err error
		var what string
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			what = "ClusterRole/" + o.Name
			_, err = rbac.ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			what = "ClusterRoleBinding/" + o.Name
			_, err = rbac.ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			what = "Role " + o.Namespace + "/" + o.Name
			_, err = rbac.Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			what = "RoleBinding " + o.Namespace + "/" + o.Name
			_, err = rbac.RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s: %w", what, err)
		}
	}
	return nil
}
