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
	"sync"
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
	// coordinatorUser is the coordinator's identity on the API server.
	coordinatorUser = "tokenroll-coordinator"
	workloads       = "apps"
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
	// heartbeatInterval is the simulated kubelets' Lease renewal period,
	// four times the kubelet's 10 s: nothing here reads a node's Lease (no
	// node lifecycle controller runs; the coordinator reads Ready from the
	// Node), and at 1,000 nodes renewals every 10 s (a read and a write
	// each) were most of the API server's requests while the kubelets
	// started their pods.
	heartbeatInterval = 40 * time.Second
)

// runAll measures every size and fits the model, in dir.
func runAll(ctx context.Context, o options, dir string, log *zap.Logger) (*Summary, error) {
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
	if o.CPUProfileDir != "" {
		if err := os.MkdirAll(o.CPUProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("--cpu-profile-dir: %w", err)
		}
	}
	sum := &Summary{MaxUnavailable: o.MaxUnavailable, Churn: o.Churn, Steady: o.Steady.Seconds()}
	sum.PodsPerNode = o.PodsPerNode
	for _, n := range o.Nodes {
		log.Info("measuring", zap.Int("nodes", n))
		r, err := runOne(ctx, o, n, bin, agentBin, filepath.Join(dir, fmt.Sprintf("n%d", n)), log)
		if err != nil {
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
	prog := newProgress(os.Stderr, n)
	r, err := measure(ctx, o, n, bin, agentBin, dir, log, prog)
	return r, prog.fail(err)
}

// measure is runOne; prog names the phase an error happened in.
func measure(ctx context.Context, o options, n int, bin, agentBin, dir string, log *zap.Logger, prog *progress) (*Run, error) {
	began := time.Now()
	loads := newLoadSampler()
	defer loads.stop()
	prog.enter("starting etcd and 2 kube-apiservers")
	bins, err := controlplane.FindBinaries(o.BinDir)
	if err != nil {
		return nil, err
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{Binaries: bins, Dir: filepath.Join(dir, "controlplane"), APIServers: 2,
		AuditPolicy: []byte(auditPolicy)})
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
	adminCfg.QPS, adminCfg.Burst = 1000, 2000
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
	podCount := (n + 1) * o.PodsPerNode
	prog.enter(fmt.Sprintf("creating %d pods, %d at a time", podCount, o.CreateConcurrency))
	pods := newPodSet(admin, append(slices.Clone(names), calibrationNode))
	t0 := time.Now()
	stopReport := every(15*time.Second, func() {
		k := pods.created()
		prog.printf("%d of %d pods created, %.0f a second", k, podCount, float64(k)/time.Since(t0).Seconds())
	})
	err = pods.fill(ctx, o.PodsPerNode, o.CreateConcurrency)
	stopReport()
	if err != nil {
		return nil, err
	}
	prog.printf("%d pods created in %.0f s", podCount, time.Since(t0).Seconds())
	prog.enter(fmt.Sprintf("starting %d simulated kubelets and their agents", n))
	counter := &agentCounter{}
	agentClock := &steppedClock{}
	nodes, err = fleet.Start(runCtx, fleet.Config{CP: cp, APIServer: pins[nodesServer].URL(), Dir: filepath.Join(dir, "nodes"), Nodes: names, CoordinatorNamespace: namespace,
		AgentInterval: agentInterval, IssuerRefresh: issuerRefresh, StatusInterval: statusInterval, HeartbeatInterval: heartbeatInterval, AgentClock: agentClock, RebootDown: time.Second, SharePods: true,
		AgentConfig: func(_ string, rc *rest.Config) (*rest.Config, error) {
			rc = rest.CopyConfig(rc)
			rc.Wrap(counter.wrap)
			return rc, nil
		}, Log: log})
	if err != nil {
		return nil, err
	}
	calib, err := startCalibration(runCtx, cp, pins[nodesServer].URL(), agentBin, dir, nodes.Pods(), log)
	if err != nil {
		return nil, err
	}
	defer calib.stop()
	checker, err := invariants.Watch(runCtx, admin, namespace, leaseName)
	if err != nil {
		return nil, err
	}
	reported := func(node *corev1.Node) string { return agentReported(node, o.PodsPerNode) }
	// The simulated kubelets start their pods at 17-26 a second on this
	// machine at load 25 (a ConfigMap read, a TokenRequest and a status
	// write each, on an API server whose watch cache lags): 60 ms a pod.
	agentsTimeout := max(10*time.Minute, time.Duration(n*o.PodsPerNode)*60*time.Millisecond)
	prog.enter(fmt.Sprintf("waiting (at most %s) until every agent reports %d fresh tokens on a Ready node", agentsTimeout, o.PodsPerNode))
	stopReport = every(30*time.Second, func() {
		left := notYet(checker, names, reported)
		prog.printf("%d of %d agents reported%s", n-len(left), n, firstOf(left))
	})
	err = benchkit.WaitFor(ctx, checker, agentsTimeout, fmt.Sprintf("every agent reports %d tokens", o.PodsPerNode), func(m map[string]*corev1.Node) bool {
		return benchkit.EveryNode(m, names, func(node *corev1.Node) bool { return reported(node) == "" })
	})
	stopReport()
	if err != nil {
		left := notYet(checker, names, reported)
		return nil, fmt.Errorf("%w: %d of %d nodes not there%s", err, len(left), n, firstOf(left))
	}
	run := &Run{Nodes: n, PodsPerNode: o.PodsPerNode}
	run.SetupSeconds = time.Since(began).Seconds()
	run.Load.Setup = loads.mean(began, time.Now())

	prog.enter("starting the coordinator")
	coord, err := startCoordinator(ctx, cp, pins[coordinatorServer].URL(), bin, dir, o)
	if err != nil {
		return nil, err
	}
	defer coord.stop()
	if err := coord.waitLeading(ctx); err != nil {
		return nil, err
	}
	if err := waitPublished(ctx, admin); err != nil {
		return nil, err
	}
	prof := newCPUProfiler(o.CPUProfileDir, coord.metrics, n, prog.printf)

	// Phase 1: steady state.
	agentClock.step(agentSettled)
	if err := benchkit.Sleep(ctx, 5*time.Second); err != nil { // writes the step itself caused, and the publication's watch events, land first
		return nil, err
	}
	prog.enter(fmt.Sprintf("steady state for %s, %g pods replaced per node and hour", o.Steady, o.Churn))
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
	// The profile lasts a second longer than the window, so that the
	// coordinator writes it out after its CPU time was read.
	waitIdleProfile := prof.during(ctx, "idle", o.Steady+time.Second)
	t0 = time.Now()
	churnCtx, stopChurn := context.WithTimeout(ctx, o.Steady)
	_ = pods.churn(churnCtx, o.Churn*float64(n)/3600) // returns when the window ends
	stopChurn()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if k := pods.failed.Load(); k > 0 {
		prog.printf("%d pod replacements failed, the last: %v", k, *pods.lastErr.Load())
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
	run.Load.Steady = loads.mean(t0, time.Now())
	perNodeHour := func(d int64) float64 { return float64(d) / float64(n) * time.Hour.Seconds() / window.Seconds() }
	st := &run.Steady
	st.WindowSeconds = window.Seconds()
	st.PodsReplaced = pods.replaced.Load()
	st.PodReplaceFailures = pods.failed.Load()
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
	prog.printf("steady state: coordinator %.1f CPU s/h, %.0f MiB, %.0f syncs; agents %.2f Node writes per node and hour",
		st.CoordinatorCPUSecondsPerHour, st.CoordinatorRSSMiB, st.Syncs, st.AgentNodeWritesPerNodeHour)
	waitIdleProfile() // the coordinator profiles one window at a time

	// The calibration node has no executor: it leaves before the rollout.
	calib.stop()
	if err := admin.CoreV1().Nodes().Delete(ctx, calibrationNode, metav1.DeleteOptions{}); err != nil {
		return nil, fmt.Errorf("deleting the calibration node: %w", err)
	}

	// Phase 2: the issuer changes and a kubelet-restart rollout of every node.
	prog.enter("issuer change: both API servers restart signing with " + newIssuer)
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
	stopRolloutProfile := prof.until(ctx, "rollout")
	defer stopRolloutProfile()
	prog.enter("waiting for the coordinator to plan a rollout")
	if err := benchkit.WaitRolloutStarted(ctx, api, 5*time.Minute); err != nil {
		return nil, err
	}
	started := time.Now()
	rolloutTimeout := time.Duration(n)*time.Minute + 10*time.Minute
	prog.enter(fmt.Sprintf("rollout (kubelet-restart, --max-unavailable=%s; at most %s)", o.MaxUnavailable, rolloutTimeout))
	peak := &peakRSS{}
	peakCtx, stopPeak := context.WithCancel(ctx)
	go peak.follow(peakCtx, coord.pid())
	stopReport = every(30*time.Second, func() {
		prog.printf("%d of %d nodes done", countDone(checker, names), n)
	})
	final, err := benchkit.WaitRolloutOver(ctx, api, rolloutTimeout)
	stopReport()
	stopPeak()
	if err != nil {
		return nil, fmt.Errorf("%w (%d of %d nodes done)", err, countDone(checker, names), n)
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
	stopRolloutProfile()
	run.Load.Rollout = loads.mean(gateOpen, done)
	ro := &run.Rollout
	ro.Phase = string(final.Phase)
	if final.Phase != coordinator.RolloutDone {
		ro.Problem = fmt.Sprintf("the rollout ended %s (%s: %s)", final.Phase, final.HaltReason, final.Message)
	}
	ro.IssuerChangeSeconds = gateOpen.Sub(restarted).Seconds()
	ro.DiscoverySeconds = started.Sub(gateOpen).Seconds()
	ro.RolloutSeconds = done.Sub(gateOpen).Seconds()
	// The coordinator's requests, from its API server's audit log: that
	// server's apiserver_request_total counts its own requests too (after
	// its restart it lists and watches everything again).
	aud, err := readAuditFile(cp.AuditLogPath(coordinatorServer), coordinatorUser, gateOpen, done)
	if err != nil {
		return nil, err
	}
	ro.CoordinatorRequests, ro.CoordinatorLeaseRequests = float64(total(aud.user)), float64(total(aud.userLeases))
	ro.CoordinatorRequestsPerNode = ro.CoordinatorRequests / float64(n)
	ro.CoordinatorRequestRows = aud.user
	ro.OthersNonResource = aud.othersNonResource
	ro.ServerRequestRows = after[coordinatorServer].counts.Minus(before[coordinatorServer].counts).WithoutScrapes(1).Rows(n)
	agentReqs := (agentsAfter[0] + agentsAfter[1] + agentsAfter[2]) - (agentsBefore[0] + agentsBefore[1] + agentsBefore[2])
	ro.AgentRequestsPerNode = float64(agentReqs) / float64(n)
	ro.RequestsPerNode = ro.CoordinatorRequestsPerNode + ro.AgentRequestsPerNode
	var all benchkit.Histogram
	sumReqs := 0.0
	for i := range scrapers {
		sumReqs += after[i].counts.Minus(before[i].counts).WithoutScrapes(1).Total()
		all = sumHistograms(all, after[i].latency.Minus(before[i].latency))
	}
	ro.APIServerRequestsPerSecond = sumReqs / done.Sub(gateOpen).Seconds()
	ro.APIServerP99Millis = 1000 * all.Quantile(0.99)
	ro.CoordinatorCPUSeconds = procAfter.CPUSeconds - procBefore.CPUSeconds
	ro.CoordinatorPeakRSSMiB = float64(max(peak.max.Load(), procAfter.RSSBytes)) / (1 << 20)
	ro.NodesDone = countDone(checker, names)
	run.TotalSeconds = time.Since(began).Seconds()
	prog.printf("rollout %s in %.0f s: %d nodes done; the coordinator's requests (%.1f per node): %s; others' outside the resource API on its server: %s",
		ro.Phase, ro.RolloutSeconds, ro.NodesDone, ro.CoordinatorRequestsPerNode, sortedCounts(aud.user), sortedCounts(aud.othersNonResource))
	return run, nil
}

// agentReported says why a node's agent has not reported pods fresh tokens
// on a Ready node yet ("" once it has).
func agentReported(node *corev1.Node, pods int) string {
	if !nodeutil.Ready(node) {
		return "not Ready"
	}
	raw, ok := node.Annotations[protocol.AnnotationTokens]
	if !ok {
		return "no token report"
	}
	rep, err := protocol.ParseTokenReport(raw)
	switch {
	case err != nil:
		return err.Error()
	case rep.Tokens != pods:
		return fmt.Sprintf("%d tokens reported", rep.Tokens)
	case len(rep.Stale) > 0:
		return fmt.Sprintf("%d stale tokens reported", len(rep.Stale))
	}
	return ""
}

// notYet lists the named nodes for which why says something, each with
// what it says.
func notYet(checker *invariants.Checker, names []string, why func(*corev1.Node) string) []string {
	var out []string
	_ = checker.WaitFor(context.Background(), func(m map[string]*corev1.Node) bool {
		out = out[:0]
		for _, name := range names {
			if n := m[name]; n == nil {
				out = append(out, name+": not registered")
			} else if w := why(n); w != "" {
				out = append(out, name+": "+w)
			}
		}
		return true
	})
	return out
}

// firstOf renders the first few of a list for a progress line.
func firstOf(l []string) string {
	if len(l) == 0 {
		return ""
	}
	const k = 3
	if len(l) > k {
		return fmt.Sprintf(" (%s, ...)", strings.Join(l[:k], "; "))
	}
	return " (" + strings.Join(l, "; ") + ")"
}

// readAuditFile is readAudit of the file at path.
func readAuditFile(path, user string, from, to time.Time) (audited, error) {
	f, err := os.Open(path)
	if err != nil {
		return audited{}, fmt.Errorf("reading the audit log: %w", err)
	}
	defer f.Close()
	a, err := readAudit(f, user, from, to)
	if err != nil {
		return a, fmt.Errorf("reading the audit log %s: %w", path, err)
	}
	return a, nil
}

// loadSampler reads the machine's 1-minute load average every 10 s, so
// that each figure can be given with the load it was measured under.
type loadSampler struct {
	mu      sync.Mutex
	samples []loadSample
	stop    func()
}

type loadSample struct {
	at   time.Time
	load float64
}

func newLoadSampler() *loadSampler {
	l := &loadSampler{}
	l.add()
	l.stop = every(10*time.Second, l.add)
	return l
}

func (l *loadSampler) add() {
	l.mu.Lock()
	l.samples = append(l.samples, loadSample{time.Now(), load1()})
	l.mu.Unlock()
}

// mean is the mean of the samples between from and to (the latest sample
// when none fell between them).
func (l *loadSampler) mean(from, to time.Time) float64 {
	l.add()
	l.mu.Lock()
	defer l.mu.Unlock()
	sum, k := 0.0, 0
	for _, s := range l.samples {
		if !s.at.Before(from) && !s.at.After(to) {
			sum += s.load
			k++
		}
	}
	if k == 0 {
		return l.samples[len(l.samples)-1].load
	}
	return sum / float64(k)
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
