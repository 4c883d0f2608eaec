package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

// realNode is a worker node running the real kubelet code of the pinned
// Kubernetes as two processes, as a machine runs kubelet.service and a
// container runtime: hollow-kubelet (the kubelet over kubemark's fakes,
// with a fixed root directory) and fake-runtime, the CRI runtime it talks
// to over a unix socket. A kubelet restart stops and starts the kubelet
// process alone: the containers live in the runtime and keep running. A
// reboot stops both, removes the projected volumes (tmpfs on a machine),
// writes a new boot ID and starts both: the containers start again. The
// node serves kubeletsim's control socket, so the agents' commands
// (tokenroll-sandbox node reboot|restart-kubelet) reach it as they reach a
// simulated node.
type realNode struct {
	name string
	root string
	// client has the node's identity; it posts NotReady when the node
	// shuts down, as the kubelet's graceful node shutdown does.
	client   kubernetes.Interface
	kubelet  *child
	runtime  *child
	observer func(kubeletsim.Event)
	log      *zap.Logger

	mu       sync.Mutex
	bootID   string
	down     bool
	stopping bool
	reboots  sync.WaitGroup
}

// realNodeConfig says how to run one real node.
type realNodeConfig struct {
	Name string
	// Root is the kubelet's --root-dir.
	Root       string
	Kubeconfig string
	Client     kubernetes.Interface
	Binaries   controlplane.KubeletBinaries
	// LogDir receives kubelet-NAME.log and runtime-NAME.log.
	LogDir string
	// PodIPs is the range the runtime gives pod sandboxes their IPs from.
	PodIPs   netip.Prefix
	Observer func(kubeletsim.Event)
	Log      *zap.Logger
}

// maxRealNodeRoot is the longest kubelet root whose sockets fit a unix
// socket path (107 bytes): the kubelet binds pod-resources/NNNNNNNNNN
// before renaming it into place.
const maxRealNodeRoot = 107 - len("/pod-resources/") - 10

// runtimeSocket is where the node's fake runtime serves CRI.
func runtimeSocket(root string) string { return filepath.Join(root, "runtime.sock") }

func newRealNode(cfg realNodeConfig) *realNode {
	n := &realNode{name: cfg.Name, root: cfg.Root, client: cfg.Client, observer: cfg.Observer, log: cfg.Log.With(zap.String("node", cfg.Name))}
	endpoint := "unix://" + runtimeSocket(cfg.Root)
	n.runtime = newChild("runtime "+cfg.Name, "", func(string) []string {
		return []string{cfg.Binaries.FakeRuntime, "--endpoint=" + endpoint, "--pod-ip-range=" + cfg.PodIPs.String()}
	}, filepath.Join(cfg.LogDir, "runtime-"+cfg.Name+".log"))
	n.kubelet = newChild("kubelet "+cfg.Name, "", func(string) []string {
		return []string{cfg.Binaries.HollowKubelet, "--name=" + cfg.Name, "--kubeconfig=" + cfg.Kubeconfig,
			"--root-dir=" + cfg.Root, "--runtime-endpoint=" + endpoint, "--boot-id-file=" + kubeletsim.BootIDPath(cfg.Root), "--v=1"}
	}, filepath.Join(cfg.LogDir, "kubelet-"+cfg.Name+".log"))
	crashed := func(c *child, err error) {
		n.log.Warn("node process ended by itself; starting it again", zap.String("process", c.name), zap.String("status", waitStatus(err)),
			zap.String("log", c.logPath))
	}
	n.runtime.exited, n.kubelet.exited = crashed, crashed
	return n
}

func (n *realNode) Name() string { return n.name }
func (n *realNode) Root() string { return n.root }

// PodsAPISocket is the kubelet Pods API socket, under the kubelet's root.
func (n *realNode) PodsAPISocket() string { return filepath.Join(n.root, "pods-api", "pods-api.sock") }

func (n *realNode) BootID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bootID
}

func (n *realNode) Down() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.down
}

func (n *realNode) emit(kind kubeletsim.EventKind) {
	if n.observer != nil {
		n.observer(kubeletsim.Event{Kind: kind, Node: n.name})
	}
}

// start boots the node: a boot ID, the runtime, then the kubelet once the
// runtime answers, and the control socket. The processes run until ctx
// ends; wg tracks them.
func (n *realNode) start(ctx context.Context, wg *sync.WaitGroup) error {
	if len(n.root) > maxRealNodeRoot {
		return fmt.Errorf("node %s: its root %s is %d bytes; the kubelet binds unix sockets under it (pod-resources/ and a 10-digit temporary name), and a socket path holds at most 107 bytes: use a directory of at most %d bytes for the nodes (a shorter --dir)",
			n.name, n.root, len(n.root), maxRealNodeRoot)
	}
	if err := os.MkdirAll(n.root, 0o750); err != nil {
		return err
	}
	if _, err := n.newBoot(); err != nil {
		return err
	}
	if err := startChildren(ctx, wg, []*child{n.runtime}); err != nil {
		return err
	}
	if err := waitSocket(ctx, runtimeSocket(n.root), 30*time.Second); err != nil {
		return fmt.Errorf("node %s: the fake runtime did not serve %s: %w; its log: %s", n.name, runtimeSocket(n.root), err, n.runtime.logPath)
	}
	if err := startChildren(ctx, wg, []*child{n.kubelet}); err != nil {
		return err
	}
	control, err := kubeletsim.ServeControl(ctx, n.root, n, n.log)
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		n.mu.Lock()
		n.stopping = true
		n.mu.Unlock()
		control.Stop(n.log)
		n.reboots.Wait()
	}()
	return nil
}

// waitReady waits until the Node is Ready and reports the current boot ID.
func (n *realNode) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		node, err := n.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case node.Status.NodeInfo.BootID != n.BootID():
			last = fmt.Sprintf("reports boot ID %q", node.Status.NodeInfo.BootID)
		case !nodeReady(node):
			last = "not Ready"
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s did not come up Ready within %s (last: %s); the end of its kubelet's log, %s:\n%s",
				n.name, timeout, last, n.kubelet.logPath, logTail(n.kubelet.logPath, 15))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// RestartKubelet is `systemctl restart kubelet`: SIGTERM, then a new
// process; it returns once the new process has started. The runtime and
// its containers are untouched.
func (n *realNode) RestartKubelet() error {
	if n.Down() {
		return fmt.Errorf("node %s is rebooting; restart the kubelet once it is up", n.name)
	}
	before := n.kubelet.startCount()
	n.kubelet.stop(syscall.SIGTERM)
	n.kubelet.release()
	deadline := time.Now().Add(30 * time.Second)
	for n.kubelet.startCount() == before {
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: the kubelet did not start again within 30s; its log: %s", n.name, n.kubelet.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.log.Info("kubelet restarted")
	return nil
}

// Reboot is `systemctl reboot`: it returns once the reboot has begun. The
// node reports NotReady, its kubelet and runtime stop, its projected
// volumes go (tmpfs on a machine) and, after down, it boots with a new
// boot ID and starts both again. The reboot lasts as long as ctx: ended,
// the node stays down.
func (n *realNode) Reboot(ctx context.Context, down time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		return fmt.Errorf("node %s is stopping; not rebooting it", n.name)
	}
	if n.down {
		return fmt.Errorf("node %s is already rebooting; wait until it is Ready again", n.name)
	}
	n.down = true
	n.reboots.Add(1)
	go func() {
		defer n.reboots.Done()
		n.goDown(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(down):
		}
		if err := n.comeUp(ctx); err != nil && ctx.Err() == nil {
			n.log.Error("booting the node again", zap.Error(err))
		}
	}()
	return nil
}

func (n *realNode) goDown(ctx context.Context) {
	cond := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady",
		Message: "node is shutting down", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if _, err := n.client.CoreV1().Nodes().PatchStatus(ctx, n.name, patch); err != nil && ctx.Err() == nil {
		n.log.Warn("posting NotReady before the reboot", zap.Error(err))
	}
	n.kubelet.stop(syscall.SIGTERM)
	n.runtime.stop(syscall.SIGTERM)
	pods, _ := filepath.Glob(filepath.Join(n.root, "pods", "*", "volumes", "kubernetes.io~projected"))
	for _, dir := range pods {
		if err := os.RemoveAll(dir); err != nil {
			n.log.Warn("removing projected volumes at shutdown", zap.String("dir", dir), zap.Error(err))
		}
	}
	n.log.Info("node down for a reboot")
	n.emit(kubeletsim.EventDown)
}

func (n *realNode) comeUp(ctx context.Context) error {
	id, err := n.newBoot()
	if err != nil {
		return err
	}
	n.runtime.release()
	if err := waitSocket(ctx, runtimeSocket(n.root), 30*time.Second); err != nil {
		return fmt.Errorf("the fake runtime did not serve %s after the reboot: %w; its log: %s", runtimeSocket(n.root), err, n.runtime.logPath)
	}
	n.kubelet.release()
	n.mu.Lock()
	n.down = false
	n.mu.Unlock()
	n.log.Info("node up after a reboot", zap.String("bootID", id))
	n.emit(kubeletsim.EventUp)
	return nil
}

// waitSocket waits until something accepts connections on the unix socket
// at path.
func waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// newBoot gives the node a new boot ID, in its file and in memory, and
// returns it.
func (n *realNode) newBoot() (string, error) {
	id := kubeletsim.NewBootID()
	if err := kubeletsim.WriteBootID(n.root, id); err != nil {
		return "", err
	}
	n.mu.Lock()
	n.bootID = id
	n.mu.Unlock()
	return id, nil
}
