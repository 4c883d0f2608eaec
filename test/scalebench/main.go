// Command scalebench measures tokenroll on a simulated fleet against a real
// control plane, at several fleet sizes, and projects the figures to 5,000
// nodes and 150,000 pods.
//
//	make controlplane && go run ./test/scalebench [--nodes 50,250] [--summary-json F]
//
// Each size runs on a fresh control plane (etcd and two kube-apiservers
// from the build cache). The simulated kubelets (sandbox/kubeletsim) and
// the real agent code of every node run in this process (sandbox/fleet),
// on API server 0, the kubelets sharing one pod informer (the benchmark
// measures tokenroll, not a thousand kubelets' lists and watches); the
// agents follow the issuer the coordinator publishes in its namespace, as
// a deployed agent's --coordinator-namespace makes it, with the nodes
// granted what deploy's Role tokenroll-agent grants; the
// real coordinator runs as its own process (the tokenroll-coordinator
// binary, built unless --coordinator-binary names one), on API server 1, with its shipped defaults except the gate (none:
// this control plane has no revision), the strategy (kubelet-restart) and
// --max-unavailable.
//
// Phases, for each size:
//  1. steady state: --pods-per-node pods on every node, replaced at
//     --churn pods per node per hour, for --steady of real time, with the
//     agents' clocks stepped past their first ten minutes (when a new agent
//     follows its pods' counts within a minute) so that they behave as in
//     a fleet that has run for a while. Measured: the agents' requests,
//     counted by their own HTTP clients (Node writes apart), per node and
//     hour; the coordinator's CPU time from /proc scaled to an hour, its
//     resident memory, and tokenroll_plan_sync_duration_seconds from its
//     /metrics. One more node's agent runs as its own process (the
//     tokenroll-agent binary, --run=scan) for calibration: its resident
//     memory and CPU time from /proc. It leaves before phase 2 (it has no
//     executor).
//  2. issuer change and rollout: both API servers restart signing with a
//     new issuer (the old one still trusted), which opens the gate; the
//     coordinator, with its default --auto, reads the new issuer and plans
//     a kubelet-restart rollout of every node from the agents' reports.
//     Measured: from the gate opening to the rollout done (the shipped
//     --gate-settle of 2 minutes and --issuer-refresh-interval of 1 minute
//     included); the API requests per node (the coordinator's, from API
//     server 1's apiserver_request_total, Lease renewals aside; the
//     agents', from their clients), the API servers' request rate and
//     99th-percentile latency (apiserver_request_duration_seconds, WATCH
//     and CONNECT left out), and the coordinator's CPU and peak memory.
//  3. the model: every figure is fitted, least squares, as a + b·nodes
//     over the sizes measured, and projected to 5,000 nodes with the same
//     pods per node.
//
// It prints a table and, with --summary-json, writes the figures as JSON.
// With --cpu-profile-dir the coordinator runs with --profiling and the
// benchmark fetches its CPU profiles over phases 1 and 2 into that
// directory (go tool pprof -top DIR/coordinator-idle-250.pprof); the
// profiling costs the coordinator some CPU of its own, counted in its
// figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientfeatures "k8s.io/client-go/features"

	"github.com/tokenroll/tokenroll/internal/logging"
)

// options are the benchmark's flags.
type options struct {
	// Nodes are the fleet sizes measured, smallest first.
	Nodes []int
	// PodsPerNode is the pods on each node (150,000 / 5,000 = 30).
	PodsPerNode int
	// Churn is how many pods per node and hour are replaced in steady state.
	Churn float64
	// CreateConcurrency is how many pods are created at once in setup.
	CreateConcurrency int
	// Steady is the real time steady state is measured over: at least
	// watchRenewal, or the agents' watches, which client-go renews every
	// 5 to 10 min and which started with the agents a few minutes before,
	// are not renewed in the window at all and their requests go uncounted.
	Steady time.Duration
	// MaxUnavailable is the coordinator's --max-unavailable. The default,
	// 5%, makes a rollout 20 waves however large the fleet, each about a
	// kubelet restart and the agent's next 30 s scan; at 5,000 nodes a wave
	// of 250 costs the coordinator about 1,300 requests, 65 s at its 20 a
	// second, so 20 waves fit in the hour with room to spare, where a fixed
	// count would grow the waves with the fleet. A kubelet restart evicts
	// nothing: 5% of the nodes are unschedulable for about a minute each.
	MaxUnavailable string
	// SummaryJSON, when set, is where the figures are written as JSON.
	SummaryJSON string
	// CoordinatorBinary is a built tokenroll-coordinator ("": build one).
	CoordinatorBinary string
	// AgentBinary is a built tokenroll-agent ("": build one).
	AgentBinary string
	// FromJSON refits and prints an earlier --summary-json instead of
	// measuring.
	FromJSON string
	// BinDir holds etcd and kube-apiserver (default: the build cache).
	BinDir string
	// Timeout bounds the whole run.
	Timeout time.Duration
	// LogLevel is the least severe level logged to stderr.
	LogLevel string
	// CPUProfileDir, when set, receives the coordinator's CPU profiles
	// (it runs with --profiling): coordinator-idle-NODES.pprof over the
	// steady state, coordinator-rollout-NODES-K.pprof over the rollout.
	CPUProfileDir string
}

func defaultOptions() options {
	return options{Nodes: []int{50, 250}, PodsPerNode: 30, Churn: 10, CreateConcurrency: 32, Steady: watchRenewal, MaxUnavailable: "5%",
		Timeout: 2 * time.Hour, LogLevel: "error"}
}

// watchRenewal is the longest a client-go reflector's watch lasts before
// the client renews it (its timeout is 5 min times 1 to 2).
const watchRenewal = 10 * time.Minute

// intList is a flag holding comma-separated integers.
type intList struct{ v *[]int }

func (l intList) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, n := range *l.v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (l intList) Set(s string) error {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not a number", f)
		}
		out = append(out, n)
	}
	*l.v = out
	return nil
}

func (o *options) addFlags(fs *flag.FlagSet) {
	fs.Var(intList{&o.Nodes}, "nodes", "fleet sizes to measure, comma-separated; two or more give the model")
	fs.IntVar(&o.PodsPerNode, "pods-per-node", o.PodsPerNode, "pods on each node")
	fs.IntVar(&o.CreateConcurrency, "create-concurrency", o.CreateConcurrency, "pods created at once in setup")
	fs.Float64Var(&o.Churn, "churn", o.Churn, "pods per node and hour replaced in steady state")
	fs.DurationVar(&o.Steady, "steady", o.Steady, "real time steady state is measured over")
	fs.StringVar(&o.MaxUnavailable, "max-unavailable", o.MaxUnavailable, "the coordinator's --max-unavailable for the rollout")
	fs.StringVar(&o.SummaryJSON, "summary-json", o.SummaryJSON, "write the figures as JSON to this file")
	fs.StringVar(&o.CoordinatorBinary, "coordinator-binary", o.CoordinatorBinary, "a built tokenroll-coordinator (default: build ./cmd/tokenroll-coordinator)")
	fs.StringVar(&o.AgentBinary, "agent-binary", o.AgentBinary, "a built tokenroll-agent, run as the calibration node's agent (default: build ./cmd/tokenroll-agent)")
	fs.StringVar(&o.FromJSON, "from-json", o.FromJSON, "print the figures of earlier --summary-json files (comma-separated; their runs fitted together) instead of measuring")
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "directory holding etcd and kube-apiserver (default: $TOKENROLL_CONTROLPLANE_BIN or the build cache)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "bound on the whole run")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "least severe level logged to stderr: debug, info, warn or error")
	fs.StringVar(&o.CPUProfileDir, "cpu-profile-dir", o.CPUProfileDir, "run the coordinator with --profiling and write its CPU profiles here: coordinator-idle-NODES.pprof over the steady state, coordinator-rollout-NODES-K.pprof over the rollout, 30 s each (go tool pprof merges them)")
}

// validate reports every bad flag.
func (o *options) validate() error {
	var errs []error
	if len(o.Nodes) == 0 {
		errs = append(errs, errors.New("--nodes: want at least one size"))
	}
	for _, n := range o.Nodes {
		if n < 2 || n > 5000 {
			errs = append(errs, fmt.Errorf("--nodes: %d: want 2 to 5000", n))
		}
	}
	if !slices.IsSorted(o.Nodes) {
		errs = append(errs, fmt.Errorf("--nodes=%s: want the sizes smallest first", intList{&o.Nodes}))
	}
	if o.PodsPerNode < 1 || o.PodsPerNode > 110 {
		errs = append(errs, fmt.Errorf("--pods-per-node=%d: want 1 to 110 (the kubelet's default maximum)", o.PodsPerNode))
	}
	if o.CreateConcurrency < 1 || o.CreateConcurrency > 1000 {
		errs = append(errs, fmt.Errorf("--create-concurrency=%d: want 1 to 1000", o.CreateConcurrency))
	}
	if o.Churn < 0 {
		errs = append(errs, fmt.Errorf("--churn=%g: want 0 or more", o.Churn))
	}
	if o.Steady < 5*time.Second {
		errs = append(errs, fmt.Errorf("--steady=%s: want at least 5s", o.Steady))
	}
	if o.MaxUnavailable == "" {
		errs = append(errs, errors.New("--max-unavailable: want a number or a percentage"))
	}
	if o.Timeout < time.Minute {
		errs = append(errs, fmt.Errorf("--timeout=%s: want at least 1m", o.Timeout))
	}
	if err := (&logging.Options{Format: "console", Level: o.LogLevel}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	return errors.Join(errs...)
}

func main() {
	o := defaultOptions()
	o.addFlags(flag.CommandLine)
	flag.Parse()
	listFromWatchCache()
	os.Exit(mainExit(o))
}

// listFromWatchCache makes this process's informers (the simulated
// kubelets', the in-process agents', the benchmark's own) start with a
// list served from the API server's watch cache (resourceVersion 0) and a
// watch, as client-go did before its watch-list stream. The stream asks
// for the newest data in etcd and waits until the watch cache has it; with
// a thousand nodes' writes on this machine the watch cache lags etcd by
// thousands of revisions ("Too large resource version") for minutes, and
// an informer started then waits as long. The coordinator and the
// calibration agent, their own processes, keep client-go's default.
func listFromWatchCache() {
	clientfeatures.ReplaceFeatureGates(noWatchList{clientfeatures.FeatureGates()})
}

type noWatchList struct{ clientfeatures.Gates }

func (g noWatchList) Enabled(f clientfeatures.Feature) bool {
	return f != clientfeatures.WatchListClient && g.Gates.Enabled(f)
}

// mainExit runs the benchmark and returns the exit status: 0 when it ran
// (a missed goal is reported, not an exit status), 1 when it could not.
func mainExit(o options) int {
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		return 1
	}
	log, err := (&logging.Options{Format: "console", Level: o.LogLevel}).Build(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var sum *Summary
	dir := ""
	if o.FromJSON != "" {
		sum, err = readSummaries(o.FromJSON)
	} else if dir, err = os.MkdirTemp("", "tokenroll-scalebench-"); err == nil {
		sum, err = runAll(ctx, o, dir, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		return 1
	}
	sum.print(os.Stdout)
	if o.SummaryJSON != "" {
		if err := sum.write(o.SummaryJSON); err != nil {
			fmt.Fprintln(os.Stderr, "scalebench:", err)
			return 1
		}
	}
	// Last: a thousand nodes' files take minutes to remove on a loaded
	// machine, and the figures are out by then. A failed run keeps them.
	if dir != "" {
		fmt.Fprintf(os.Stderr, "scalebench: removing %s\n", dir)
		_ = os.RemoveAll(dir)
	}
	return 0
}
