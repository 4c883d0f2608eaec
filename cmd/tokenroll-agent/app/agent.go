// Package app is tokenroll-agent, the node agent a DaemonSet runs on every
// node: it scans the node's projected service-account tokens, reports them
// and acts on the coordinator's requests for its node.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/version"
	"github.com/tokenroll/tokenroll/metrics"
)

// NewCommand builds the tokenroll-agent command.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	opts := newAgentOptions()
	return cli.NewSingle("tokenroll-agent", "Run the node agent (DaemonSet): scan tokens, report, act on requests",
		"The node agent scans every projected service-account token under the kubelet root,\nexports metrics, sets the ServiceAccountTokensStale Node condition, and acts on the\ncoordinator's requests for its node.",
		opts, opts.run, stdout, stderr)
}

// agentOptions configure tokenroll-agent.
type agentOptions struct {
	// NodeName is the Node this agent reports on and acts for.
	NodeName string
	// KubeletRoot is the kubelet's root directory as mounted in the pod.
	KubeletRoot string
	// Kubeconfig is empty in a cluster (the pod's own service account).
	Kubeconfig string
	// Interval is the time between scans.
	Interval time.Duration
	// Grace is how long past its refresh time a token may be before it is
	// overdue (the kubelet rewrites volumes every 60-90 s).
	Grace time.Duration
	// IssuerRefresh is how often OIDC discovery is read again.
	IssuerRefresh time.Duration
	// MetricsBindAddress serves /metrics, /healthz and /readyz.
	MetricsBindAddress string
	// MaxTokenSeries caps the per-token metric series, and
	// MaxTokenSeriesPerNamespace one namespace's share of them (0: no cap
	// of its own).
	MaxTokenSeries, MaxTokenSeriesPerNamespace int
	// Executor carries out requests: systemd (D-Bus) or command.
	Executor string
	// DryRun logs and reports what it would do, and does nothing.
	DryRun bool
	// SystemBus is the host's D-Bus system bus address.
	SystemBus string
	// KubeletUnit is the kubelet's systemd unit.
	KubeletUnit string
	// RebootCommand and KubeletRestartCommand are the command executor's.
	RebootCommand, KubeletRestartCommand []string
	// CommandTimeout bounds each command.
	CommandTimeout time.Duration
	// StateDir keeps the record of requests acted on (a hostPath).
	StateDir string
	// AllowVolatileStateDir accepts a StateDir on tmpfs or ramfs.
	AllowVolatileStateDir bool
	// MaxRequestAge refuses older requests.
	MaxRequestAge time.Duration
	// RebootSentinel is the file whose presence means a reboot is required.
	RebootSentinel string
	// BootIDFile tells the current boot's ID.
	BootIDFile string
}

func newAgentOptions() *agentOptions {
	return &agentOptions{
		NodeName:           os.Getenv("NODE_NAME"),
		KubeletRoot:        "/var/lib/kubelet",
		Interval:           30 * time.Second,
		Grace:              5 * time.Minute,
		IssuerRefresh:      10 * time.Minute,
		MetricsBindAddress: ":8080",
		MaxTokenSeries:     500,
		Executor:           "systemd",
		SystemBus:          actions.DefaultSystemBus,
		KubeletUnit:        actions.KubeletUnit,
		CommandTimeout:     10 * time.Minute,
		StateDir:           "/var/lib/tokenroll",
		MaxRequestAge:      time.Hour,
		RebootSentinel:     actions.DefaultRebootSentinel,
		BootIDFile:         actions.DefaultBootIDFile,

		MaxTokenSeriesPerNamespace: 100,
	}
}

func (o *agentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "Name of the Node this agent runs on (default $NODE_NAME, set from the downward API).")
	fs.StringVar(&o.KubeletRoot, "kubelet-root", o.KubeletRoot, "Kubelet root directory, mounted read-only.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty means the pod's service account.")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "Time between scans of the node's tokens.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long past its refresh time a token may be before it counts as overdue.")
	fs.DurationVar(&o.IssuerRefresh, "issuer-refresh-interval", o.IssuerRefresh, "How often the API server's issuer is read from OIDC discovery.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address serving /metrics, /healthz and /readyz.")
	fs.IntVar(&o.MaxTokenSeries, "max-token-series", o.MaxTokenSeries, "Most per-token metric series exported (only tokens that are not fresh get one).")
	fs.IntVar(&o.MaxTokenSeriesPerNamespace, "max-token-series-per-namespace", o.MaxTokenSeriesPerNamespace, "Most per-token metric series one namespace gets, so one tenant cannot use the whole --max-token-series; 0 for no cap of its own.")
	fs.StringVar(&o.Executor, "executor", o.Executor, "How requests are carried out: systemd (logind and systemd over D-Bus) or command.")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "Log and report what would be done; reboot and restart nothing.")
	fs.StringVar(&o.SystemBus, "system-bus", o.SystemBus, "The host's D-Bus system bus address, mounted into the pod.")
	fs.StringVar(&o.KubeletUnit, "kubelet-unit", o.KubeletUnit, "The kubelet's systemd unit.")
	fs.StringSliceVar(&o.RebootCommand, "reboot-command", o.RebootCommand, "With --executor=command: the command that reboots the host (comma-separated argv).")
	fs.StringSliceVar(&o.KubeletRestartCommand, "kubelet-restart-command", o.KubeletRestartCommand, "With --executor=command: the command that restarts the kubelet (comma-separated argv).")
	fs.DurationVar(&o.CommandTimeout, "command-timeout", o.CommandTimeout, "With --executor=command: how long a command may run.")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "Directory (a hostPath) recording which requests were carried out, so none is carried out twice.")
	fs.BoolVar(&o.AllowVolatileStateDir, "allow-volatile-state-dir", o.AllowVolatileStateDir, "Accept a --state-dir on tmpfs or ramfs, which a reboot empties (test harnesses whose simulated reboots do not); refused otherwise.")
	fs.DurationVar(&o.MaxRequestAge, "max-request-age", o.MaxRequestAge, "Refuse requests older than this.")
	fs.StringVar(&o.RebootSentinel, "reboot-sentinel", o.RebootSentinel, "File whose presence means the node needs a reboot (reported as an annotation); empty disables.")
	fs.StringVar(&o.BootIDFile, "boot-id-file", o.BootIDFile, "File holding the current boot ID.")
}

func (o *agentOptions) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set $NODE_NAME from the downward API: spec.nodeName)"))
	}
	errs = append(errs,
		cli.CheckAbsDir("kubelet-root", o.KubeletRoot),
		cli.CheckFile("kubeconfig", o.Kubeconfig),
		cli.CheckPositive("interval", o.Interval, time.Second),
		cli.CheckPositive("grace", o.Grace, 0),
		cli.CheckPositive("issuer-refresh-interval", o.IssuerRefresh, 10*time.Second),
		cli.CheckAddr("metrics-bind-address", o.MetricsBindAddress))
	errs = append(errs, cli.CheckOneOf("executor", o.Executor, "systemd", "command"),
		cli.CheckPositive("command-timeout", o.CommandTimeout, time.Second),
		cli.CheckPositive("max-request-age", o.MaxRequestAge, time.Minute),
		cli.CheckAbsDir("state-dir", o.StateDir))
	if o.Executor == "command" && len(o.RebootCommand) == 0 && len(o.KubeletRestartCommand) == 0 {
		errs = append(errs, errors.New("--executor=command needs --reboot-command or --kubelet-restart-command"))
	}
	if o.Executor == "systemd" {
		if _, err := actions.NewSystemd(o.SystemBus, o.KubeletUnit); err != nil {
			errs = append(errs, fmt.Errorf("--system-bus/--kubelet-unit: %w", err))
		}
	}
	if o.MaxTokenSeries < 0 {
		errs = append(errs, fmt.Errorf("--max-token-series=%d: must be 0 or more", o.MaxTokenSeries))
	}
	if o.MaxTokenSeriesPerNamespace < 0 {
		errs = append(errs, fmt.Errorf("--max-token-series-per-namespace=%d: must be 0 (no cap of its own) or more", o.MaxTokenSeriesPerNamespace))
	}
	return errors.Join(errs...)
}

func (o *agentOptions) run(ctx context.Context, e cli.Env) error {
	cfg, err := cli.RestConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "tokenroll-agent/" + version.Version
	nodes, discovery, err := nodeclient.New(cfg)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry("agent")
	srv, err := metrics.NewServer(o.MetricsBindAddress, reg, e.Log)
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		NodeName: o.NodeName, KubeletRoot: o.KubeletRoot, Client: nodes, Discovery: discovery,
		Interval: o.Interval, Grace: o.Grace, IssuerRefresh: o.IssuerRefresh,
		MaxTokenSeries: o.MaxTokenSeries, MaxTokenSeriesPerNamespace: o.MaxTokenSeriesPerNamespace, Registry: reg, Log: e.Log.With(zap.String("node", o.NodeName)),
	})
	if err != nil {
		return err
	}
	var exec actions.Executor
	switch {
	case o.DryRun:
		exec = actions.DryRun{Log: e.Log}
	case o.Executor == "command":
		if exec, err = actions.NewCommand(o.RebootCommand, o.KubeletRestartCommand, o.CommandTimeout); err != nil {
			return err
		}
	default:
		if exec, err = actions.NewSystemd(o.SystemBus, o.KubeletUnit); err != nil {
			return err
		}
	}
	handler, err := actions.NewHandler(actions.HandlerConfig{
		NodeName: o.NodeName, Executor: exec, StateDir: o.StateDir, AllowVolatileStateDir: o.AllowVolatileStateDir, BootIDFile: o.BootIDFile, MaxRequestAge: o.MaxRequestAge,
		Reporter: actions.NodeReporter{Client: nodes, NodeName: o.NodeName}, Finished: func(actions.Record) { a.Rescan() }, Registry: reg, Log: e.Log.With(zap.String("node", o.NodeName)),
	})
	if err != nil {
		return err
	}
	watcher, err := actions.NewWatcher(actions.WatcherConfig{Client: nodes, NodeName: o.NodeName, Handler: handler,
		RebootSentinel: o.RebootSentinel, OnNode: a.ObserveNode, Log: e.Log.With(zap.String("node", o.NodeName))})
	if err != nil {
		return err
	}
	e.Log.Info("agent starting", zap.String("node", o.NodeName), zap.String("kubeletRoot", o.KubeletRoot),
		zap.Duration("interval", o.Interval), zap.String("metrics", srv.Addr()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(ctx) }()
	go func() {
		for _, ready := range []<-chan struct{}{a.Scanned(), watcher.Synced()} {
			select {
			case <-ready:
			case <-ctx.Done():
				return
			}
		}
		srv.SetReady(true)
	}()
	watchErr := make(chan error, 1)
	go func() { watchErr <- watcher.Run(ctx) }()
	runErr := a.Run(ctx)
	cancel()
	return errors.Join(runErr, <-watchErr, <-srvErr)
}
