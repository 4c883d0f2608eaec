package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/invariants"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// podSet is the workload: pods bound to the nodes (the API server's
// ServiceAccount admission gives each the kube-api-access projected token
// volume), and their replacement at a steady rate.
type podSet struct {
	client   kubernetes.Interface
	nodes    []string
	retry    apiretry.Policy
	mu       sync.Mutex
	live     []string // pod names
	next     atomic.Int64
	replaced atomic.Int64
	// failed counts replacements that failed; lastErr is the last one's
	// error.
	failed  atomic.Int64
	lastErr atomic.Pointer[error]
}

func newPodSet(client kubernetes.Interface, nodes []string) *podSet {
	return &podSet{client: client, nodes: nodes, retry: apiretry.Default()}
}

// created is how many pods exist.
func (p *podSet) created() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live)
}

// create makes one pod on node, through the API server's transient faults
// (a pod whose creation answer was lost is there: AlreadyExists is done).
func (p *podSet) create(ctx context.Context, node string) error {
	name := fmt.Sprintf("app-%d", p.next.Add(1))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: workloads, Labels: map[string]string{"app": "scalebench"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}}
	err := p.retry.Do(ctx, func(ctx context.Context) error {
		_, err := p.client.CoreV1().Pods(workloads).Create(ctx, pod, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s on %s: %w", workloads, name, node, err)
	}
	p.mu.Lock()
	p.live = append(p.live, name)
	p.mu.Unlock()
	return nil
}

// fill creates perNode pods on every node, workers at a time: the first
// pod of every node, then the second, so that a run stopped half-way has
// spread its pods.
func (p *podSet) fill(ctx context.Context, perNode, workers int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for node := range work {
				if err := p.create(ctx, node); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
feed:
	for range perNode {
		for _, n := range p.nodes {
			select {
			case work <- n:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

// churn replaces a random pod with a new one on the same node, perSecond
// times a second, until ctx ends. A replacement that fails is counted
// (failed, lastErr) and the next one goes on: steady state measures the
// fleet, not one request.
func (p *podSet) churn(ctx context.Context, perSecond float64) error {
	if perSecond <= 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if err := p.replace(ctx); err != nil && ctx.Err() == nil {
			p.failed.Add(1)
			p.lastErr.Store(&err)
		}
	}
}

func (p *podSet) replace(ctx context.Context) error {
	p.mu.Lock()
	i := rand.IntN(len(p.live))
	name := p.live[i]
	p.live[i] = p.live[len(p.live)-1]
	p.live = p.live[:len(p.live)-1]
	p.mu.Unlock()
	pod, err := p.client.CoreV1().Pods(workloads).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading pod %s/%s to replace it: %w", workloads, name, err)
	}
	if err := p.client.CoreV1().Pods(workloads).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", workloads, name, err)
	}
	if err := p.create(ctx, pod.Spec.NodeName); err != nil {
		return err
	}
	p.replaced.Add(1)
	return nil
}

// coordinatorProc is the coordinator's process.
type coordinatorProc struct {
	cmd     *exec.Cmd
	metrics string // host:port of its /metrics
	client  kubernetes.Interface
	done    chan error
}

// startCoordinator runs the binary against API server 1 with its own
// identity and the shipped defaults, but for the gate (this control plane
// has no revision), kured (not deployed), the strategy (kubelet-restart:
// the default, auto, would evict the benchmark's pods, which no controller
// recreates) and --max-unavailable; with --profiling when the benchmark
// fetches its CPU profiles.
func startCoordinator(ctx context.Context, cp *controlplane.ControlPlane, server, bin, dir string, o options) (*coordinatorProc, error) {
	cfg, err := cp.UserConfig(coordinatorUser, "system:masters")
	if err != nil {
		return nil, err
	}
	cfg.Host = server
	kubeconfig := filepath.Join(dir, "coordinator.kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, cfg); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logFile, err := os.Create(filepath.Join(dir, "coordinator.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--namespace="+namespace, "--gate=none", "--kured-lock=", "--strategy=kubelet-restart",
		"--max-unavailable="+o.MaxUnavailable, "--metrics-bind-address="+addr)
	if o.CPUProfileDir != "" {
		cmd.Args = append(cmd.Args, "--profiling")
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting the coordinator %s: %w", bin, err)
	}
	client, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return nil, err
	}
	c := &coordinatorProc{cmd: cmd, metrics: addr, client: client, done: make(chan error, 1)}
	go func() {
		c.done <- cmd.Wait()
		logFile.Close()
	}()
	return c, nil
}

func (c *coordinatorProc) pid() int { return c.cmd.Process.Pid }

func (c *coordinatorProc) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.done:
		c.done <- err
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		c.done <- <-c.done
	}
}

func (c *coordinatorProc) scrape(ctx context.Context) ([]byte, error) {
	select {
	case err := <-c.done:
		c.done <- err
		return nil, fmt.Errorf("the coordinator exited (%w); its log is coordinator.log in the run's directory", err)
	default:
	}
	req, err := newGet(ctx, "http://"+c.metrics+"/metrics")
	if err != nil {
		return nil, err
	}
	return req()
}

// waitLeading waits until the coordinator leads and its gate is open.
func (c *coordinatorProc) waitLeading(ctx context.Context) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		body, err := c.scrape(ctx)
		if err != nil {
			if errors.Is(err, errNotServing) {
				return false, nil
			}
			return false, err
		}
		return gauge(body, "tokenroll_coordinator_leader") == 1 && gauge(body, `tokenroll_gate_open{provider="none"}`) == 1, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the coordinator to lead with its gate open: %w", err)
	}
	return nil
}

// waitPublished waits until the coordinator has published the issuer for
// the agents, as it has in a fleet that has run for a while: until then
// they read OIDC discovery on their timer.
func waitPublished(ctx context.Context, admin kubernetes.Interface) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := admin.CoreV1().ConfigMaps(namespace).Get(ctx, protocol.IssuerConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		_, err = protocol.ParsePublishedIssuer(cm.Data)
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the coordinator to publish the issuer in ConfigMap %s/%s (its log is coordinator.log in the run's directory): %w",
			namespace, protocol.IssuerConfigMapName, err)
	}
	return nil
}

func (c *coordinatorProc) syncHistogram(ctx context.Context) (benchkit.Histogram, error) {
	body, err := c.scrape(ctx)
	if err != nil {
		return benchkit.Histogram{}, err
	}
	return benchkit.ParseHistogram(body, "tokenroll_plan_sync_duration_seconds", nil)
}

// serverReading is what one API server's /metrics said.
type serverReading struct {
	counts  benchkit.Counts
	latency benchkit.Histogram
}

// readServers reads every API server's request counts and the latency of
// its requests but WATCH and CONNECT, which last as long as the client
// keeps them.
func readServers(ctx context.Context, clients []kubernetes.Interface) ([]serverReading, error) {
	out := make([]serverReading, len(clients))
	for i, c := range clients {
		body, err := c.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading /metrics of API server %d: %w", i, err)
		}
		if out[i].counts, err = benchkit.ParseRequests(body); err != nil {
			return nil, err
		}
		out[i].latency, err = benchkit.ParseHistogram(body, "apiserver_request_duration_seconds", func(l map[string]string) bool {
			return l["verb"] != "WATCH" && l["verb"] != "CONNECT"
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// peakRSS follows a process's resident memory.
type peakRSS struct{ max atomic.Int64 }

func (p *peakRSS) follow(ctx context.Context, pid int) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if u, err := benchkit.ReadProc(pid); err == nil && u.RSSBytes > p.max.Load() {
			p.max.Store(u.RSSBytes)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func countDone(checker *invariants.Checker, names []string) int {
	done := 0
	_ = checker.WaitFor(context.Background(), func(m map[string]*corev1.Node) bool {
		for _, name := range names {
			if n := m[name]; n != nil {
				if st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil && st.Step == protocol.StepDone {
					done++
				}
			}
		}
		return true
	})
	return done
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
