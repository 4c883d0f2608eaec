package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
	"github.com/tokenroll/tokenroll/sandbox/invariants"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

const (
	namespace = "tokenroll"
	leaseName = "tokenroll-coordinator"
	workloads = "apps"
	// Nodes, agents and the benchmark use API server 0; the coordinator
	// API server 1 alone.
	nodesServer       = 0
	coordinatorServer = 1
	newIssuer         = "https://issuer.scalebench.example"
	// agentSettled is how far the agents' clocks are stepped before steady
	// state: past the agent's first ten minutes, when it follows its pods'
	// counts within a minute instead of an hour.
	agentSettled = 11 * time.Minute
	// The agents' and simulated kubelets' timings, as shipped: the agent's
	// --interval and --issuer-refresh-interval defaults, the kubelet's
	// nodeStatusReportFrequency.
	agentInterval  = 30 * time.Second
	issuerRefresh  = 10 * time.Minute
	statusInterval = 5 * time.Minute
)

// runAll measures every size and fits the model.
func runAll(ctx context.Context, o options, log *zap.Logger) (*Summary, error) {
	dir, err := os.MkdirTemp("", "tokenroll-scalebench-")
	if err != nil {
		return nil, err
	}
	kept := false
	defer func() {
		if !kept {
			os.RemoveAll(dir)
		}
	}()
	bin := o.CoordinatorBinary
	if bin == "" {
		bin = filepath.Join(dir, "tokenroll-coordinator")
		log.Info("building the coordinator", zap.String("binary", bin))
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tokenroll-coordinator").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("building ./cmd/tokenroll-coordinator (run from the repository root, or pass --coordinator-binary): %w: %s", err, out)
		}
	}
	agentBin := o.AgentBinary
	if agentBin == "" {
		agentBin = filepath.Join(dir, "tokenroll-agent")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "./cmd/tokenroll-agent").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("building ./cmd/tokenroll-agent (run from the repository root, or pass --agent-binary): %w: %s", err, out)
		}
	}
	sum := &Summary{MaxUnavailable: o.MaxUnavailable, Churn: o.Churn, Steady: o.Steady.Seconds()}
	sum.PodsPerNode = o.PodsPerNode
	for _, n := range o.Nodes {
		log.Info("measuring", zap.Int("nodes", n))
		r, err := runOne(ctx, o, n, bin, agentBin, filepath.Join(dir, fmt.Sprintf("n%d", n)), log)
		if err != nil {
			kept = true
			return nil, fmt.Errorf("%d nodes: %w (the run's logs are kept in %s)", n, err, dir)
		}
		sum.Runs = append(sum.Runs, *r)
		fmt.Fprintf(os.Stderr, "scalebench: %d nodes measured\n", n)
	}
	sum.fit()
	return sum, nil
}

// agentCounter counts the agents' API requests from their side.
type agentCounter struct {
	nodeWrites, watches, reads atomic.Int64
}

func (c *agentCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		switch {
		case req.Method != http.MethodGet && strings.Contains(req.URL.Path, "/nodes"):
			c.nodeWrites.Add(1)
		case req.URL.Query().Get("watch") == "true":
			c.watches.Add(1)
		default:
			c.reads.Add(1)
		}
		return rt.RoundTrip(req)
	})
}

func (c *agentCounter) read() [3]int64 {
	return [3]int64{c.nodeWrites.Load(), c.watches.Load(), c.reads.Load()}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// steppedClock is real time moved forward by an offset the benchmark
// sets; its timers and tickers run in real time.
type steppedClock struct {
	clock.RealClock
	offset atomic.Int64
}

func (c *steppedClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *steppedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c *steppedClock) step(d time.Duration)            { c.offset.Add(int64(d)) }

// runOne measures one fleet size on a fresh control plane.
func runOne(ctx context.Context, o options, n int, bin, agentBin, dir string, log *zap.Logger) (*Run, error) {
	began := time.Now()
	bins, err := controlplane.FindBinaries(o.BinDir)
	if err != nil {
		return nil, err
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{Binaries: bins, Dir: filepath.Join(dir, "controlplane"), APIServers: 2})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	pins := make([]*pin, cp.APIServers())
	for i := range pins {
		if pins[i], err = newPin(func() string { return cp.APIServerURL(i) }); err != nil {
			return nil, err
		}
		defer pins[i].close()
	}
	at := func(c *rest.Config, server int) *rest.Config {
		c = rest.CopyConfig(c)
		c.Host = pins[server].URL()
		return c
	}
	adminCfg := at(cp.AdminConfig(), nodesServer)
	adminCfg.QPS, adminCfg.Burst = 500, 1000
	admin, err := kubernetes.NewForConfig(adminCfg)
	if err != nil {
		return nil, err
	}
	for _, ns := range []string{namespace, workloads} {
		if err := cp.PrepareNamespace(ctx, ns); err != nil {
			return nil, err
		}
	}
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		return nil, err
	}
	api, err := versioned.NewForConfig(adminCfg)
	if err != nil {
		return nil, err
	}
	runCtx, stopNodes := context.WithCancel(ctx)
	var nodes *fleet.Fleet
	defer func() {
		stopNodes()
		if nodes != nil {
			nodes.Wait()
		}
	}()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d", i+1)
	}
	// The pods come first, bound to their nodes by name: each simulated
	// kubelet finds all of its pods when it starts, and each agent its
	// node's tokens within its first ten minutes, when it follows their
	// counts within a minute, however long creating them took.
	log.Info("creating pods", zap.Int("pods", n*o.PodsPerNode))
	pods := newPodSet(admin, append(slices.Clone(names), calibrationNode))
	if err := pods.fill(ctx, o.PodsPerNode); err != nil {
		return nil, err
	}
	counter := &agentCounter{}
	agentClock := &steppedClock{}
	nodes, err = fleet.Start(runCtx, fleet.Config{CP: cp, APIServer: pins[nodesServer].URL(), Dir: filepath.Join(dir, "nodes"), Nodes: names,
		AgentInterval: agentInterval, IssuerRefresh: issuerRefresh, StatusInterval: statusInterval, AgentClock: agentClock, RebootDown: time.Second,
		AgentConfig: func(_ string, rc *rest.Config) (*rest.Config, error) {
			rc = rest.CopyConfig(rc)
			rc.Wrap(counter.wrap)
			return rc, nil
		}, Log: log})
	if err != nil {
		return nil, err
	}
	calib, err := startCalibration(runCtx, cp, pins[nodesServer].URL(), agentBin, dir, log)
	if err != nil {
		return nil, err
	}
	defer calib.stop()
	checker, err := invariants.Watch(runCtx, admin, namespace, leaseName)
	if err != nil {
		return nil, err
	}
	if err := benchkit.WaitFor(ctx, checker, 10*time.Minute, fmt.Sprintf("every agent reports %d tokens", o.PodsPerNode), func(m map[string]*corev1.Node) bool {
		return benchkit.EveryNode(m, names, func(node *corev1.Node) bool {
			rep, err := protocol.ParseTokenReport(node.Annotations[protocol.AnnotationTokens])
			return err == nil && rep.Tokens == o.PodsPerNode && len(rep.Stale) == 0 && nodeutil.Ready(node)
		})
	}); err != nil {
		return nil, err
	}
	run := &Run{Nodes: n, PodsPerNode: o.PodsPerNode}
	run.SetupSeconds = time.Since(began).Seconds()

	coord, err := startCoordinator(ctx, cp, pins[coordinatorServer].URL(), bin, dir, o)
	if err != nil {
		return nil, err
	}
	defer coord.stop()
	if err := coord.waitLeading(ctx); err != nil {
		return nil, err
	}

	// Phase 1: steady state.
	agentClock.step(agentSettled)
	if err := benchkit.Sleep(ctx, 5*time.Second); err != nil { // writes the step itself caused land first
		return nil, err
	}
	log.Info("steady state", zap.Duration("window", o.Steady))
	agentsBefore := counter.read()
	procBefore, err := benchkit.ReadProc(coord.pid())
	if err != nil {
		return nil, err
	}
	calibBefore, err := calib.read()
	if err != nil {
		return nil, fmt.Errorf("the calibration agent: %w", err)
	}
	syncBefore, err := coord.syncHistogram(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	churnCtx, stopChurn := context.WithTimeout(ctx, o.Steady)
	churnErr := pods.churn(churnCtx, o.Churn*float64(n)/3600)
	stopChurn()
	if churnErr != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	window := time.Since(t0)
	agentsAfter := counter.read()
	procAfter, err := benchkit.ReadProc(coord.pid())
	if err != nil {
		return nil, err
	}
	calibAfter, err := calib.read()
	if err != nil {
		return nil, fmt.Errorf("the calibration agent: %w", err)
	}
	syncAfter, err := coord.syncHistogram(ctx)
	if err != nil {
		return nil, err
	}
	perNodeHour := func(d int64) float64 { return float64(d) / float64(n) * time.Hour.Seconds() / window.Seconds() }
	st := &run.Steady
	st.WindowSeconds = window.Seconds()
	st.PodsReplaced = pods.replaced.Load()
	st.AgentNodeWritesPerNodeHour = perNodeHour(agentsAfter[0] - agentsBefore[0])
	st.AgentWatchesPerNodeHour = perNodeHour(agentsAfter[1] - agentsBefore[1])
	st.AgentReadsPerNodeHour = perNodeHour(agentsAfter[2] - agentsBefore[2])
	st.AgentRequestsPerNodeHour = st.AgentNodeWritesPerNodeHour + st.AgentWatchesPerNodeHour + st.AgentReadsPerNodeHour
	st.CoordinatorCPUSecondsPerHour = (procAfter.CPUSeconds - procBefore.CPUSeconds) * time.Hour.Seconds() / window.Seconds()
	st.CoordinatorRSSMiB = float64(procAfter.RSSBytes) / (1 << 20)
	st.AgentProcessRSSMiB = float64(calibAfter.RSSBytes) / (1 << 20)
	st.AgentProcessCPUSecondsPerHour = (calibAfter.CPUSeconds - calibBefore.CPUSeconds) * time.Hour.Seconds() / window.Seconds()
	d := syncAfter.Minus(syncBefore)
	st.Syncs = d.Count
	st.PlanSyncMillis = millis(d)

	// The calibration node has no executor: it leaves before the rollout.
	calib.stop()
	if err := admin.CoreV1().Nodes().Delete(ctx, calibrationNode, metav1.DeleteOptions{}); err != nil {
		return nil, fmt.Errorf("deleting the calibration node: %w", err)
	}

	// Phase 2: the issuer changes and a kubelet-restart rollout of every node.
	log.Info("issuer change", zap.String("issuer", newIssuer))
	restarted := time.Now()
	for i := range cp.APIServers() {
		pins[i].cut()
		if err := cp.RestartAPIServer(ctx, i, []string{newIssuer, controlplane.DefaultIssuer}); err != nil {
			return nil, err
		}
	}
	gateOpen := time.Now()
	scrapers := make([]kubernetes.Interface, cp.APIServers())
	for i := range scrapers {
		if scrapers[i], err = kubernetes.NewForConfig(at(cp.AdminConfig(), i)); err != nil {
			return nil, err
		}
	}
	before, err := readServers(ctx, scrapers)
	if err != nil {
		return nil, err
	}
	agentsBefore = counter.read()
	procBefore, err = benchkit.ReadProc(coord.pid())
	if err != nil {
		return nil, err
	}
	if err := benchkit.WaitRolloutStarted(ctx, api, 5*time.Minute); err != nil {
		return nil, err
	}
	started := time.Now()
	peak := &peakRSS{}
	peakCtx, stopPeak := context.WithCancel(ctx)
	go peak.follow(peakCtx, coord.pid())
	final, err := benchkit.WaitRolloutOver(ctx, api, time.Duration(n)*time.Minute+10*time.Minute)
	stopPeak()
	if err != nil {
		return nil, err
	}
	done := time.Now()
	after, err := readServers(ctx, scrapers)
	if err != nil {
		return nil, err
	}
	agentsAfter = counter.read()
	procAfter, err = benchkit.ReadProc(coord.pid())
	if err != nil {
		return nil, err
	}
	ro := &run.Rollout
	ro.Phase = string(final.Phase)
	if final.Phase != coordinator.RolloutDone {
		ro.Problem = fmt.Sprintf("the rollout ended %s (%s: %s)", final.Phase, final.HaltReason, final.Message)
	}
	ro.IssuerChangeSeconds = gateOpen.Sub(restarted).Seconds()
	ro.DiscoverySeconds = started.Sub(gateOpen).Seconds()
	ro.RolloutSeconds = done.Sub(gateOpen).Seconds()
	coordReqs := after[coordinatorServer].counts.Minus(before[coordinatorServer].counts).WithoutScrapes(1)
	lease, rest := coordReqs.Split()
	ro.CoordinatorRequests, ro.CoordinatorLeaseRequests = rest.Total(), lease.Total()
	ro.CoordinatorRequestsPerNode = rest.Total() / float64(n)
	ro.CoordinatorRequestRows = rest.Rows(n)
	agentReqs := (agentsAfter[0] + agentsAfter[1] + agentsAfter[2]) - (agentsBefore[0] + agentsBefore[1] + agentsBefore[2])
	ro.AgentRequestsPerNode = float64(agentReqs) / float64(n)
	ro.RequestsPerNode = ro.CoordinatorRequestsPerNode + ro.AgentRequestsPerNode
	var all benchkit.Histogram
	total := 0.0
	for i := range scrapers {
		total += after[i].counts.Minus(before[i].counts).WithoutScrapes(1).Total()
		all = sumHistograms(all, after[i].latency.Minus(before[i].latency))
	}
	ro.APIServerRequestsPerSecond = total / done.Sub(gateOpen).Seconds()
	ro.APIServerP99Millis = 1000 * all.Quantile(0.99)
	ro.CoordinatorCPUSeconds = procAfter.CPUSeconds - procBefore.CPUSeconds
	ro.CoordinatorPeakRSSMiB = float64(max(peak.max.Load(), procAfter.RSSBytes)) / (1 << 20)
	ro.NodesDone = countDone(checker, names)
	run.TotalSeconds = time.Since(began).Seconds()
	return run, nil
}

// sumHistograms adds two API servers' histograms.
func sumHistograms(a, b benchkit.Histogram) benchkit.Histogram {
	out := benchkit.Histogram{Buckets: map[float64]float64{}, Sum: a.Sum + b.Sum, Count: a.Count + b.Count}
	for k, v := range a.Buckets {
		out.Buckets[k] += v
	}
	for k, v := range b.Buckets {
		out.Buckets[k] += v
	}
	return out
}
