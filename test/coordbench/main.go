// Command coordbench measures the coordinator on a rolling reboot of
// simulated nodes, from outside it: its own overhead between nodes and the
// API requests it makes per node; and it checks the rollout's invariants.
//
//	make controlplane && go run ./test/coordbench [-nodes 50] [-strategy reboot] [-json]
//
// It starts a real control plane with two kube-apiservers. The simulated
// kubelets, their in-process agents (sandbox/kubeletsim and the real agent,
// as sandbox/fleet runs them; a reboot keeps a node down -reboot-down) and
// the observer talk only to API server 0. The coordinator talks only to API
// server 1, with leader election (one replica), max-unavailable 1, a drain
// through the eviction API (Force: the pods are bare), and the leader
// election timings and client rate limits of `tokenroll-coordinator`. An
// administrator starts a rollout over every node, as `tokenroll rollout
// start` does.
//
// Measured:
//   - the overhead per node, from an invariants.Checker watching Nodes
//     through API server 0: one node freed (schedulable and Ready again) to
//     the next node cordoned, median and max (goal: under 1 s), and the
//     rollout's total time;
//   - the requests per node: API server 1's apiserver_request_total over
//     the rollout, read from its /metrics before and after (the reads taken
//     out), divided by the node count (goal: under 15), by verb and
//     resource. Lease requests (the leader election's renewals, and the API
//     server's own identity lease) are printed apart and left out of the
//     per-node figure. API server 1 also writes an audit log of the
//     coordinator's and its own loopback requests, which shows who made
//     each: an eviction makes the API server LIST PodDisruptionBudgets
//     through its loopback client, which the metric counts; the metric
//     does not count discovery (GET /api/v1), which the audit log shows.
//
// Checked: at most one node disrupted at a time, no node left cordoned,
// exactly one action request per node (and one action by its agent).
//
// It prints the overhead between nodes (median, p90, max, against the
// goal), the API requests per node by verb and resource with their status
// codes, and the invariants; the README's performance section has the
// figures of a run.
//
// With -json the same figures are written as one JSON object on stdout.
// The exit status is 0 when every invariant holds, 2 when one is broken,
// and 1 when the benchmark could not run; a missed goal is reported, not
// an exit status.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/logging"
	"github.com/tokenroll/tokenroll/protocol"
)

// options are the benchmark's flags.
type options struct {
	// Nodes is how many simulated nodes the rollout covers.
	Nodes int
	// Strategy is the rollout's remediation: reboot or kubelet-restart
	// (pod-restart needs pods with controllers, which this bench lacks).
	Strategy string
	// PodsPerNode are bare pods on each node, drained by the reboot.
	PodsPerNode int
	// RebootDown is how long a simulated reboot keeps its node down.
	RebootDown time.Duration
	// AgentInterval is the agents' scan interval.
	AgentInterval time.Duration
	// Timeout bounds the whole run.
	Timeout time.Duration
	// JSON writes the result as JSON instead of a table.
	JSON bool
	// BinDir holds etcd and kube-apiserver (default: the build cache).
	BinDir string
	// LogLevel is the least severe level logged to stderr.
	LogLevel string
}

func defaultOptions() options {
	return options{Nodes: 50, Strategy: string(coordinator.Reboot), PodsPerNode: 2, RebootDown: 200 * time.Millisecond,
		AgentInterval: 5 * time.Second, Timeout: 10 * time.Minute, LogLevel: "error"}
}

func (o *options) addFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.Nodes, "nodes", o.Nodes, "simulated nodes in the rollout")
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "remediation: reboot or kubelet-restart")
	fs.IntVar(&o.PodsPerNode, "pods", o.PodsPerNode, "bare pods per node (drained by a reboot)")
	fs.DurationVar(&o.RebootDown, "reboot-down", o.RebootDown, "how long a simulated reboot keeps its node down")
	fs.DurationVar(&o.AgentInterval, "agent-interval", o.AgentInterval, "the agents' scan interval")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "bound on the whole run")
	fs.BoolVar(&o.JSON, "json", o.JSON, "write the result as JSON on stdout")
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "directory holding etcd and kube-apiserver (default: $TOKENROLL_CONTROLPLANE_BIN or the build cache)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "least severe level logged to stderr: debug, info, warn or error")
}

// validate reports every bad flag.
func (o *options) validate() error {
	var errs []error
	if o.Nodes < 2 || o.Nodes > 500 {
		errs = append(errs, fmt.Errorf("-nodes=%d: want 2 to 500 (one node has no gap between nodes to measure)", o.Nodes))
	}
	switch protocol.Strategy(o.Strategy) {
	case coordinator.Reboot, coordinator.KubeletRestart:
	case coordinator.PodRestart:
		errs = append(errs, errors.New("-strategy=pod-restart: the bench's pods are bare and pod-restart evicts only pods with a controller; use reboot or kubelet-restart"))
	default:
		errs = append(errs, fmt.Errorf("-strategy=%q: want reboot or kubelet-restart", o.Strategy))
	}
	if o.PodsPerNode < 0 || o.PodsPerNode > 20 {
		errs = append(errs, fmt.Errorf("-pods=%d: want 0 to 20", o.PodsPerNode))
	}
	if o.RebootDown <= 0 || o.RebootDown > time.Minute {
		errs = append(errs, fmt.Errorf("-reboot-down=%s: want more than 0 and at most 1m", o.RebootDown))
	}
	if o.AgentInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("-agent-interval=%s: want at least 100ms", o.AgentInterval))
	}
	if o.Timeout < time.Minute {
		errs = append(errs, fmt.Errorf("-timeout=%s: want at least 1m", o.Timeout))
	}
	if err := (&logging.Options{Format: "console", Level: o.LogLevel}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %w", err))
	}
	return errors.Join(errs...)
}

func main() {
	o := defaultOptions()
	o.addFlags(flag.CommandLine)
	flag.Parse()
	os.Exit(mainExit(o))
}

// mainExit runs the benchmark and returns the exit status.
func mainExit(o options) int {
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "coordbench:", err)
		return 1
	}
	log, err := (&logging.Options{Format: "console", Level: o.LogLevel}).Build(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coordbench:", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	res, err := run(ctx, o, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coordbench:", err)
		return 1
	}
	if o.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, "coordbench:", err)
			return 1
		}
	} else {
		res.print(os.Stdout)
	}
	if !res.Invariants.Hold {
		return 2
	}
	return 0
}
