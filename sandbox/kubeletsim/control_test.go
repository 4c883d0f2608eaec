package kubeletsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// controlCLI, as the first argument, makes the test binary a stand-in for
// `tokenroll-sandbox node <action> --root DIR`: the command the agent's
// command executor runs in the sandbox.
const controlCLI = "kubeletsim-control"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == controlCLI {
		os.Exit(controlMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// controlMain takes: action root [down].
func controlMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubeletsim-control ACTION ROOT [DOWN]")
		return 2
	}
	var down time.Duration
	if len(args) > 2 {
		var err error
		if down, err = time.ParseDuration(args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kubeletsim.Control(ctx, args[1], args[0], down); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestControlSocket drives a simulated node from another process, as the
// agent's command executor does in the sandbox.
func TestControlSocket(t *testing.T) {
	c := simtest.Start(t, "https://kubernetes.default.svc", "node-1")
	ctx := context.Background()
	n := c.Nodes["node-1"]
	root := n.Root()

	// The socket is its owner's only; the boot ID file and the Node agree.
	socket := kubeletsim.ControlSocketPath(root)
	st, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want a socket with 0600", socket, st.Mode())
	}
	firstBoot := n.BootID()
	if got := readBootID(t, root); got != firstBoot {
		t.Errorf("boot_id file holds %q, the node %q", got, firstBoot)
	}
	c.WaitNode(t, "node-1", "the first boot ID", func(node *corev1.Node) bool { return node.Status.NodeInfo.BootID == firstBoot })
	checkBadRequests(t, n)

	if err := c.CP.PrepareNamespace(ctx, "apps"); err != nil {
		t.Fatal(err)
	}
	mark := c.Events.Mark()
	pod := c.CreatePod(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "apps"}, Spec: corev1.PodSpec{NodeName: "node-1"}})
	c.Events.Wait(t, mark, "db synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "db", ""))
	tokenPath := filepath.Join(n.VolumeDir(pod.UID, simtest.KubeAPIAccess(t, pod)), "token")
	before := readFile(t, tokenPath)

	// The agent's command executor, running this test binary as the CLI.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exec, err := actions.NewCommand(
		[]string{self, controlCLI, kubeletsim.ActionReboot, root, "2s"},
		[]string{self, controlCLI, kubeletsim.ActionRestartKubelet, root},
		time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	// A kubelet restart: done when the command returns; the token cache is
	// empty, so the volume is rewritten with a new token.
	mark = c.Events.Mark()
	if err := exec.RestartKubelet(ctx); err != nil {
		t.Fatalf("kubelet restart through the socket: %v", err)
	}
	c.Events.Wait(t, mark, "kubelet restarted", simtest.Is(kubeletsim.EventKubeletRestarted, "node-1", "", ""))
	c.Events.Wait(t, mark, "db rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "db", ""))
	// Tokens are compared, never printed.
	if after := readFile(t, tokenPath); after == before {
		t.Error("the kubelet restart did not mint a new token")
	}

	// A reboot: the command returns once it has begun; the node then goes
	// NotReady, refuses a second reboot and a kubelet restart, and comes back
	// Ready with a new boot ID that the file and the Node agree on.
	mark = c.Events.Mark()
	if err := exec.Reboot(ctx); err != nil {
		t.Fatalf("reboot through the socket: %v", err)
	}
	c.Events.Wait(t, mark, "down", simtest.Is(kubeletsim.EventDown, "node-1", "", ""))
	c.WaitNode(t, "node-1", "NotReady", func(node *corev1.Node) bool { return !nodeReady(node) })
	if err := exec.Reboot(ctx); err == nil || !strings.Contains(err.Error(), "already rebooting") {
		t.Errorf("second reboot while down: %v, want a refusal that says the node is already rebooting", err)
	}
	if err := kubeletsim.Control(ctx, root, kubeletsim.ActionRestartKubelet, 0); err == nil || !strings.Contains(err.Error(), "rebooting") {
		t.Errorf("kubelet restart while down: %v, want a refusal", err)
	}
	if got := readBootID(t, root); got != firstBoot {
		t.Errorf("boot ID file changed to %q while the node was down", got)
	}
	c.Clock.Step(3 * time.Second)
	c.Events.Wait(t, mark, "up", simtest.Is(kubeletsim.EventUp, "node-1", "", ""))
	newBoot := n.BootID()
	if newBoot == firstBoot {
		t.Fatal("boot ID unchanged after the reboot")
	}
	if got := readBootID(t, root); got != newBoot {
		t.Errorf("boot_id file holds %q after the reboot, the node %q", got, newBoot)
	}
	c.WaitNode(t, "node-1", "Ready with the new boot ID", func(node *corev1.Node) bool {
		return nodeReady(node) && node.Status.NodeInfo.BootID == newBoot
	})
	c.Events.Wait(t, mark, "db rewritten after the reboot", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", "db", ""))

	// The socket outlived the reboot.
	mark = c.Events.Mark()
	if err := kubeletsim.Control(ctx, root, kubeletsim.ActionRestartKubelet, 0); err != nil {
		t.Fatalf("kubelet restart after the reboot: %v", err)
	}
	c.Events.Wait(t, mark, "kubelet restarted after the reboot", simtest.Is(kubeletsim.EventKubeletRestarted, "node-1", "", ""))
}

// TestControlErrors checks that what goes wrong is said, without a control
// plane: a missing node, an unknown action, and bad requests on the wire.
func TestControlErrors(t *testing.T) {
	ctx := context.Background()
	missing := t.TempDir()
	err := kubeletsim.Control(ctx, missing, kubeletsim.ActionReboot, time.Second)
	if err == nil || !strings.Contains(err.Error(), "no simulated node serves") {
		t.Errorf("control of a missing node: %v", err)
	}
	if err := kubeletsim.Control(ctx, missing, "explode", 0); err == nil || !strings.Contains(err.Error(), `unknown action "explode"`) {
		t.Errorf("unknown action: %v", err)
	}
	if err := kubeletsim.Control(ctx, missing, kubeletsim.ActionReboot, -time.Second); err == nil {
		t.Error("a negative downtime was accepted")
	}
}

// checkBadRequests sends malformed requests to the socket: each is refused
// with a JSON error that says what is wrong, and nothing happens.
func checkBadRequests(t *testing.T, n *kubeletsim.Node) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", kubeletsim.ControlSocketPath(n.Root()))
	}}}
	defer client.CloseIdleConnections()
	boot := n.BootID()
	for _, tc := range []struct {
		method, path string
		code         int
		says         string
	}{
		{http.MethodPost, "/reboot?down=banana", http.StatusBadRequest, `down="banana"`},
		{http.MethodPost, "/reboot?down=0s", http.StatusBadRequest, "above 0"},
		{http.MethodPost, "/reboot?down=2h", http.StatusBadRequest, "at most 1h0m0s"},
		{http.MethodGet, "/reboot", http.StatusNotFound, "no such action"},
		{http.MethodPost, "/shutdown", http.StatusNotFound, "no such action"},
	} {
		req, _ := http.NewRequest(tc.method, "http://kubeletsim"+tc.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.code || !strings.Contains(body.Error, tc.says) {
			t.Errorf("%s %s: %d %q (%v), want %d saying %q", tc.method, tc.path, resp.StatusCode, body.Error, err, tc.code, tc.says)
		}
	}
	if n.BootID() != boot || readBootID(t, n.Root()) != boot {
		t.Error("a rejected request rebooted the node")
	}
}

func readBootID(t *testing.T, root string) string {
	t.Helper()
	return strings.TrimSpace(readFile(t, kubeletsim.BootIDPath(root)))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
