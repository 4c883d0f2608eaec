package controlplane_test

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

func TestPinsMatchToolsModule(t *testing.T) {
	data, err := os.ReadFile("../../test/tools/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"k8s.io/kubernetes " + controlplane.KubernetesVersion,
		"go.etcd.io/etcd/server/v3 " + controlplane.EtcdVersion,
	} {
		if !strings.Contains(string(data), want) {
			t.Errorf("test/tools/go.mod does not pin %q; keep binaries.go and the tools module in step", want)
		}
	}
}

func TestFindBinariesNamesTheFix(t *testing.T) {
	_, err := controlplane.FindBinaries(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "make controlplane") {
		t.Fatalf("FindBinaries on an empty dir: got %v, want an error naming `make controlplane`", err)
	}
}

func whoAmI(t *testing.T, c kubernetes.Interface) (string, []string) {
	t.Helper()
	r, err := c.AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	return r.Status.UserInfo.Username, r.Status.UserInfo.Groups
}

func TestIdentities(t *testing.T) {
	// Each control-plane test has its own processes, ports and directory,
	// and mostly waits on them: they overlap.
	t.Parallel()
	cp := controlplane.StartForTest(t, controlplane.Config{})
	ctx := context.Background()

	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	if user, _ := whoAmI(t, admin); user != "tokenroll-admin" {
		t.Errorf("admin is %q", user)
	}

	nodeCfg, err := cp.NodeConfig("node-a")
	if err != nil {
		t.Fatal(err)
	}
	node := kubernetes.NewForConfigOrDie(nodeCfg)
	user, groups := whoAmI(t, node)
	if user != "system:node:node-a" || !slices.Contains(groups, "system:nodes") {
		t.Errorf("node identity is %q %v", user, groups)
	}
	// The Node authorizer and NodeRestriction are on: a node may create
	// itself but not another node.
	if _, err := node.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Errorf("node-a creating itself: %v", err)
	}
	_, err = node.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("node-a creating node-b: got %v, want Forbidden", err)
	}

	saCfg, err := cp.ServiceAccountConfig(ctx, "team", "robot", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(saCfg)
	if user, _ := whoAmI(t, sa); user != "system:serviceaccount:team:robot" {
		t.Errorf("service account identity is %q", user)
	}
	// RBAC is on: a bare service account may not list secrets.
	ssar, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "secrets"}},
	}, metav1.CreateOptions{})
	if err != nil || ssar.Status.Allowed {
		t.Errorf("service account listing secrets: allowed=%v err=%v, want denied", ssar.Status.Allowed, err)
	}

	userCfg, err := cp.UserConfig("alice", "ops")
	if err != nil {
		t.Fatal(err)
	}
	if user, groups := whoAmI(t, kubernetes.NewForConfigOrDie(userCfg)); user != "alice" || !slices.Contains(groups, "ops") {
		t.Errorf("user identity is %q %v", user, groups)
	}

	// A kubeconfig written for the admin works as one.
	path := t.TempDir() + "/kubeconfig"
	if err := controlplane.WriteKubeconfig(path, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	loaded, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if user, _ := whoAmI(t, kubernetes.NewForConfigOrDie(loaded)); user != "tokenroll-admin" {
		t.Errorf("kubeconfig identity is %q", user)
	}
}

// discoveryIssuer reads the signing issuer from OIDC discovery on one server.
func discoveryIssuer(t *testing.T, cp *controlplane.ControlPlane, i int) string {
	t.Helper()
	cfg := cp.AdminConfig()
	cfg.Host = cp.APIServerURL(i)
	body, err := kubernetes.NewForConfigOrDie(cfg).Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("discovery on apiserver %d: %v", i, err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Issuer
}

func TestThreeAPIServersRolledOneAtATime(t *testing.T) {
	t.Parallel() // as TestIdentities
	const oldIss, newIss = "https://old.example", "https://new.example"
	cp := controlplane.StartForTest(t, controlplane.Config{APIServers: 3, Issuers: []string{oldIss}})
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())

	// One etcd: what one server writes, the others read.
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shared"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		cfg := cp.AdminConfig()
		cfg.Host = cp.APIServerURL(i)
		if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(ctx, "shared", metav1.GetOptions{}); err != nil {
			t.Errorf("apiserver %d does not see the namespace: %v", i, err)
		}
		if got := discoveryIssuer(t, cp, i); got != oldIss {
			t.Errorf("apiserver %d issuer %q, want %q", i, got, oldIss)
		}
	}

	if err := cp.RestartAPIServer(ctx, 1, []string{newIss, oldIss}); err != nil {
		t.Fatal(err)
	}
	if got := discoveryIssuer(t, cp, 1); got != newIss {
		t.Errorf("restarted apiserver issuer %q, want %q", got, newIss)
	}
	if got := cp.Issuers(1); len(got) != 2 || got[0] != newIss {
		t.Errorf("Issuers(1) = %v", got)
	}
	for _, i := range []int{0, 2} {
		if got := discoveryIssuer(t, cp, i); got != oldIss {
			t.Errorf("apiserver %d changed issuer to %q before its turn", i, got)
		}
	}
	// The load-balanced address keeps working while a server is restarted.
	if _, err := admin.CoreV1().Namespaces().Get(ctx, "shared", metav1.GetOptions{}); err != nil {
		t.Errorf("through the load balancer after a restart: %v", err)
	}
}

func TestStopLeavesNothingBehind(t *testing.T) {
	t.Parallel() // as TestIdentities
	cp := controlplane.StartForTest(t, controlplane.Config{})
	url := cp.URL()
	direct := cp.APIServerURL(0)
	cp.Stop()
	cfg := cp.AdminConfig()
	cfg.Timeout = 2 * time.Second
	for _, host := range []string{url, direct} {
		cfg.Host = host
		if _, err := kubernetes.NewForConfigOrDie(cfg).Discovery().ServerVersion(); err == nil {
			t.Errorf("%s still answers after Stop", host)
		}
	}
	cp.Stop() // a second Stop is harmless
}
