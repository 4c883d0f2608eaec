package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
	"github.com/tokenroll/tokenroll/sandbox/invariants"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

const (
	// The coordinator's namespace and Lease, as deployed.
	namespace = "tokenroll"
	leaseName = "tokenroll-coordinator"
	// workloads holds the nodes' pods.
	workloads = "build"
	// The simulated nodes, their agents and the observer use API server 0;
	// the coordinator uses API server 1 alone.
	nodesServer       = 0
	coordinatorServer = 1
	// settle lets the coordinator's last asynchronous requests (Events)
	// land before its API server's counters are read.
	settle = time.Second
)

// run sets everything up, runs one rollout and measures it.
func run(ctx context.Context, o options, log *zap.Logger) (*Result, error) {
	began := time.Now()
	bins, err := controlplane.FindBinaries(o.BinDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tokenroll-coordbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	log.Info("starting the control plane", zap.Int("apiservers", 2), zap.String("dir", dir))
	audit, err := auditArgs(dir)
	if err != nil {
		return nil, err
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{Binaries: bins, Dir: filepath.Join(dir, "controlplane"), APIServers: 2, ExtraArgs: audit})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	admin, err := kubernetes.NewForConfig(at(cp, cp.AdminConfig(), nodesServer))
	if err != nil {
		return nil, err
	}
	if err := prepare(ctx, cp, admin); err != nil {
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
	names := make([]string, o.Nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%03d", i+1)
	}
	log.Info("starting the simulated nodes", zap.Int("nodes", len(names)))
	// The nodes and their agents use API server nodesServer only.
	nodes, err = fleet.Start(runCtx, fleet.Config{CP: cp, APIServer: cp.APIServerURL(nodesServer), Dir: filepath.Join(dir, "nodes"),
		Nodes: names, RebootDown: o.RebootDown, AgentInterval: o.AgentInterval, Log: log})
	if err != nil {
		return nil, err
	}
	wantTokens := 0
	for _, n := range names {
		for i := range o.PodsPerNode {
			p := sandbox.BuildRobotPod("nginx-"+n, workloads, n) // a vault token and kube-api-access
			if i > 0 {
				p = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d-%s", i, n), Namespace: workloads},
					Spec: corev1.PodSpec{NodeName: n, Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1"}}}}
			}
			if _, err := admin.CoreV1().Pods(workloads).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				return nil, fmt.Errorf("creating pod %s/%s: %w", workloads, p.Name, err)
			}
		}
	}
	if o.PodsPerNode > 0 {
		wantTokens = o.PodsPerNode + 1
	}
	checker, err := invariants.Watch(runCtx, admin, namespace, leaseName)
	if err != nil {
		return nil, err
	}
	log.Info("waiting for every agent to report its pods' tokens", zap.Int("tokensPerNode", wantTokens))
	if err := benchkit.WaitFor(ctx, checker, 3*time.Minute, fmt.Sprintf("every agent reports %d tokens", wantTokens), func(m map[string]*corev1.Node) bool {
		return benchkit.EveryNode(m, names, func(n *corev1.Node) bool {
			rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
			return err == nil && rep.Tokens == wantTokens && nodeutil.Ready(n)
		})
	}); err != nil {
		return nil, err
	}
	res := &Result{Nodes: o.Nodes, Strategy: o.Strategy, MaxUnavailable: 1, PodsPerNode: o.PodsPerNode,
		RebootDown: duration(o.RebootDown), Setup: duration(time.Since(began))}
	e := &env{o: o, log: log, cp: cp, admin: admin, checker: checker, names: names}
	if err := e.measure(ctx, res); err != nil {
		return nil, err
	}
	res.observe(checker.Summary(), nodes, o.Nodes)
	res.Total = duration(time.Since(began))
	return res, nil
}

// env is what measure works with.
type env struct {
	o       options
	log     *zap.Logger
	cp      *controlplane.ControlPlane
	admin   kubernetes.Interface // API server 0
	checker *invariants.Checker
	names   []string
}

// reading is apiserver_request_total on the coordinator's API server, and
// when it was read.
type reading struct {
	counts benchkit.Counts
	at     time.Time
}

// measure runs the coordinator and one rollout, reading API server 1's
// counters before the coordinator starts (0), before the rollout (1), after
// it (2) and after the coordinator stopped (3).
func (e *env) measure(ctx context.Context, res *Result) error {
	o, log, cp, checker, names := e.o, e.log, e.cp, e.checker, e.names
	scraper, err := kubernetes.NewForConfig(at(cp, cp.AdminConfig(), coordinatorServer))
	if err != nil {
		return err
	}
	var readings []reading
	read := func() error {
		c, err := benchkit.ScrapeRequests(ctx, scraper)
		if err == nil {
			readings = append(readings, reading{counts: c, at: time.Now()})
		}
		return err
	}
	if err := read(); err != nil {
		return err
	}

	// The coordinator, as `tokenroll-coordinator` runs it, with its own
	// identity so that the audit log tells its requests apart.
	log.Info("starting the coordinator")
	coordCfg, err := cp.UserConfig(coordinatorUser, "system:masters")
	if err != nil {
		return err
	}
	coordCfg = at(cp, coordCfg, coordinatorServer)
	coordCfg.UserAgent = "tokenroll-coordinator/coordbench"
	coordCfg.QPS, coordCfg.Burst = 20, 40 // `tokenroll-coordinator`'s defaults
	client, err := kubernetes.NewForConfig(coordCfg)
	if err != nil {
		return err
	}
	gate, err := coordinator.NewGate(ctx, coordinator.GateNone, client, nil)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	api, err := versioned.NewForConfig(coordCfg)
	if err != nil {
		return err
	}
	c, err := coordinator.New(coordinator.Config{Client: client, Rollouts: api, Namespace: namespace, Gate: gate, Strategy: protocol.Strategy(o.Strategy),
		MaxUnavailable: intstr.FromInt32(1), DrainTimeout: 2 * time.Minute, ActionTimeout: 2 * time.Minute, VerifyTimeout: 2 * time.Minute,
		TrustMargin: time.Hour, AgentWait: 15 * time.Minute, IssuerRefresh: time.Minute,
		Drainer: coordinator.KubectlDrainer{Client: client, Force: true, Log: log.Named("drain")}, Registry: reg, Log: log.Named("coordinator")})
	if err != nil {
		return err
	}
	coordCtx, stopCoordinator := context.WithCancel(ctx)
	coordDone := make(chan struct{})
	go func() {
		defer close(coordDone)
		if err := coordinator.RunElected(coordCtx, coordinator.LeaderConfig{Client: client, Namespace: namespace, LeaseName: leaseName,
			LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
			Log: log.Named("coordinator")}, c.Lead); err != nil {
			log.Error("leader election", zap.Error(err))
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopCoordinator()
			<-coordDone
		}
	}
	defer stop()
	if err := waitSynced(ctx, reg); err != nil {
		return err
	}
	if err := benchkit.Sleep(ctx, settle); err != nil {
		return err
	}
	if err := read(); err != nil {
		return err
	}

	// The rollout, started as an administrator does.
	log.Info("starting the rollout", zap.String("strategy", o.Strategy))
	t0 := time.Now()
	if _, err := coordinator.RequestStart(ctx, api, coordinator.StartSpec{Strategy: protocol.Strategy(o.Strategy), By: "coordbench"}, t0); err != nil {
		return err
	}
	// The observer's verdict and the coordinator's record of the end are
	// awaited together: a halted rollout never ends on the nodes.
	observed := make(chan time.Time, 1)
	obsCtx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	go func() {
		defer close(observed)
		if checker.WaitFor(obsCtx, func(m map[string]*corev1.Node) bool {
			return benchkit.EveryNode(m, names, func(n *corev1.Node) bool {
				st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
				return err == nil && st.Step == protocol.StepDone && !n.Spec.Unschedulable && nodeutil.Ready(n)
			})
		}) == nil {
			observed <- time.Now()
		}
	}()
	final, err := benchkit.WaitRolloutOver(ctx, api, time.Duration(o.Nodes)*time.Minute)
	if err != nil {
		return err
	}
	var done time.Time
	if final.Phase == coordinator.RolloutDone {
		select {
		case done = <-observed:
		case <-time.After(30 * time.Second):
		}
	}
	stopObserving()
	if done.IsZero() {
		done = time.Now()
		res.Invariants.Failures = append(res.Invariants.Failures, fmt.Sprintf("the rollout ended %s (%s: %s), not with every node done and in service",
			final.Phase, final.HaltReason, final.Message))
	}
	res.Rollout, res.RolloutPhase = duration(done.Sub(t0)), string(final.Phase)
	if err := benchkit.Sleep(ctx, settle); err != nil {
		return err
	}
	if err := read(); err != nil {
		return err
	}
	// Watches are counted when they end: stop the coordinator, so that
	// start to stop counts everything it did.
	stop()
	if err := benchkit.Sleep(ctx, settle); err != nil {
		return err
	}
	if err := read(); err != nil {
		return err
	}

	logPath := cp.LogPath(coordinatorServer)
	for _, w := range []struct {
		to       *RequestFigures
		from, by int
	}{{&res.Requests.Rollout, 1, 2}, {&res.Requests.Whole, 0, 3}} {
		from, to := readings[w.from], readings[w.by]
		// Each reading but the last is itself counted by the next.
		metric := to.counts.Minus(from.counts).WithoutScrapes(w.by - w.from)
		a, err := readAudit(logPath, from.at, to.at, o.Nodes)
		if err != nil {
			return err
		}
		*w.to = newRequestFigures(metric, a, o.Nodes, to.at.Sub(from.at))
	}
	return nil
}

// prepare creates what the coordinator and the pods need, as a cluster
// would have it: the namespaces (with what kube-controller-manager, which
// this control plane lacks, creates in them) and the build-robot service
// account. fleet.Start lets the nodes read OIDC discovery.
func prepare(ctx context.Context, cp *controlplane.ControlPlane, admin kubernetes.Interface) error {
	for _, ns := range []string{namespace, workloads} {
		if err := cp.PrepareNamespace(ctx, ns); err != nil {
			return err
		}
	}
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		return err
	}
	_, err := admin.CoreV1().ServiceAccounts(workloads).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "build-robot"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating service account build-robot: %w", err)
	}
	return nil
}

// at points a client configuration at one API server, bypassing the load
// balancer that would spread its connections over both.
func at(cp *controlplane.ControlPlane, c *rest.Config, server int) *rest.Config {
	c = rest.CopyConfig(c)
	c.Host = cp.APIServerURL(server)
	return c
}

// waitSynced waits until the coordinator leads and has run its first sync:
// the gate metric is set then, after its caches synced.
func waitSynced(ctx context.Context, reg *prometheus.Registry) error {
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		mfs, err := reg.Gather()
		if err != nil {
			return false, err
		}
		var leader, gate bool
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case "tokenroll_coordinator_leader":
					leader = m.GetGauge().GetValue() == 1
				case "tokenroll_gate_open":
					gate = m.GetGauge().GetValue() == 1
				}
			}
		}
		return leader && gate, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the coordinator to lead and sync: %w", err)
	}
	return nil
}

// observe fills the invariants and overheads from what the checker saw.
func (r *Result) observe(s invariants.Summary, nodes *fleet.Fleet, n int) {
	over := slices.Clone(s.Overheads)
	slices.Sort(over)
	r.Overhead.Gaps = len(over)
	if len(over) > 0 {
		r.Overhead.Median = duration(over[len(over)/2])
		r.Overhead.P90 = duration(over[len(over)*9/10])
		r.Overhead.Max = duration(over[len(over)-1])
	}
	r.Overhead.GoalMet = len(over) == n-1 && r.Overhead.Max.D() < time.Second
	inv := &r.Invariants
	inv.MaxConcurrentDisrupted, inv.MaxDisruptedNodes = s.MaxConcurrentDisrupted, s.MaxDisruptedNodes
	inv.NodesLeftCordoned = s.NodesLeftCordoned
	inv.RequestsPerNode = map[int]int{}
	inv.ActionsPerNode = map[int]int{}
	for _, name := range slices.Sorted(maps.Keys(nodes.Members)) {
		m := nodes.Members[name]
		acted := m.Reboots.Load() + m.KubeletRestarts.Load()
		inv.RequestsPerNode[s.ActionsPerNode[name]]++
		inv.ActionsPerNode[int(acted)]++
		if got := s.ActionsPerNode[name]; got != 1 {
			inv.Failures = append(inv.Failures, fmt.Sprintf("node %s: %d action requests, want 1", name, got))
		}
		if acted != 1 {
			inv.Failures = append(inv.Failures, fmt.Sprintf("node %s: its agent acted %d times, want 1", name, acted))
		}
	}
	if s.MaxConcurrentDisrupted > r.MaxUnavailable {
		inv.Failures = append(inv.Failures, fmt.Sprintf("%d nodes out of service at once (%v), more than max-unavailable %d",
			s.MaxConcurrentDisrupted, s.MaxDisruptedNodes, r.MaxUnavailable))
	}
	if len(s.NodesLeftCordoned) > 0 {
		inv.Failures = append(inv.Failures, fmt.Sprintf("nodes left cordoned: %v", s.NodesLeftCordoned))
	}
	if s.LeaderChanges != 0 {
		inv.Failures = append(inv.Failures, fmt.Sprintf("the Lease changed hands %d times (%v) with one replica", s.LeaderChanges, s.Leaders))
	}
	inv.Hold = len(inv.Failures) == 0
}
