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
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/version"
	"github.com/tokenroll/tokenroll/metrics"
	"github.com/tokenroll/tokenroll/protocol"
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
	// IssuerRefresh is how often OIDC discovery is read again while the
	// coordinator publishes no issuer.
	IssuerRefresh time.Duration
	// CoordinatorNamespace is where the coordinator's leader publishes the
	// issuer (ConfigMap protocol.IssuerConfigMapName); empty: OIDC
	// discovery alone.
	CoordinatorNamespace string
	// MetricsBindAddress serves /metrics, /healthz and /readyz.
	MetricsBindAddress string
	// Profiling also serves /debug/pprof/ on MetricsBindAddress.
	Profiling bool
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
	// Run selects the parts this process runs (runScan, runAct): both in one
	// process, or each in a container with only the privileges it needs.
	Run []string
}

// The parts of the agent --run selects.
const (
	// runScan reads every pod's token (root with CAP_DAC_READ_SEARCH) and
	// writes the tokens report, the condition and reboot-required.
	runScan = "scan"
	// runAct carries out the Node's request over D-Bus and writes its
	// status: it needs the bus and the state directory, no pod's files.
	runAct = "act"
)

func newAgentOptions() *agentOptions {
	return &agentOptions{
		NodeName:             os.Getenv("NODE_NAME"),
		KubeletRoot:          "/var/lib/kubelet",
		Interval:             30 * time.Second,
		Grace:                5 * time.Minute,
		IssuerRefresh:        10 * time.Minute,
		CoordinatorNamespace: os.Getenv("POD_NAMESPACE"),
		MetricsBindAddress:   ":8080",
		MaxTokenSeries:       500,
		Executor:             "systemd",
		SystemBus:            actions.DefaultSystemBus,
		KubeletUnit:          actions.KubeletUnit,
		CommandTimeout:       10 * time.Minute,
		StateDir:             "/var/lib/tokenroll",
		MaxRequestAge:        time.Hour,
		RebootSentinel:       actions.DefaultRebootSentinel,
		BootIDFile:           actions.DefaultBootIDFile,
		Run:                  []string{runScan, runAct},

		MaxTokenSeriesPerNamespace: 100,
	}
}

// runs reports whether --run selected part.
func (o *agentOptions) runs(part string) bool { return slices.Contains(o.Run, part) }

func (o *agentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "Name of the Node this agent runs on (default $NODE_NAME, set from the downward API).")
	fs.StringVar(&o.KubeletRoot, "kubelet-root", o.KubeletRoot, "Kubelet root directory, mounted read-only.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty means the pod's service account.")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "Time between scans of the node's tokens.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long past its refresh time a token may be before it counts as overdue.")
	fs.DurationVar(&o.IssuerRefresh, "issuer-refresh-interval", o.IssuerRefresh, "How often the API server's issuer is read from OIDC discovery while the coordinator publishes none (see --coordinator-namespace).")
	fs.StringVar(&o.CoordinatorNamespace, "coordinator-namespace", o.CoordinatorNamespace, "Namespace whose ConfigMap "+protocol.IssuerConfigMapName+" the coordinator publishes the issuer in: the agent watches it and reads OIDC discovery on a timer only while it holds no valid issuer. Empty: OIDC discovery alone (default $POD_NAMESPACE, set from the downward API).")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address serving /metrics, /healthz and /readyz.")
	fs.BoolVar(&o.Profiling, "profiling", o.Profiling, "Serve Go's net/http/pprof profiles under /debug/pprof/ on --metrics-bind-address. They show stack traces and the command line (no token contents) to whoever reaches that port.")
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
	fs.StringSliceVar(&o.Run, "run", o.Run, "Parts of the agent this process runs: scan (read every pod's token; report, condition, reboot-required), act (carry out the Node's request), or both (comma-separated). The DaemonSet runs each in a container of its own, with only the privileges it needs.")
}

func (o *agentOptions) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set $NODE_NAME from the downward API: spec.nodeName)"))
	}
	errs = append(errs, o.validateRun(),
		cli.CheckFile("kubeconfig", o.Kubeconfig),
		cli.CheckAddr("metrics-bind-address", o.MetricsBindAddress))
	// Each part checks only its own flags: the other part's paths are not
	// mounted in its container.
	if o.runs(runScan) {
		errs = append(errs,
			cli.CheckAbsDir("kubelet-root", o.KubeletRoot),
			cli.CheckPositive("interval", o.Interval, time.Second),
			cli.CheckPositive("grace", o.Grace, 0),
			cli.CheckPositive("issuer-refresh-interval", o.IssuerRefresh, 10*time.Second))
		if o.CoordinatorNamespace != "" {
			for _, msg := range validation.IsDNS1123Label(o.CoordinatorNamespace) {
				errs = append(errs, fmt.Errorf("--coordinator-namespace=%q: %s", o.CoordinatorNamespace, msg))
			}
		}
	}
	if o.runs(runAct) {
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
	}
	if o.MaxTokenSeries < 0 {
		errs = append(errs, fmt.Errorf("--max-token-series=%d: must be 0 or more", o.MaxTokenSeries))
	}
	if o.MaxTokenSeriesPerNamespace < 0 {
		errs = append(errs, fmt.Errorf("--max-token-series-per-namespace=%d: must be 0 (no cap of its own) or more", o.MaxTokenSeriesPerNamespace))
	}
	return errors.Join(errs...)
}

// validateRun checks --run: known parts, at least one, none twice.
func (o *agentOptions) validateRun() error {
	var errs []error
	seen := map[string]bool{}
	for _, part := range o.Run {
		switch {
		case part != runScan && part != runAct:
			errs = append(errs, fmt.Errorf("--run=%s: unknown part %q; want %s, %s or %s,%s", strings.Join(o.Run, ","), part, runScan, runAct, runScan, runAct))
		case seen[part]:
			errs = append(errs, fmt.Errorf("--run=%s: %q given twice", strings.Join(o.Run, ","), part))
		}
		seen[part] = true
	}
	if len(o.Run) == 0 {
		errs = append(errs, fmt.Errorf("--run is empty; want %s, %s or %s,%s", runScan, runAct, runScan, runAct))
	}
	return errors.Join(errs...)
}

func (o *agentOptions) run(ctx context.Context, e cli.Env) error {
	cfg, err := cli.ComponentRestConfig(o.Kubeconfig, "tokenroll-agent/"+version.Version)
	if err != nil {
		return err
	}
	direct, discovery, err := nodeclient.New(cfg)
	if err != nil {
		return err
	}
	nodes := nodeclient.Retrying{Nodes: direct, Policy: apiretry.Default()}
	reg := metrics.NewRegistry("agent")
	srv, err := metrics.NewServer(o.MetricsBindAddress, reg, e.Log)
	if err != nil {
		return err
	}
	if o.Profiling {
		srv.EnableProfiling()
	}
	log := e.Log.With(zap.String("node", o.NodeName))
	var a *agent.Agent
	if o.runs(runScan) {
		var published nodeclient.ConfigMaps
		if o.CoordinatorNamespace != "" {
			if published, err = nodeclient.NewConfigMaps(discovery, o.CoordinatorNamespace); err != nil {
				return err
			}
		}
		if a, err = agent.New(agent.Config{
			NodeName: o.NodeName, KubeletRoot: o.KubeletRoot, Client: nodes, Discovery: discovery,
			Published: published, PublishedNamespace: o.CoordinatorNamespace,
			Interval: o.Interval, Grace: o.Grace, IssuerRefresh: o.IssuerRefresh,
			MaxTokenSeries: o.MaxTokenSeries, MaxTokenSeriesPerNamespace: o.MaxTokenSeriesPerNamespace, Registry: reg, Log: log,
		}); err != nil {
			return err
		}
	}
	var handler *actions.Handler
	if o.runs(runAct) {
		if handler, err = o.newHandler(nodes, a, reg, log); err != nil {
			return err
		}
	}
	// reboot-required is the scanner's to report: it is a host file, and the
	// executor's container sees nothing of the host but the bus and its state.
	sentinel := ""
	if a != nil {
		sentinel = o.RebootSentinel
	}
	var onNode func(*corev1.Node)
	if a != nil {
		onNode = a.ObserveNode
	}
	var watcher *actions.Watcher
	if handler != nil || sentinel != "" {
		if watcher, err = actions.NewWatcher(actions.WatcherConfig{Client: nodes, NodeName: o.NodeName, Handler: handler,
			RebootSentinel: sentinel, OnNode: onNode, Log: log}); err != nil {
			return err
		}
	}
	e.Log.Info("agent starting", zap.String("node", o.NodeName), zap.Strings("run", o.Run), zap.String("kubeletRoot", o.KubeletRoot),
		zap.Duration("interval", o.Interval), zap.String("metrics", srv.Addr()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ready []<-chan struct{}
	var parts []func(context.Context) error
	if a != nil {
		ready, parts = append(ready, a.Scanned()), append(parts, a.Run)
	}
	if watcher != nil {
		ready, parts = append(ready, watcher.Synced()), append(parts, watcher.Run)
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(ctx) }()
	go func() {
		for _, r := range ready {
			select {
			case <-r:
			case <-ctx.Done():
				return
			}
		}
		srv.SetReady(true)
	}()
	// A part that ends stops the others: the container restarts whole
	// rather than run half an agent.
	partErr := make(chan error, len(parts))
	for _, part := range parts {
		go func() {
			err := part(ctx)
			cancel()
			partErr <- err
		}()
	}
	errs := []error{}
	for range parts {
		errs = append(errs, <-partErr)
	}
	return errors.Join(append(errs, <-srvErr)...)
}

// newHandler builds what carries out the Node's requests. With the scanner
// in the same process, a finished request makes it scan at once; alone,
// the scanner's next periodic scan reports the effect.
func (o *agentOptions) newHandler(nodes nodeclient.Nodes, a *agent.Agent, reg prometheus.Registerer, log *zap.Logger) (*actions.Handler, error) {
	var exec actions.Executor
	var err error
	switch {
	case o.DryRun:
		exec = actions.DryRun{Log: log}
	case o.Executor == "command":
		if exec, err = actions.NewCommand(o.RebootCommand, o.KubeletRestartCommand, o.CommandTimeout); err != nil {
			return nil, err
		}
	default:
		if exec, err = actions.NewSystemd(o.SystemBus, o.KubeletUnit); err != nil {
			return nil, err
		}
	}
	var finished func(actions.Record)
	if a != nil {
		finished = func(actions.Record) { a.Rescan() }
	}
	handler, err := actions.NewHandler(actions.HandlerConfig{
		NodeName: o.NodeName, Executor: exec, StateDir: o.StateDir, AllowVolatileStateDir: o.AllowVolatileStateDir, BootIDFile: o.BootIDFile, MaxRequestAge: o.MaxRequestAge,
		Reporter: actions.NodeReporter{Client: nodes, NodeName: o.NodeName}, Finished: finished, Registry: reg, Log: log,
	})
	if err != nil {
		return nil, err
	}
	// Found now, not when the first request cannot be recorded: the
	// executor runs as a dedicated uid, and a state directory the host made
	// for root is the likely mistake.
	probe, err := os.CreateTemp(o.StateDir, ".write-check-*")
	if err != nil {
		return nil, fmt.Errorf("the executor (uid %d) cannot write --state-dir=%s: %w; make the directory writable by this uid (deploy/polkit/tokenroll-agent.tmpfiles.conf creates it owned by uid 64302)", os.Getuid(), o.StateDir, err)
	}
	probe.Close()
	return handler, os.Remove(probe.Name())
}
