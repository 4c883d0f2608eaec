package actions

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// simHost is the host side for a simulated node: the executor the agent's
// command executor would reach in the sandbox.
type simHost struct {
	node    *kubeletsim.Node
	bootDir string
	mu      sync.Mutex
	calls   []string
}

func (h *simHost) Reboot(ctx context.Context) error {
	h.mu.Lock()
	h.calls = append(h.calls, "reboot")
	h.mu.Unlock()
	return h.node.Reboot(context.WithoutCancel(ctx), 10*time.Second)
}

func (h *simHost) RestartKubelet(context.Context) error {
	h.mu.Lock()
	h.calls = append(h.calls, "kubelet-restart")
	h.mu.Unlock()
	h.node.RestartKubelet()
	return nil
}

func (h *simHost) writeBootID(t *testing.T) string {
	t.Helper()
	p := filepath.Join(h.bootDir, "boot_id")
	if err := os.WriteFile(p, []byte(h.node.BootID()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// agentIdentity is what the agent's DaemonSet pod on node has: its service
// account's token bound to that pod, carrying the node's name. RBAC lets it
// watch Nodes and patch them (the deploy issue narrows writes to its own
// Node with an admission policy).
func agentIdentity(t *testing.T, c *simtest.Cluster, node string) nodeclient.Nodes {
	t.Helper()
	ctx := context.Background()
	if err := c.CP.PrepareNamespace(ctx, "tokenroll"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.CoreV1().ServiceAccounts("tokenroll").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent-actions"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent-actions"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "tokenroll-agent-actions"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "tokenroll", Name: "agent"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := c.CreatePod(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-agent-" + node, Namespace: "tokenroll"},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "agent"},
	})
	cfg, err := c.CP.PodServiceAccountConfig(ctx, pod, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := review.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != node {
		t.Fatalf("agent identity carries node %v, want %s", got, node)
	}
	nodes, _, err := nodeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func runWatcher(t *testing.T, client nodeclient.Nodes, node string, h *Handler, sentinel string) context.CancelFunc {
	t.Helper()
	w, err := NewWatcher(WatcherConfig{Client: client, NodeName: node, Handler: h, RebootSentinel: sentinel, SentinelInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// setRequest is the coordinator's write.
func setRequest(t *testing.T, c *simtest.Cluster, node string, r protocol.Request) {
	t.Helper()
	b, _ := json.Marshal(r)
	if err := patchAnnotation(context.Background(), c.Admin.CoreV1().Nodes(), node, protocol.AnnotationRequest, string(b)); err != nil {
		t.Fatal(err)
	}
}

// waitStatus watches the Node until its status annotation matches.
func waitStatus(t *testing.T, c *simtest.Cluster, node string, match func(protocol.Status) bool) protocol.Status {
	t.Helper()
	n := c.WaitNode(t, node, "a request status", func(n *corev1.Node) bool {
		s, err := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus])
		return err == nil && match(s)
	})
	s, _ := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus])
	return s
}

func TestAgentActsOnItsOwnNodeThroughTheAPIServer(t *testing.T) {
	c := simtest.Start(t, "https://kubernetes.default.svc", "node-1", "node-2")
	client := agentIdentity(t, c, "node-1")
	host := &simHost{node: c.Nodes["node-1"], bootDir: t.TempDir()}
	stateDir := t.TempDir()
	sentinel := filepath.Join(t.TempDir(), "reboot-required")
	newHandler := func() *Handler {
		h, err := NewHandler(HandlerConfig{NodeName: "node-1", Executor: host, StateDir: stateDir, BootIDFile: host.writeBootID(t),
			MaxRequestAge: time.Hour, Reporter: NodeReporter{Client: client, NodeName: "node-1"}})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	stop := runWatcher(t, client, "node-1", newHandler(), sentinel)

	// A kubelet restart: done, and the simulated kubelet rewrote its volumes.
	mark := c.Events.Mark()
	setRequest(t, c, "node-1", protocol.Request{ID: "r1", Action: protocol.ActionKubeletRestart, Node: "node-1", Rollout: "test", CreatedAt: time.Now()})
	waitStatus(t, c, "node-1", func(s protocol.Status) bool { return s.ID == "r1" && s.Phase == protocol.PhaseDone })
	c.Events.Wait(t, mark, "kubelet restarted", simtest.Is(kubeletsim.EventKubeletRestarted, "node-1", "", ""))

	// A request naming another node is refused, and node-2 is not touched.
	setRequest(t, c, "node-1", protocol.Request{ID: "r2", Action: protocol.ActionReboot, Node: "node-2", CreatedAt: time.Now()})
	waitStatus(t, c, "node-1", func(s protocol.Status) bool { return s.ID == "r2" && s.Phase == protocol.PhaseRefused })
	n2, err := c.Admin.CoreV1().Nodes().Get(context.Background(), "node-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k := range n2.Annotations {
		if len(k) > len(protocol.Prefix) && k[:len(protocol.Prefix)] == protocol.Prefix {
			t.Errorf("node-2 carries %s", k)
		}
	}

	// The reboot sentinel appears and goes.
	if err := os.WriteFile(sentinel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitAnnotation(t, c, "node-1", protocol.AnnotationRebootRequired, protocol.RebootRequiredValue())
	if err := os.Remove(sentinel); err != nil {
		t.Fatal(err)
	}
	waitAnnotation(t, c, "node-1", protocol.AnnotationRebootRequired, "")

	// A reboot: running while the node is down; the agent that starts after
	// the reboot reports done with the new boot ID, and never reboots again.
	oldBoot := host.node.BootID()
	mark = c.Events.Mark()
	setRequest(t, c, "node-1", protocol.Request{ID: "r3", Action: protocol.ActionReboot, Node: "node-1", CreatedAt: time.Now()})
	waitStatus(t, c, "node-1", func(s protocol.Status) bool { return s.ID == "r3" && s.Phase == protocol.PhaseRunning })
	c.Events.Wait(t, mark, "node down", simtest.Is(kubeletsim.EventDown, "node-1", "", ""))
	stop() // the agent goes down with the host
	c.Clock.Step(11 * time.Second)
	c.Events.Wait(t, mark, "node up", simtest.Is(kubeletsim.EventUp, "node-1", "", ""))
	runWatcher(t, client, "node-1", newHandler(), sentinel) // writes the new boot ID first
	s := waitStatus(t, c, "node-1", func(s protocol.Status) bool { return s.ID == "r3" && s.Phase == protocol.PhaseDone })
	if s.BootID == oldBoot || s.BootID != host.node.BootID() {
		t.Errorf("done with boot ID %q; before %q, now %q", s.BootID, oldBoot, host.node.BootID())
	}
	host.mu.Lock()
	defer host.mu.Unlock()
	if len(host.calls) != 2 || host.calls[0] != "kubelet-restart" || host.calls[1] != "reboot" {
		t.Errorf("host saw %v, want one kubelet restart and one reboot", host.calls)
	}
}

func waitAnnotation(t *testing.T, c *simtest.Cluster, node, key, want string) {
	t.Helper()
	c.WaitNode(t, node, key+"="+want, func(n *corev1.Node) bool { return n.Annotations[key] == want })
}
