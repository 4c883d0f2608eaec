package sandbox

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/logging"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/faultproxy"
	"github.com/tokenroll/tokenroll/sandbox/invariants"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

// Options say what tokenroll-sandbox builds and does.
type Options struct {
	// BinDir, Dir, Nodes, APIServers, Issuer and TrustWindow are the
	// cluster's; see Config. An empty Dir is a temporary directory, removed
	// at the end unless the scenario failed.
	BinDir      string
	Dir         string
	Nodes       int
	APIServers  int
	Issuer      string
	TrustWindow time.Duration
	// NewIssuer is what the scenario sets Authentication/cluster
	// .spec.serviceAccountIssuer to.
	NewIssuer string
	// RefreshBeforeChange has every node's kubelet refresh its projected
	// tokens, under the issuer they are of, before the issuer changes, and
	// waits until the coordinator has had the time to find the apps that
	// go on presenting the token they read (app-stale): a cluster's pods
	// have run past the kubelet's first refresh (80% of a token's
	// lifetime: 48 minutes for the default hour) long before an issuer
	// changes. A kubelet restart on each node stands in for that wait.
	// False: the issuer changes while every app still presents the token
	// in its file, and a caching app shows only by failing.
	RefreshBeforeChange bool
	// Strategy and MaxUnavailable are the coordinators' --strategy and
	// --max-unavailable.
	Strategy       string
	MaxUnavailable string
	// RebootDowntime is how long a simulated reboot keeps a node down.
	RebootDowntime time.Duration
	// Kubelet is what runs each worker node: KubeletSim or KubeletReal.
	Kubelet string
	// Apps are the kinds of app the pods run (see ParseApps): reloading,
	// caching, or none.
	Apps []string
	// Chaos kills (SIGKILL) the coordinator leader and random agents during
	// the rollout; they are started again as their Deployment and DaemonSet
	// would.
	Chaos bool
	// Faults puts a fault proxy (package faultproxy) between the control
	// plane and each agent and the coordinators: a fixed share of their
	// writes meet 500s and 429s, and a coordinator write loses its answer.
	Faults bool
	// Keep leaves everything running after the scenario, until ctx ends.
	Keep bool
	// Once stops as soon as everything is up and every agent has reported,
	// without changing the issuer.
	Once bool
	// SummaryJSON, when set, is where the summary is written.
	SummaryJSON string
	// Timeout bounds the scenario from the issuer change to its end.
	Timeout time.Duration
	// Prometheus runs the real Prometheus server on loopback, scraping
	// every agent and coordinator and evaluating PrometheusRules with
	// shortened for: durations (see ShortenRules); the sandbox prints its
	// alerts as they fire and resolve, and the summary lists them.
	Prometheus bool
	// PrometheusBin is the prometheus binary (empty: $TOKENROLL_PROMETHEUS_BIN).
	PrometheusBin string
	// PrometheusRules is the rule file it loads (DefaultPrometheusRules).
	PrometheusRules string
	// Compare runs the scenario once per remediation (Remediations), each
	// on a fresh cluster, and compares them (see Compare); Strategy is
	// not used.
	Compare bool
	// CompareParallel is how many of Compare's runs go at once (0 or 1:
	// one after another). Each run has a cluster of its own; runs that
	// overlap share the machine, so their times are not a single run's,
	// and client-go's own messages go to the log of one of them. Each
	// run's output is printed whole, in the runs' order.
	CompareParallel int
	// ProgramDir holds tokenroll-agent and tokenroll-coordinator, which the
	// sandbox runs, and tokenroll-sandbox, whose `node` commands the agents
	// run to reboot a node or restart its kubelet; see programs.Dir for the
	// default.
	ProgramDir string
}

// Validate checks the options a person gives; it names the flags.
func (o Options) Validate() error {
	var errs []error
	if o.Nodes < 1 || o.Nodes > 500 {
		errs = append(errs, fmt.Errorf("--nodes=%d: must be from 1 to 500", o.Nodes))
	}
	if o.APIServers < 1 || o.APIServers > 5 {
		errs = append(errs, fmt.Errorf("--apiservers=%d: must be from 1 to 5", o.APIServers))
	}
	if o.Issuer == "" {
		errs = append(errs, errors.New("--issuer must not be empty"))
	}
	switch o.NewIssuer {
	case "":
		errs = append(errs, errors.New("--new-issuer must not be empty"))
	case o.Issuer:
		errs = append(errs, fmt.Errorf("--new-issuer=%q is the issuer the sandbox starts with; the scenario changes it, so give another", o.NewIssuer))
	}
	if o.TrustWindow < 0 {
		errs = append(errs, fmt.Errorf("--trust-window=%s: must be 0 (the old issuer is dropped at once) or positive", o.TrustWindow))
	}
	if !o.Compare && !slices.Contains(Remediations(), o.Strategy) {
		errs = append(errs, fmt.Errorf("--strategy=%q: must be one of %s", o.Strategy, strings.Join(Remediations(), ", ")))
	}
	if o.Compare && o.Keep {
		errs = append(errs, errors.New("--compare and --keep: --compare runs one cluster after another, so none is kept; drop one"))
	}
	if o.Compare && o.Once {
		errs = append(errs, errors.New("--compare and --once: --once changes no issuer, so there is nothing to compare; drop one"))
	}
	if o.CompareParallel < 0 {
		errs = append(errs, fmt.Errorf("--compare-parallel=%d: must not be negative", o.CompareParallel))
	}
	if n := len(Remediations()); o.CompareParallel > n {
		errs = append(errs, fmt.Errorf("--compare-parallel=%d: --compare has %d runs; give at most %d", o.CompareParallel, n, n))
	}
	if o.CompareParallel > 1 && !o.Compare {
		errs = append(errs, fmt.Errorf("--compare-parallel=%d without --compare: there is one run; add --compare or drop it", o.CompareParallel))
	}
	if _, err := maxUnavailableNodes(o.MaxUnavailable, max(o.Nodes, 1)); err != nil {
		errs = append(errs, err)
	}
	if o.RebootDowntime < time.Second || o.RebootDowntime > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--reboot-downtime=%s: must be from 1s to 10m", o.RebootDowntime))
	}
	if !slices.Contains(Kubelets, o.Kubelet) {
		errs = append(errs, fmt.Errorf("--kubelet=%q: must be %s", o.Kubelet, strings.Join(Kubelets, " or ")))
	}
	if _, err := ParseApps(o.Apps); err != nil {
		errs = append(errs, err)
	}
	if o.Timeout < time.Minute {
		errs = append(errs, fmt.Errorf("--timeout=%s: must be at least 1m", o.Timeout))
	}
	if o.Dir != "" && strings.Contains(o.Dir, ",") {
		errs = append(errs, fmt.Errorf("--dir=%q: must not contain a comma (the agents' --reboot-command is a comma-separated list)", o.Dir))
	}
	return errors.Join(errs...)
}

// maxUnavailableNodes resolves --max-unavailable as the coordinator does.
func maxUnavailableNodes(v string, nodes int) (int, error) {
	mu, err := coordinator.ParseMaxUnavailable(v)
	if err != nil {
		return 0, fmt.Errorf("--max-unavailable=%q: %w", v, err)
	}
	return coordinator.ResolveMaxUnavailable(mu, nodes)
}

// run is one run of the sandbox: the cluster, the tokenroll processes and
// what watches them.
type run struct {
	opts Options
	p    *printer
	log  *zap.Logger
	sb   *Sandbox
	w    *watcher
	inv  *invariants.Checker
	// reports are the coordinators' app-stale and app-failing reports.
	reports *reportWatcher
	dir     string
	procs   sync.WaitGroup

	agents       map[string]*child
	coordinators []*child
	fail         context.CancelCauseFunc
	// proxies are the fault proxies (--faults), the coordinators' first.
	proxies []*faultproxy.Proxy
	// prom and alerts are the Prometheus server of --prometheus and what
	// watches its alerts (nil without).
	promMu sync.Mutex
	prom   *promServer
	alerts *alertWatcher

	// disruption counts pods restarted, reboots and time out of service.
	disruption *disruptionCounter
}

// crashLoop is how many times a process may end by itself (not killed by
// the sandbox) before the run gives up.
const crashLoop = 5

// Run builds the sandbox, walks the OpenShift documentation's procedure on it and returns the
// summary; the error is errNotOK-wrapped when the procedure did not
// complete with every invariant held. Ending ctx (Ctrl-C) stops everything.
func Run(ctx context.Context, opts Options, out io.Writer) (*Summary, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	dir, err := programs.Dir(opts.ProgramDir)
	if err != nil {
		return nil, err
	}
	if strings.Contains(dir, ",") {
		return nil, fmt.Errorf("the directory of tokenroll's binaries, %q, contains a comma, which the agents' --reboot-command cannot carry; move them", dir)
	}
	if _, err := programs.Find(dir, programs.Agent, programs.Coordinator, programs.Sandbox); err != nil {
		return nil, err
	}
	opts.ProgramDir = dir
	if opts.Prometheus {
		if opts.PrometheusBin, opts.PrometheusRules, err = findPrometheus(opts.PrometheusBin, opts.PrometheusRules); err != nil {
			return nil, err
		}
	}
	r := &run{opts: opts, p: &printer{w: out, start: time.Now()}, dir: opts.Dir,
		agents: map[string]*child{}}
	temporary := r.dir == ""
	if temporary {
		var err error
		if r.dir, err = os.MkdirTemp("", "tokenroll-sandbox-"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "logs"), 0o750); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(r.dir, "logs", "sandbox.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey, enc.EncodeTime = "ts", zapcore.RFC3339NanoTimeEncoder
	r.log = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(zapcore.AddSync(logFile)), zap.InfoLevel))
	// client-go's complaints while API servers restart belong in the log,
	// not among the progress lines.
	logging.RouteKlog(r.log)
	defer logging.RouteKlog(zap.NewNop()) // the file closes

	sum, err := r.run(ctx)
	interrupted := err != nil && ctx.Err() != nil
	if interrupted {
		// Ctrl-C: the person asked for it; nothing to keep.
		sum, err = nil, fmt.Errorf("interrupted (%w) before the procedure completed; everything is stopped", context.Cause(ctx))
	}
	keepDir := temporary && !interrupted && (err != nil || sum != nil && !sum.OK)
	if keepDir {
		r.p.raw(fmt.Sprintf("\nThe sandbox directory is kept for its logs: %s\n", r.dir))
	} else if temporary {
		_ = os.RemoveAll(r.dir)
	}
	return sum, err
}

func (r *run) run(ctx context.Context) (*Summary, error) {
	o := r.opts
	// A process that keeps failing ends the run with its reason, rather
	// than leaving it to wait for what will not come.
	ctx, r.fail = context.WithCancelCause(ctx)
	defer r.fail(nil)
	r.p.printf("starting a control plane: etcd and %d kube-apiserver(s) (control-plane nodes %s at revision %d), issuer %s",
		o.APIServers, strings.Join(MasterNames(o.APIServers), ", "), openshiftsim.DefaultStartRevision, o.Issuer)
	apps, _ := ParseApps(o.Apps)
	sb, err := Start(ctx, Config{BinDir: o.BinDir, Dir: r.dir, Nodes: o.Nodes, APIServers: o.APIServers, Issuer: o.Issuer,
		TrustWindow: o.TrustWindow, Kubelet: o.Kubelet, Apps: apps, Log: r.log})
	if err != nil {
		return nil, err
	}
	r.sb = sb
	// Stop in order: the tokenroll processes, then the nodes and the
	// control plane. A fresh context: ctx may be over already.
	procCtx, stopProcs := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		stopProcs()
		r.procs.Wait()
		for _, p := range r.proxies {
			p.Close()
		}
		sb.Stop()
		r.p.printf("stopped: every process ended")
	}()
	what := "simulated node(s) (kubeletsim)"
	if o.Kubelet == KubeletReal {
		what = "node(s) running the real kubelet " + controlplane.KubernetesVersion + " (hollow-kubelet and fake-runtime processes)"
	}
	r.p.printf("control plane up at %s; %d %s running %d pods of ReplicaSets build/nginx (build-robot, vault token), apps/web and apps/legacy; apps: %s",
		sb.CP.URL(), o.Nodes, what, PodsPerNode*o.Nodes, describeApps(apps))

	watchCtx, stopWatch := context.WithCancel(procCtx)
	defer stopWatch()
	if r.inv, err = invariants.Watch(watchCtx, sb.Admin, Namespace, LeaseName); err != nil {
		return nil, err
	}
	if r.w, err = watch(watchCtx, sb.Admin, sb.Dynamic, r.p); err != nil {
		return nil, err
	}
	r.disruption = newDisruptionCounter()
	if err := watchDisruption(watchCtx, sb.Admin, clock.RealClock{}, r.disruption); err != nil {
		return nil, err
	}
	if r.reports, err = watchReports(watchCtx, sb.Admin); err != nil {
		return nil, err
	}
	if err := r.startProcesses(procCtx); err != nil {
		return nil, err
	}
	if o.Prometheus {
		if err := r.startPrometheus(procCtx, watchCtx); err != nil {
			return nil, err
		}
	}
	r.printAccess()

	r.p.printf("waiting for every agent to report and a coordinator to lead")
	upCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = r.w.waitFor(upCtx, func(v view) bool {
		return v.agentsReport(o.Issuer) && v.Leader != ""
	})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("waiting for the agents to report and the coordinator to record issuer %s: %w; see the logs in %s", o.Issuer, err, filepath.Join(r.dir, "logs"))
	}
	r.p.printf("every agent reports and the coordinator recorded issuer %s", o.Issuer)
	if o.Once {
		r.p.printf("--once: the sandbox came up; stopping")
		return nil, nil
	}

	sum, err := r.scenario(ctx)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	sum.Print(&b)
	r.p.raw(b.String())
	if o.SummaryJSON != "" {
		if err := sum.WriteJSON(o.SummaryJSON); err != nil {
			return sum, err
		}
		r.p.printf("summary written to %s", o.SummaryJSON)
	}
	if o.Keep && ctx.Err() == nil {
		r.p.raw(fmt.Sprintf("\n--keep: the sandbox keeps running; Ctrl-C stops it. Try:\n  %s status --kubeconfig %s -n %s\n\n", r.cli(), sb.Kubeconfig, Namespace))
		<-ctx.Done()
	}
	if !sum.OK {
		return sum, fmt.Errorf("%w: %s", errNotOK, strings.Join(sum.Failures, "; "))
	}
	return sum, nil
}

// startProcesses writes the identities and starts one agent per node and
// two coordinator replicas, as in a cluster.
func (r *run) startProcesses(ctx context.Context) error {
	o, sb := r.opts, r.sb
	coordKubeconfig := filepath.Join(r.dir, "kubeconfigs", CoordinatorUser)
	rc, err := sb.CP.UserConfig(CoordinatorUser)
	if err != nil {
		return err
	}
	if rc, err = r.throughFaults(rc, "coordinators", coordinatorFaults); err != nil {
		return err
	}
	if err := controlplane.WriteKubeconfig(coordKubeconfig, rc); err != nil {
		return err
	}
	var exitMu sync.Mutex
	exits := map[string]int{}
	exited := func(c *child, err error) {
		exitMu.Lock()
		exits[c.name]++
		n := exits[c.name]
		exitMu.Unlock()
		if n == 1 {
			r.p.printf("%s exited by itself (%v); starting it again; its log: %s", c.name, waitStatus(err), c.logPath)
		}
		if n == crashLoop {
			r.fail(fmt.Errorf("%s exited by itself %d times (last: %v); the end of its log, %s:\n%s", c.name, n, waitStatus(err), c.logPath, logTail(c.logPath, 15)))
		}
	}
	var all []*child
	for _, n := range sb.Nodes {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		root := n.Root()
		stateDir := filepath.Join(r.dir, "agents", n.Name())
		if err := os.MkdirAll(stateDir, 0o750); err != nil {
			return err
		}
		kubeconfig := sb.NodeKubeconfig(n.Name())
		if o.Faults {
			nrc, err := sb.CP.NodeConfig(n.Name())
			if err != nil {
				return err
			}
			if nrc, err = r.throughFaults(nrc, n.Name(), agentFaults); err != nil {
				return err
			}
			kubeconfig = filepath.Join(r.dir, "kubeconfigs", n.Name()+"-through-faults")
			if err := controlplane.WriteKubeconfig(kubeconfig, nrc); err != nil {
				return err
			}
		}
		node := filepath.Join(o.ProgramDir, programs.Sandbox) + ",node,"
		args := func(addr string) []string {
			return []string{filepath.Join(o.ProgramDir, programs.Agent),
				"--node-name=" + n.Name(), "--kubelet-root=" + root, "--kubeconfig=" + kubeconfig,
				"--coordinator-namespace=" + Namespace, "--executor=command",
				"--reboot-command=" + node + "reboot,--root," + root + ",--down," + o.RebootDowntime.String(),
				"--kubelet-restart-command=" + node + "restart-kubelet,--root," + root,
				"--command-timeout=1m", "--boot-id-file=" + kubeletsim.BootIDPath(root), "--state-dir=" + stateDir,
				// Simulated reboots keep the directory, wherever the temporary directory is.
				"--allow-volatile-state-dir",
				"--reboot-sentinel=" + filepath.Join(root, "reboot-required"),
				"--metrics-bind-address=" + addr, "--interval=1s", "--issuer-refresh-interval=10s", "--log-format=json"}
		}
		c := newChild("agent "+n.Name(), addr, args, filepath.Join(r.dir, "logs", "agent-"+n.Name()+".log"))
		r.agents[n.Name()] = c
		all = append(all, c)
	}
	// With delete-all-pods the administrator remediates; the coordinators
	// only watch.
	remediate := "--strategy=" + o.Strategy
	if o.Strategy == DeleteAllPods {
		remediate = "--auto=false"
	}
	var auditLogs []string
	for i := range sb.CP.APIServers() {
		auditLogs = append(auditLogs, sb.CP.AuditLogPath(i))
	}
	for i := 1; i <= 2; i++ {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		args := func(addr string) []string {
			return []string{filepath.Join(o.ProgramDir, programs.Coordinator),
				"--kubeconfig=" + coordKubeconfig, "--namespace=" + Namespace, "--gate=openshift",
				remediate, "--max-unavailable=" + o.MaxUnavailable, "--metrics-bind-address=" + addr,
				"--lease-duration=4s", "--renew-deadline=3s", "--retry-period=500ms", "--issuer-refresh-interval=1s",
				"--drain-timeout=2m", "--action-timeout=2m", "--verify-timeout=2m", "--agent-wait=2m", "--gate-settle=5s", "--log-format=json",
				"--app-stale-grace=" + AppStaleGrace.String(),
				"--audit-log=" + strings.Join(auditLogs, ","), "--audit-log-checkpoint-dir=" + filepath.Join(r.dir, "audit", fmt.Sprintf("coordinator-%d", i))}
		}
		c := newChild(fmt.Sprintf("coordinator-%d", i), addr, args, filepath.Join(r.dir, "logs", fmt.Sprintf("coordinator-%d.log", i)))
		r.coordinators = append(r.coordinators, c)
		all = append(all, c)
	}
	for _, c := range all {
		c.exited = exited
		c.moved = func(c *child, old, addr string) {
			r.p.printf("%s: metrics port %s was taken by another process; now http://%s/metrics", c.name, old, addr)
			r.promTargetsMoved()
		}
	}
	// A node going down takes its agent with it; the agent starts again
	// once the node is up, as its DaemonSet pod would.
	sb.setNodeHook(func(e kubeletsim.Event) {
		c := r.agents[e.Node]
		if c == nil {
			return
		}
		switch e.Kind {
		case kubeletsim.EventDown:
			c.hold()
			r.p.printf("%s: down for a reboot; its agent stops with it", e.Node)
		case kubeletsim.EventUp:
			r.noteBoots()
			c.release()
			r.p.printf("%s: up again with a new boot ID; its agent starts again", e.Node)
		}
	})
	return startChildren(ctx, &r.procs, all)
}

// The faults --faults injects. The coordinators' first node writes meet
// two 500s and a 429, one later write loses its answer (the coordinator
// waits out its 30 s attempt timeout), and a fixed share of the node and
// state writes and node reads fail; a share of each agent's writes fail.
var (
	coordinatorFaults = []faultproxy.Rule{
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Count: 2},
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.Throttle, RetryAfter: 1, Count: 1},
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.Hang, Skip: 2, Count: 1},
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.2},
		{Verb: "update", Resource: "configmaps", Fault: faultproxy.ServerError, Probability: 0.2},
		{Verb: "get", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.2},
	}
	agentFaults = []faultproxy.Rule{
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.2},
		{Verb: "patch", Resource: "nodes", Fault: faultproxy.Throttle, RetryAfter: 1, Probability: 0.05},
	}
)

// throughFaults returns rc itself, or with --faults the configuration of a
// fault proxy that forwards as rc's identity; name seeds its draws.
func (r *run) throughFaults(rc *rest.Config, name string, rules []faultproxy.Rule) (*rest.Config, error) {
	if !r.opts.Faults {
		return rc, nil
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	p, err := faultproxy.New(rc, h.Sum64(), rules...)
	if err != nil {
		return nil, err
	}
	r.proxies = append(r.proxies, p)
	r.log.Info("fault proxy", zap.String("for", name), zap.String("url", p.URL()))
	return p.Config(rc), nil
}

// faultsInjected says how many faults the proxies injected, by kind.
func (r *run) faultsInjected() string {
	counts := map[faultproxy.Fault]int{}
	for _, p := range r.proxies {
		for _, in := range p.Injected() {
			counts[in.Fault]++
		}
	}
	return fmt.Sprintf("%d server errors, %d throttles, %d lost answers", counts[faultproxy.ServerError], counts[faultproxy.Throttle], counts[faultproxy.Hang])
}

// printAccess tells a person where everything is, so that `tokenroll
// status`, kubectl and curl work from another terminal.
func (r *run) printAccess() {
	sb := r.sb
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "API server\t%s (%d kube-apiserver(s) behind a local load balancer)\n", sb.CP.URL(), sb.CP.APIServers())
	fmt.Fprintf(tw, "kubeconfig\t%s (cluster admin)\n", sb.Kubeconfig)
	if r.prom != nil {
		fmt.Fprintf(tw, "prometheus\t%s (its API: /api/v1/alerts, /api/v1/query; no web UI)\n", r.prom.url())
	}
	fmt.Fprintf(tw, "logs\t%s (sandbox.log, agent-NODE.log, coordinator-N.log; the control plane's in controlplane/logs)\n", filepath.Join(r.dir, "logs"))
	for _, c := range r.coordinators {
		fmt.Fprintf(tw, "%s\tmetrics http://%s/metrics\tpid %d\n", c.name, c.metricsAddr(), c.pid())
	}
	fmt.Fprintln(tw, "\nNODE\tAGENT METRICS\tKUBELET ROOT")
	for _, n := range sb.Nodes {
		fmt.Fprintf(tw, "%s\thttp://%s/metrics\t%s\n", n.Name(), r.agents[n.Name()].metricsAddr(), n.Root())
	}
	tw.Flush()
	if len(sb.Nodes) > 0 {
		n := sb.Nodes[0]
		fmt.Fprintf(&b, "\nIn each kubelet root: the kubelet Pods API (%s), the node's control socket (%s) and its boot ID (%s).\n",
			strings.TrimPrefix(n.PodsAPISocket(), n.Root()+"/"), filepath.Base(kubeletsim.ControlSocketPath(n.Root())), filepath.Base(kubeletsim.BootIDPath(n.Root())))
	}
	fmt.Fprintf(&b, "\nFrom another terminal:\n  %s status --kubeconfig %s -n %s\n  curl -s http://%s/metrics | grep ^tokenroll_\n  KUBECONFIG=%s kubectl get nodes,pods -A\n\n",
		r.cli(), sb.Kubeconfig, Namespace, r.coordinators[0].metricsAddr(), sb.Kubeconfig)
	r.p.raw(b.String())
}

// cli is how a person runs tokenroll: the binary beside the sandbox's
// when make build put it there.
func (r *run) cli() string {
	if paths, err := programs.Find(r.opts.ProgramDir, programs.CLI); err == nil {
		return paths[0]
	}
	return programs.CLI
}

// scenario walks the OpenShift documentation's procedure: change the issuer, let the operator
// roll the new revision, let the coordinator remediate, and check the
// outcome.
func (r *run) scenario(ctx context.Context) (*Summary, error) {
	o := r.opts
	maxUnavailable, _ := maxUnavailableNodes(o.MaxUnavailable, o.Nodes)
	sum := &Summary{Nodes: o.Nodes, Kubelet: o.Kubelet, Strategy: o.Strategy, MaxUnavailable: maxUnavailable}
	startLatest := r.w.view().Gate.Latest

	if o.RefreshBeforeChange {
		if err := r.refreshBeforeChange(ctx); err != nil {
			return nil, err
		}
	}
	r.noteBoots()
	r.disruption.begin(time.Now())
	r.p.printf("step 1: the administrator sets Authentication/cluster .spec.serviceAccountIssuer to %s (trust window %s)", o.NewIssuer, o.TrustWindow)
	if err := openshiftsim.SetIssuer(ctx, r.sb.Dynamic, o.NewIssuer); err != nil {
		return nil, err
	}
	// Nothing touches a token until the new revision is out and the gate
	// opens; the tokens as they are now are the tokens "before".
	before, err := r.sb.census(ctx, o.NewIssuer)
	if err != nil {
		return nil, err
	}
	sum.TokensBefore = before.stateCounts()
	r.p.printf("the sandbox's own scan of every node, against %s: %s", o.NewIssuer, states(sum.TokensBefore))
	closedBefore := r.w.gates.closedFor(time.Now())
	tctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	r.p.printf("step 2: the operator rolls the new revision over the API servers; the coordinator waits at the gate")
	err = r.w.waitFor(tctx, func(v view) bool { return v.Gate.Open && v.Gate.Latest > startLatest })
	if err != nil {
		return nil, fmt.Errorf("waiting for the new kube-apiserver revision to roll out: %w", err)
	}
	openedAt := time.Now()
	appsAtGate := r.sb.AppReports()
	if o.Strategy == DeleteAllPods {
		r.p.printf("step 3: the gate is open; the administrator deletes every pod in every namespace, without draining (the documentation's `oc delete pods --all -n NS` for each namespace); the coordinators only watch (--auto=false)")
		if err := r.deleteAllPods(tctx); err != nil {
			return nil, err
		}
	} else {
		r.p.printf("step 3: the gate is open; the coordinator plans and remediates with --strategy=%s", o.Strategy)
	}

	var chaosWG sync.WaitGroup
	chaosCtx, stopChaos := context.WithCancel(tctx)
	if o.Chaos {
		chaosWG.Add(1)
		go func() { defer chaosWG.Done(); r.chaos(chaosCtx) }()
	}
	after, outcome, doneErr := r.waitDone(tctx)
	stopChaos()
	chaosWG.Wait()
	endedAt := time.Now()
	if doneErr != nil && ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	if doneErr != nil {
		sum.Failures = append(sum.Failures, doneErr.Error())
		// Judge what there is.
		if c, err := r.sb.census(context.WithoutCancel(ctx), ""); err == nil {
			after = c
		}
	} else {
		r.p.printf("step 4: done; %s", outcome)
	}
	if o.Faults {
		r.p.printf("faults injected into tokenroll's requests: %s", r.faultsInjected())
	}
	kinds, _ := ParseApps(o.Apps)
	if slices.Contains(kinds, AppCaching) {
		det, failures := r.awaitDetection(ctx, endedAt)
		sum.AppDetection = &det
		sum.Failures = append(sum.Failures, failures...)
	}
	if doneErr == nil {
		if err := r.awaitTrustEnd(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			sum.Failures = append(sum.Failures, err.Error())
		}
	}
	appFailures := r.settleApps(ctx, kinds)
	sum.Apps, _ = judgeApps(r.sb.AppReports(), kinds)
	errorsAfterGate(sum.Apps, appsAtGate)
	appFailures = append(appFailures, trustWindowFailures(sum.Apps, o.TrustWindow)...)
	appFailures = explainAppFailures(o.Strategy, sum.Apps, appFailures)
	sum.Failures = append(sum.Failures, appFailures...)
	sum.appFailures = appFailures
	// After the apps settled: a pod whose tokens the end saw on disk has
	// posted its start by then. Nodes count out of service until the end.
	r.noteBoots()
	sum.Disruption = r.disruption.figures(endedAt)
	sum.TokensAfter = after.stateCounts()
	sum.Issuer = after.Issuer
	sum.GateClosedSeconds = seconds(r.w.gates.closedFor(openedAt) - closedBefore)
	sum.RolloutSeconds = seconds(endedAt.Sub(openedAt))

	inv := r.inv.Summary()
	sum.MaxConcurrentDisrupted = inv.MaxConcurrentDisrupted
	sum.NodesLeftCordoned = len(inv.NodesLeftCordoned)
	sum.ActionsPerNode = map[string]int{}
	for _, n := range r.sb.Nodes {
		sum.ActionsPerNode[n.Name()] = inv.ActionsPerNode[n.Name()]
	}
	sum.OverheadPerNodeSeconds = spread(inv.Overheads)
	sum.LeaderChanges = inv.LeaderChanges
	if inv.MaxConcurrentDisrupted > maxUnavailable {
		sum.Failures = append(sum.Failures, fmt.Sprintf("%d nodes were disrupted at once (%s), more than max-unavailable %d",
			inv.MaxConcurrentDisrupted, strings.Join(inv.MaxDisruptedNodes, ", "), maxUnavailable))
	}
	if len(inv.NodesLeftCordoned) > 0 {
		sum.Failures = append(sum.Failures, "nodes left cordoned: "+strings.Join(inv.NodesLeftCordoned, ", "))
	}
	perRollout, rollouts := r.w.actions()
	for _, ro := range slices.Sorted(maps.Keys(perRollout)) {
		for _, n := range slices.SortedFunc(maps.Keys(perRollout[ro]), byNodeName) {
			if a := perRollout[ro][n]; a > 1 {
				sum.Failures = append(sum.Failures, fmt.Sprintf("node %s was asked to act %d times in rollout %s", n, a, ro))
			}
		}
	}
	if len(rollouts) > 1 {
		// Not an invariant, but not the plan either: say so.
		r.p.printf("note: %d rollouts ran for one issuer change: %s", len(rollouts), strings.Join(rollouts, ", "))
	}
	sum.Failures = append(sum.Failures, r.disruptedWhileClosed()...)
	r.alertsAtEnd(context.WithoutCancel(ctx), endedAt, sum)
	sum.OK = len(sum.Failures) == 0
	return sum, nil
}

// refreshReportDelay bounds how long after a routine token refresh its
// agent reports the new token IDs, in the agent's first ten minutes, with
// a margin for a loaded machine.
const refreshReportDelay = 70 * time.Second

// refreshBeforeChange has every node's kubelet refresh its projected
// tokens under the current issuer, as each does at 80% of a token's
// lifetime (Options.RefreshBeforeChange), then waits until the coordinator
// has reported every pod whose caching app went on presenting the token it
// read, at most the grace, the slack and refreshReportDelay after the
// refresh (a pod not
// reported by then is app detection's miss, which the run's judgement of
// app detection names). Nothing of it counts as the procedure's
// disruption: it happens before the issuer changes, the same for every
// remediation.
func (r *run) refreshBeforeChange(ctx context.Context) error {
	// App detection judges a token an app presents against what the
	// pod's volumes held when the detector learnt them: a refresh before
	// the agents' first report of the tokens the apps read would make
	// the refreshed tokens the first the detector learns, and the token
	// a caching app goes on presenting one it cannot place.
	wctx, cancel := context.WithTimeout(ctx, refreshReportDelay)
	err := r.w.waitFor(wctx, func(v view) bool { return v.tokensReported(r.sb.AppReports()) })
	cancel()
	if err != nil && ctx.Err() == nil {
		r.p.printf("note: not every app's pod was in its agent's tokens report within %s; refreshing anyway", refreshReportDelay)
	}
	r.p.printf("step 0: the kubelets refresh every projected token under %s, as each does at 80%% of a token's lifetime (48 minutes for the default hour): a kubelet restart on each node stands in for that wait; apps that cached their token keep presenting the one they read", r.opts.Issuer)
	at := time.Now()
	for _, n := range r.sb.Nodes {
		switch k := n.(type) {
		case *kubeletsim.Node:
			k.RestartKubelet()
		case interface{ RestartKubelet() error }:
			if err := k.RestartKubelet(); err != nil {
				return fmt.Errorf("refreshing the tokens before the issuer change: %w", err)
			}
		default:
			return fmt.Errorf("refreshing the tokens before the issuer change: node %s cannot restart its kubelet; run with --refresh-before-change=false", n.Name())
		}
	}
	// An agent sends the token IDs a refresh changed with its next
	// report, within a minute in its first ten minutes (a routine refresh
	// changes nothing the coordinator acts on), and app detection's grace
	// runs from the new token's issue.
	due := time.Now().Add(AppStaleGrace + detectSlack + refreshReportDelay)
	r.p.printf("waiting for the coordinator to report the caching apps' pods app-stale (--app-stale-grace=%s after the agents report the new tokens, by %s at the latest)", AppStaleGrace, due.UTC().Format(time.TimeOnly))
	for {
		missing := unreportedCaching(r.sb.AppReports(), r.reports.reports())
		if len(missing) == 0 {
			r.p.printf("every caching app's pod is reported app-stale, %.1fs after the refresh", time.Since(at).Seconds())
			return nil
		}
		if !time.Now().Before(due) {
			r.p.printf("note: %d caching app pod(s) not reported app-stale %.1fs after the refresh: %s", len(missing), time.Since(at).Seconds(), strings.Join(missing, ", "))
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(time.Second):
		}
	}
}

// waitDone waits until the procedure is over: no rollout active, no node
// disrupted, and every token fresh under the new issuer — or, with a trust
// window, the coordinator found nothing to do because every old token
// refreshes while its issuer is still trusted. A halted rollout ends the
// wait with an error.
func (r *run) waitDone(ctx context.Context) (tokenCensus, string, error) {
	o := r.opts
	var last tokenCensus
	var outcome string
	var quietSince time.Time
	var lastErr error
	err := r.w.waitFor(ctx, func(v view) bool {
		if ro := v.State.Rollout; ro != nil && ro.Phase == "halted" {
			lastErr = fmt.Errorf("rollout %s halted: %s on %s: %s", ro.ID, ro.HaltReason, ro.HaltNode, ro.Message)
			return true
		}
		settled := v.State.Active() == nil && v.disrupted() == 0 && v.agentsReport(o.NewIssuer)
		if !settled {
			quietSince = time.Time{}
			return false
		}
		c, err := r.sb.census(ctx, "")
		if err != nil {
			return false
		}
		last = c
		if c.AllFresh() && c.Live >= TokensPerNode*o.Nodes && v.agentsClean() {
			outcome = fmt.Sprintf("every token on every node is fresh under %s", c.Issuer)
			return true
		}
		if o.TrustWindow == 0 || !trustedUntilRefresh(c, v.Gate) {
			return false
		}
		// The coordinator plans as soon as the agents report under the new
		// issuer; ten quiet seconds after that mean it found nothing to do.
		if quietSince.IsZero() {
			quietSince = time.Now()
		}
		if time.Since(quietSince) < 10*time.Second {
			return false
		}
		var olds []string
		for iss, refresh := range c.OldIssuers {
			olds = append(olds, fmt.Sprintf("%s tokens all refresh by %s, and it stays trusted until %s",
				iss, refresh.UTC().Format(time.RFC3339), v.Gate.Trusted[iss].UTC().Format(time.RFC3339)))
		}
		slices.Sort(olds)
		outcome = "no node needed work: " + strings.Join(olds, "; ")
		return true
	})
	if lastErr != nil {
		return last, "", lastErr
	}
	if err != nil {
		msg := fmt.Sprintf("the procedure did not complete within --timeout=%s", o.Timeout)
		if len(last.Problems) > 0 {
			msg += "; tokens not fresh: " + strings.Join(last.Problems, "; ")
		}
		return last, "", errors.New(msg)
	}
	return last, outcome, nil
}

// trustEndMargin is how long the apps keep running once no API server
// trusts the previous issuer any more, before they are judged: an app
// calls every 1-2 s, so one whose credential stopped working with the
// trust has failed by then.
const trustEndMargin = 20 * time.Second

// awaitTrustEnd keeps the apps running, when the procedure ended inside a
// trust window, until the operator has dropped every previous issuer from
// the API servers and trustEndMargin more: an app that still presents a
// token of the old issuer fails only then, after the rollout ended, and a
// run judged before would call it healthy.
func (r *run) awaitTrustEnd(ctx context.Context) error {
	v := r.w.view()
	until := trustEnds(v.Gate)
	if until.IsZero() {
		return nil
	}
	r.p.printf("the previous issuer stays trusted until %s (in %s): the apps keep running until every API server has dropped it, and %s more, before they are judged",
		until.UTC().Format(time.RFC3339), time.Until(until).Round(time.Second), trustEndMargin)
	wctx, cancel := context.WithTimeout(ctx, time.Until(until)+r.opts.Timeout)
	defer cancel()
	err := r.w.waitFor(wctx, func(cur view) bool { return trustEnded(v.Gate, cur.Gate) })
	if err != nil {
		return fmt.Errorf("the API servers did not drop the previous issuer within --timeout=%s of its trust's end at %s: %w", r.opts.Timeout, until.UTC().Format(time.RFC3339), err)
	}
	r.p.printf("every API server dropped the previous issuer; the apps run %s more", trustEndMargin)
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(trustEndMargin):
	}
	return nil
}

// trustEnds is when the last previous issuer g trusts stops being
// trusted (zero: none is).
func trustEnds(g gateView) time.Time {
	var until time.Time
	for _, exp := range g.Trusted {
		if exp.After(until) {
			until = exp
		}
	}
	return until
}

// trustEnded reports whether, since before, the API servers dropped every
// previous issuer before trusted: a newer revision is out on every one of
// them, and it trusts none of those issuers.
func trustEnded(before, cur gateView) bool {
	if !cur.Open || cur.Latest <= before.Latest {
		return false
	}
	for iss := range before.Trusted {
		if _, ok := cur.Trusted[iss]; ok {
			return false
		}
	}
	return true
}

// trustWindowFailures: with a trust window, the procedure promises that no
// app's request fails, reloading or caching, during the rollout or after
// the window closes; any authentication failure breaks it.
func trustWindowFailures(figs map[AppKind]AppFigures, window time.Duration) []string {
	if window <= 0 {
		return nil
	}
	var parts []string
	for _, k := range AppKinds {
		if f, ok := figs[k]; ok && f.AuthFailures > 0 {
			parts = append(parts, fmt.Sprintf("%s %d (%.1fs unable to authenticate)", k, f.AuthFailures, f.ErrorSeconds))
		}
	}
	if len(parts) == 0 {
		return nil
	}
	return []string{fmt.Sprintf("with a trust window of %s no app request may fail to authenticate, but apps failed: %s", window, strings.Join(parts, ", "))}
}

// appSettle is how long the end waits for the apps to authenticate: two
// requests' time and more, so that a reloading app that just got a 401
// has read its file again and been heard.
const appSettle = 10 * time.Second

// settleApps waits until no app fails, at most appSettle, and returns what
// still fails.
func (r *run) settleApps(ctx context.Context, kinds []AppKind) []string {
	deadline := time.Now().Add(appSettle)
	for {
		_, failing := judgeApps(r.sb.AppReports(), kinds)
		if len(failing) == 0 || time.Now().After(deadline) {
			return failing
		}
		select {
		case <-ctx.Done():
			return failing
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// awaitDetection waits until the coordinators had the time to report
// every pod whose caching app presents a token that went bad (the grace
// after its refresh, and the slack), or until they did and no other pod
// could still be reported; then it judges their reports.
func (r *run) awaitDetection(ctx context.Context, rolloutEnd time.Time) (AppDetection, []string) {
	start := time.Now()
	r.p.printf("app detection: waiting for the coordinator to report the pods whose app caches its token (--app-stale-grace=%s after the token changed)", AppStaleGrace)
	for {
		due, done := detectionDue(r.sb.AppReports(), r.reports.reports(), time.Now(), AppStaleGrace)
		if done || !time.Now().Before(due) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			continue
		}
		break
	}
	d, failures := judgeDetection(r.sb.AppReports(), r.reports.reports(), time.Now(), AppStaleGrace)
	d.WaitSeconds = seconds(time.Since(start))
	r.p.printf("app detection: %d caching pod(s) reported, %d other pod(s) reported, %d caching pod(s) missed; waited %.1fs (the rollout ended %.1fs ago)",
		d.TruePositives, d.FalsePositives, d.FalseNegatives, d.WaitSeconds, time.Since(rolloutEnd).Seconds())
	return d, failures
}

// describeApps says which apps the pods run.
func describeApps(kinds []AppKind) string {
	var parts []string
	for _, k := range kinds {
		switch k {
		case AppReloading:
			parts = append(parts, "nginx and web reload their token (reloading)")
		case AppCaching:
			parts = append(parts, "legacy reads it once (caching)")
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ") + "; each calls the API server every 1-2 s from its pod's IP"
}

// trustedUntilRefresh reports whether every token that is not fresh is from
// a previous issuer that stays trusted until after its kubelet refreshes
// it.
func trustedUntilRefresh(c tokenCensus, g gateView) bool {
	for st, n := range c.States {
		if n > 0 && st != protocol.StateFresh && st != protocol.StateOrphaned && st != protocol.StateIssuerMismatch {
			return false
		}
	}
	for iss, refresh := range c.OldIssuers {
		until, ok := g.Trusted[iss]
		if !ok || !refresh.Before(until) {
			return false
		}
	}
	return true
}

// disruptedWhileClosed lists nodes the coordinator cordoned while a
// kube-apiserver revision rolled out, from the times the coordinator
// recorded on the Nodes and the operator on KubeAPIServer/cluster (a second
// allows for the coordinator's watch to see a rollout begin).
func (r *run) disruptedWhileClosed() []string {
	v := r.w.view()
	var out []string
	for name, n := range v.Nodes {
		s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
		if err != nil || s.StartedAt.IsZero() {
			continue
		}
		if r.w.gates.rollingAt(s.StartedAt, time.Second) {
			out = append(out, fmt.Sprintf("node %s was cordoned at %s while the revision gate was closed", name, s.StartedAt.Format(time.RFC3339Nano)))
		}
	}
	slices.Sort(out)
	return out
}

// chaos kills the coordinator leader and random agents, one every few
// seconds, while a rollout is active; each comes back a moment later.
func (r *run) chaos(ctx context.Context) {
	if err := r.w.waitFor(ctx, func(v view) bool { return v.State.Active() != nil }); err != nil {
		return
	}
	maxUnavailable, _ := maxUnavailableNodes(r.opts.MaxUnavailable, r.opts.Nodes)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	leaderKills := 0
	// The first kill comes at once, as the rollout starts; the next ones
	// every few seconds.
	for turn := 0; ; turn++ {
		if turn > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(3*time.Second + time.Duration(rng.IntN(3000))*time.Millisecond):
			}
		}
		v := r.w.view()
		ro := v.State.Active()
		if ro == nil {
			continue
		}
		if turn%2 == 0 && leaderKills < 3 {
			if c := r.leader(ctx); c != nil {
				r.p.printf("chaos: SIGKILL %s (the leader, pid %d); it starts again in %s", c.name, c.pid(), restartDelay)
				c.kill()
				leaderKills++
				continue
			}
		}
		// An agent is killed only while it cannot be in the middle of an
		// action: its node is done, or waits while others take all the
		// room max-unavailable gives. (An agent killed mid-action reports
		// the request failed, by design, and the rollout halts.)
		inProgress := 0
		var done, pending []string
		for _, pn := range ro.Nodes {
			n := v.Nodes[pn.Name]
			if n == nil {
				continue
			}
			s, ok := nodeStep(n, ro.ID)
			switch {
			case !ok:
				pending = append(pending, pn.Name)
			case s.Step == protocol.StepDone:
				done = append(done, pn.Name)
			case s.Step.InProgress():
				inProgress++
			}
		}
		victims := done
		if inProgress >= maxUnavailable {
			victims = append(victims, pending...)
		}
		if len(victims) == 0 {
			continue
		}
		name := victims[rng.IntN(len(victims))]
		c := r.agents[name]
		r.p.printf("chaos: SIGKILL agent %s (pid %d); it starts again in %s", name, c.pid(), restartDelay)
		c.kill()
	}
}

// leader is the coordinator replica that says it leads
// (tokenroll_coordinator_leader 1 on its metrics endpoint).
func (r *run) leader(ctx context.Context) *child {
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, c := range r.coordinators {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metricsAddr()+"/metrics", nil)
		if err != nil {
			continue
		}
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		if err == nil && strings.Contains("\n"+string(body), "\ntokenroll_coordinator_leader 1\n") {
			return c
		}
	}
	return nil
}
