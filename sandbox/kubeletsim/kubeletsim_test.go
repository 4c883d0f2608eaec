package kubeletsim_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"

	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// claims is what the test reads from a token; the agent has its own parser.
type claims struct {
	Iss  string   `json:"iss"`
	Aud  []string `json:"aud"`
	Iat  int64    `json:"iat"`
	Exp  int64    `json:"exp"`
	Sub  string   `json:"sub"`
	Kube struct {
		Namespace string `json:"namespace"`
		Pod       struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
		Node struct {
			Name string `json:"name"`
		} `json:"node"`
		ServiceAccount struct {
			Name string `json:"name"`
		} `json:"serviceaccount"`
		WarnAfter int64 `json:"warnafter"`
	} `json:"kubernetes.io"`
}

func readClaims(t *testing.T, path string) claims {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(data), ".")
	if len(parts) != 3 {
		t.Fatalf("%s is not a compact JWT (%d segments)", path, len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("%s: payload: %v", path, err)
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("%s: claims: %v", path, err)
	}
	return c
}

var tsDir = regexp.MustCompile(`^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+$`)

// checkLayout asserts the AtomicWriter layout of a volume directory.
func checkLayout(t *testing.T, dir string, visible ...string) {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatalf("%s: ..data: %v", dir, err)
	}
	if !tsDir.MatchString(target) {
		t.Errorf("%s: ..data points at %q, want a relative timestamped directory", dir, target)
	}
	for _, name := range visible {
		link, err := os.Readlink(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %s is not a link: %v", dir, name, err)
			continue
		}
		if link != filepath.Join("..data", name) {
			t.Errorf("%s: %s -> %q, want ..data/%s", dir, name, link, name)
		}
	}
}

func TestSimulatedKubeletsThroughAnIssuerChange(t *testing.T) {
	const oldIss, newIss = "https://kubernetes.default.svc", "https://test.default.svc"
	c := simtest.Start(t, oldIss, "node-1", "node-2", "node-3")
	ctx := context.Background()
	c.PrepareBuildNamespace(t, "build")

	mark := c.Events.Mark()
	robot := c.CreatePod(t, simtest.BuildRobotPod("nginx", "build", "node-1"))
	var plain []*corev1.Pod
	for _, node := range []string{"node-1", "node-2", "node-3"} {
		plain = append(plain, c.CreatePod(t, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web-" + node, Namespace: "build"},
			Spec:       corev1.PodSpec{NodeName: node},
		}))
	}
	c.Events.Wait(t, mark, "nginx synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "nginx", ""))
	for _, p := range plain {
		c.Events.Wait(t, mark, p.Name+" synced", simtest.Is(kubeletsim.EventPodSynced, p.Spec.NodeName, p.Name, ""))
	}

	// The documentation's example token, on disk as the kubelet lays it out.
	vaultDir := c.Nodes["node-1"].VolumeDir(robot.UID, "vault-token")
	checkLayout(t, vaultDir, "vault-token")
	vault := readClaims(t, filepath.Join(vaultDir, "vault-token"))
	if vault.Iss != oldIss || len(vault.Aud) != 1 || vault.Aud[0] != "vault" || vault.Exp-vault.Iat != 7200 || vault.Kube.WarnAfter != 0 {
		t.Errorf("vault token claims: %+v", vault)
	}
	if vault.Kube.Pod.Name != "nginx" || vault.Kube.Pod.UID != string(robot.UID) || vault.Kube.Node.Name != "node-1" ||
		vault.Kube.ServiceAccount.Name != "build-robot" || vault.Sub != "system:serviceaccount:build:build-robot" {
		t.Errorf("vault token is not bound to the pod and node: %+v", vault)
	}

	// The default kube-api-access volume: an extended token (3607 s asked,
	// a year granted, warnafter at 3607 s), the CA and the namespace.
	web := plain[1]
	accessDir := c.Nodes["node-2"].VolumeDir(web.UID, simtest.KubeAPIAccess(t, web))
	checkLayout(t, accessDir, "token", "ca.crt", "namespace")
	access := readClaims(t, filepath.Join(accessDir, "token"))
	if access.Iss != oldIss || access.Kube.WarnAfter != access.Iat+3607 || access.Exp-access.Iat < 300*24*3600 {
		t.Errorf("kube-api-access token is not the extended kind: iat=%d warnafter=%d exp=%d iss=%q", access.Iat, access.Kube.WarnAfter, access.Exp, access.Iss)
	}
	if ns, _ := os.ReadFile(filepath.Join(accessDir, "namespace")); string(ns) != "build" {
		t.Errorf("namespace file holds %q", ns)
	}
	if ca, _ := os.ReadFile(filepath.Join(accessDir, "ca.crt")); string(ca) != string(c.CP.CACert()) {
		t.Errorf("ca.crt is not the cluster CA")
	}

	// The API server sees Ready nodes with boot IDs, renewed Leases and
	// running pods.
	for name, n := range c.Nodes {
		node, err := c.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !nodeReady(node) || node.Status.NodeInfo.BootID != n.BootID() {
			t.Errorf("node %s: ready=%v bootID=%q want %q", name, nodeReady(node), node.Status.NodeInfo.BootID, n.BootID())
		}
		if _, err := c.Admin.CoordinationV1().Leases("kube-node-lease").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("node %s lease: %v", name, err)
		}
	}
	got, err := c.Admin.CoreV1().Pods("build").Get(ctx, "nginx", metav1.GetOptions{})
	if err != nil || got.Status.Phase != corev1.PodRunning {
		t.Errorf("nginx phase %v (%v), want Running", got.Status.Phase, err)
	}

	// The kubelet Pods API lists node-1's pods with their UIDs.
	uids := listPodsAPI(t, c.Nodes["node-1"].PodsAPISocket())
	if !uids[robot.UID] || !uids[plain[0].UID] || len(uids) != 2 {
		t.Errorf("node-1 Pods API lists %v, want nginx and web-node-1", uids)
	}

	// The issuer changes: the old one stays trusted, the new one signs.
	if err := c.CP.RestartAPIServer(ctx, 0, []string{newIss, oldIss}); err != nil {
		t.Fatal(err)
	}
	// A sync now changes nothing: the kubelet's cache has no issuer in its key.
	mark = c.Events.Mark()
	c.Nodes["node-1"].ResyncAll()
	c.Events.Wait(t, mark, "nginx resynced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "nginx", ""))
	if got := readClaims(t, filepath.Join(vaultDir, "vault-token")); got.Iss != oldIss || got.Iat != vault.Iat {
		t.Errorf("token replaced before its refresh time: iss=%q iat=%d", got.Iss, got.Iat)
	}

	// node-3's kubelet is wedged: it keeps its tokens whatever their age.
	c.Nodes["node-3"].SetStopRefreshing(true)

	// Past the kube-api-access refresh time (80% of 3607 s) but before the
	// vault token's (80% of 7200 s): only the former moves to the new issuer.
	mark = c.Events.Mark()
	c.Clock.SetTime(time.Unix(access.Iat+2900, 0))
	c.Nodes["node-1"].ResyncAll()
	c.Nodes["node-3"].ResyncAll()
	c.Events.Wait(t, mark, "node-1 kube-api-access rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "nginx", simtest.KubeAPIAccess(t, robot)))
	c.Events.Wait(t, mark, "node-3 web resynced", simtest.Is(kubeletsim.EventPodSynced, "node-3", plain[2].Name, ""))
	if got := readClaims(t, filepath.Join(c.Nodes["node-1"].VolumeDir(robot.UID, simtest.KubeAPIAccess(t, robot)), "token")); got.Iss != newIss {
		t.Errorf("kube-api-access after its refresh time: iss=%q, want %q", got.Iss, newIss)
	}
	if got := readClaims(t, filepath.Join(vaultDir, "vault-token")); got.Iss != oldIss {
		t.Errorf("vault token changed before its refresh time: iss=%q", got.Iss)
	}
	stuck := c.Nodes["node-3"].VolumeDir(plain[2].UID, simtest.KubeAPIAccess(t, plain[2]))
	if got := readClaims(t, filepath.Join(stuck, "token")); got.Iss != oldIss {
		t.Errorf("wedged node-3 refreshed anyway: iss=%q", got.Iss)
	}

	// Past the vault token's refresh time.
	mark = c.Events.Mark()
	c.Clock.SetTime(time.Unix(vault.Iat+5770, 0))
	c.Nodes["node-1"].ResyncAll()
	c.Events.Wait(t, mark, "vault token rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "nginx", "vault-token"))
	checkLayout(t, vaultDir, "vault-token")
	if got := readClaims(t, filepath.Join(vaultDir, "vault-token")); got.Iss != newIss || got.Aud[0] != "vault" {
		t.Errorf("vault token after its refresh time: iss=%q aud=%v", got.Iss, got.Aud)
	}
	entries, _ := os.ReadDir(vaultDir)
	if len(entries) != 3 { // ..data, one timestamped dir, vault-token
		t.Errorf("old payload directories left behind in %s: %d entries", vaultDir, len(entries))
	}

	// A kubelet restart empties the cache: node-3 gets new-issuer tokens at
	// once, though it is still told not to refresh by age.
	mark = c.Events.Mark()
	c.Nodes["node-3"].RestartKubelet()
	c.Events.Wait(t, mark, "node-3 rewritten after kubelet restart", simtest.Is(kubeletsim.EventVolumeWritten, "node-3", plain[2].Name, ""))
	if got := readClaims(t, filepath.Join(stuck, "token")); got.Iss != newIss {
		t.Errorf("after a kubelet restart: iss=%q, want %q", got.Iss, newIss)
	}
}

func TestRebootEvictionAndNotReady(t *testing.T) {
	const iss = "https://kubernetes.default.svc"
	c := simtest.Start(t, iss, "node-1")
	ctx := context.Background()
	n := c.Nodes["node-1"]
	if err := c.CP.PrepareNamespace(ctx, "apps"); err != nil {
		t.Fatal(err)
	}
	mark := c.Events.Mark()
	pod := c.CreatePod(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "apps"}, Spec: corev1.PodSpec{NodeName: "node-1"}})
	c.Events.Wait(t, mark, "db synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "db", ""))
	tokenPath := filepath.Join(n.VolumeDir(pod.UID, simtest.KubeAPIAccess(t, pod)), "token")
	beforeBytes, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}

	// NotReady on request, and back.
	n.SetNotReady("container runtime is down")
	c.WaitNode(t, "node-1", "readiness", func(node *corev1.Node) bool { return !nodeReady(node) })
	n.SetNotReady("")
	c.WaitNode(t, "node-1", "readiness", nodeReady)

	// A reboot: NotReady, volumes gone, then Ready with a new boot ID and a
	// new token though the old one was not due.
	oldBoot := n.BootID()
	mark = c.Events.Mark()
	if err := n.Reboot(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Events.Wait(t, mark, "down", simtest.Is(kubeletsim.EventDown, "node-1", "", ""))
	c.WaitNode(t, "node-1", "readiness", func(node *corev1.Node) bool { return !nodeReady(node) })
	if _, err := os.Stat(tokenPath); !os.IsNotExist(err) {
		t.Errorf("token still on disk while the node is down: %v", err)
	}
	if err := n.Reboot(ctx, time.Second); err == nil {
		t.Error("a second reboot while down was accepted")
	}
	c.Clock.Step(31 * time.Second)
	c.Events.Wait(t, mark, "up", simtest.Is(kubeletsim.EventUp, "node-1", "", ""))
	c.Events.Wait(t, mark, "db rewritten after reboot", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "db", ""))
	if n.BootID() == oldBoot {
		t.Error("boot ID unchanged after reboot")
	}
	c.WaitNode(t, "node-1", "readiness", func(node *corev1.Node) bool {
		return nodeReady(node) && node.Status.NodeInfo.BootID == n.BootID()
	})
	// A new token was minted (each has its own jti), though the old one was
	// not due. The bytes are compared, never printed.
	if after, _ := os.ReadFile(tokenPath); len(after) == 0 || string(after) == string(beforeBytes) {
		t.Error("the reboot did not mint a new token")
	}

	// Eviction through the real API: the kubelet confirms the deletion and
	// cleans up the pod's directory.
	mark = c.Events.Mark()
	err = c.Admin.PolicyV1().Evictions("apps").Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "apps"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Events.Wait(t, mark, "db removed", simtest.Is(kubeletsim.EventPodRemoved, "node-1", "db", ""))
	if _, err := os.Stat(filepath.Join(n.Root(), "pods", string(pod.UID))); !os.IsNotExist(err) {
		t.Errorf("pod directory left after eviction: %v", err)
	}
	waitGone(t, c.Admin, "apps", "db")
}

// TestFailedSyncIsRetried: a pod whose volume cannot be built yet (its
// ConfigMap is missing, as a new pod's may be while the Node authorizer
// catches up) starts once it can, without the test's clock moving.
func TestFailedSyncIsRetried(t *testing.T) {
	c := simtest.Start(t, "https://kubernetes.default.svc", "node-1")
	ctx := context.Background()
	if err := c.CP.PrepareNamespace(ctx, "apps"); err != nil {
		t.Fatal(err)
	}
	mark := c.Events.Mark()
	c.CreatePod(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "apps"},
		Spec: corev1.PodSpec{NodeName: "node-1", Volumes: []corev1.Volume{{
			Name: "settings",
			VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
				ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}},
			}}}},
		}}},
	})
	c.Events.Wait(t, mark, "a failed sync", simtest.Is(kubeletsim.EventSyncError, "node-1", "late", ""))
	if _, err := c.Admin.CoreV1().ConfigMaps("apps").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"mode": "on"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Events.Wait(t, mark, "late running after a retry", simtest.Is(kubeletsim.EventPodRunning, "node-1", "late", ""))
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func waitGone(t *testing.T, c kubernetes.Interface, ns, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) == 0 {
		return
	}
	w, err := c.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == "DELETED" {
			return
		}
	}
	t.Fatalf("pod %s/%s not deleted within 30s", ns, name)
}

func listPodsAPI(t *testing.T, socket string) map[types.UID]bool {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := podsv1alpha1.NewPodsClient(conn).ListPods(ctx, &podsv1alpha1.ListPodsRequest{})
	if err != nil {
		t.Fatalf("Pods API ListPods: %v", err)
	}
	out := map[types.UID]bool{}
	for _, b := range resp.Pods {
		var p corev1.Pod
		if err := p.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		out[p.UID] = true
	}
	return out
}
