// Package app is tokenroll-sandbox: a local cluster that runs the
// OpenShift documentation's procedure for changing the service-account
// issuer end to end with the real tokenroll-agent and tokenroll-coordinator,
// and the hidden `node` commands its agents run to reboot a simulated node
// or restart its kubelet.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/sandbox"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

// DefaultNewIssuer is the issuer the sandbox's scenario changes to, the
// one the OpenShift documentation's example uses.
const DefaultNewIssuer = "https://test.default.svc"

// sandboxOptions configure tokenroll-sandbox.
type sandboxOptions struct {
	sandbox.Options
	// flags tells Validate which flags were given.
	flags *pflag.FlagSet
}

func newSandboxOptions() *sandboxOptions {
	return &sandboxOptions{Options: sandbox.Options{
		Nodes: 5, APIServers: 3, Issuer: controlplane.DefaultIssuer, NewIssuer: DefaultNewIssuer,
		Strategy: "auto", MaxUnavailable: "1", RebootDowntime: 5 * time.Second, Timeout: 10 * time.Minute,
		Kubelet: sandbox.KubeletReal, Apps: []string{string(sandbox.AppReloading), string(sandbox.AppCaching)},
		PrometheusRules: sandbox.DefaultPrometheusRules, CompareParallel: 1, RefreshBeforeChange: true,
	}}
}

func (o *sandboxOptions) AddFlags(fs *pflag.FlagSet) {
	o.flags = fs
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "Directory holding etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and with --kubelet real hollow-kubelet and fake-runtime (default: what make controlplane, make controllers and make kubelet built, or $"+controlplane.BinDirEnv+").")
	fs.StringVar(&o.ProgramDir, "tokenroll-bin-dir", o.ProgramDir, "Directory holding "+programs.Agent+", "+programs.Coordinator+" and "+programs.Sandbox+" (default: $"+programs.DirEnv+", else this program's directory, where make build puts them all).")
	fs.StringVar(&o.Dir, "dir", o.Dir, "Directory for the sandbox's certificates, data, node roots, kubeconfigs and logs; kept afterwards (default: a temporary directory, removed unless the scenario fails).")
	fs.IntVar(&o.Nodes, "nodes", o.Nodes, "Number of worker nodes, each with a real agent process.")
	fs.StringVar(&o.Kubelet, "kubelet", o.Kubelet, "What runs each worker node: sim (kubeletsim, in the sandbox's process; light, for many nodes) or real (the kubelet code of Kubernetes "+controlplane.KubernetesVersion+" as a hollow-kubelet process over a fake-runtime process, built by `make kubelet`).")
	fs.IntVar(&o.APIServers, "apiservers", o.APIServers, "Number of kube-apiservers (control-plane nodes master-0...) sharing one etcd.")
	fs.StringVar(&o.Issuer, "issuer", o.Issuer, "Service-account issuer the control plane starts with.")
	fs.StringVar(&o.NewIssuer, "new-issuer", o.NewIssuer, "Issuer the scenario sets in Authentication/cluster .spec.serviceAccountIssuer.")
	fs.DurationVar(&o.TrustWindow, "trust-window", o.TrustWindow, "How long the simulated operator keeps the old issuer trusted: 0 drops it at once (the documentation's warning case: every node needs work); 24h is OpenShift's default (little or nothing to do).")
	fs.BoolVar(&o.RefreshBeforeChange, "refresh-before-change", o.RefreshBeforeChange, "Before the issuer changes, have every node's kubelet refresh its tokens under the current issuer (a kubelet restart stands in for the kubelet's own refresh at 80% of a token's lifetime, which a cluster's pods are past long before an issuer changes), and wait until the coordinator reports the pods whose apps keep presenting the token they read (app-stale); the same for every remediation with --compare. false: the issuer changes while every app presents the token in its file, and a caching app shows only by failing.")
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "The coordinators' remediation: auto (the default, here as in the coordinator: a kubelet restart per node, then only the caching apps' pods evicted, from the audit events), pod-restart (every pod holding an old-issuer token evicted), kubelet-restart (every token file fresh, but apps that cached their token keep failing, and the run ends not OK naming them), or reboot (the documentation's rolling reboot); "+sandbox.DeleteAllPods+" is the documentation's other option: once the gate opens, the sandbox, as the administrator, deletes every pod in every namespace without draining, and the coordinators only watch.")
	fs.StringVar(&o.MaxUnavailable, "max-unavailable", o.MaxUnavailable, "The coordinators' --max-unavailable: nodes disrupted at once, a number or a percentage.")
	fs.DurationVar(&o.RebootDowntime, "reboot-downtime", o.RebootDowntime, "How long a simulated reboot keeps a node down.")
	fs.StringSliceVar(&o.Apps, "apps", o.Apps, "Kinds of app the pods run, each calling the API server every 1-2 s with its pod's token from its pod's IP: reloading (build/nginx and apps/web: read the token again every minute and after a 401, as client-go does), caching (apps/legacy: read it once when the container starts); comma-separated, or none. The run is OK only if no app still fails at the end.")
	fs.BoolVar(&o.Chaos, "chaos", o.Chaos, "Kill (SIGKILL) the coordinator leader and random agents during the rollout; each starts again a second later.")
	fs.BoolVar(&o.Faults, "faults", o.Faults, "Put a fault proxy between the control plane and the coordinators and each agent: a share of their writes meet 500s and 429s, and one loses its answer.")
	fs.BoolVar(&o.Keep, "keep", o.Keep, "Keep everything running after the scenario, until Ctrl-C.")
	fs.BoolVar(&o.Once, "once", o.Once, "Stop as soon as everything is up and every agent has reported, without changing the issuer (smoke tests).")
	fs.BoolVar(&o.Prometheus, "prometheus", o.Prometheus, fmt.Sprintf("Run the real Prometheus server on loopback, scraping every agent and coordinator and evaluating --prometheus-rules with each alert's for: %d times shorter (everything else as shipped); print alerts as they fire and resolve, and list them in the summary.", sandbox.ForDivisor))
	fs.StringVar(&o.PrometheusBin, "prometheus-bin", o.PrometheusBin, "The prometheus binary for --prometheus (default: $"+sandbox.PrometheusBinEnv+", which make sandbox sets to what `make deploy-tools` built from the pin promtool uses).")
	fs.StringVar(&o.PrometheusRules, "prometheus-rules", o.PrometheusRules, "The alert rule file --prometheus loads, the one the Helm chart and the kustomize component ship (relative to the repository's top directory by default).")
	fs.StringVar(&o.SummaryJSON, "summary-json", o.SummaryJSON, "Write the outcome as JSON to this file (with --compare: {\"runs\": [...]}, one summary per run).")
	fs.BoolVar(&o.Compare, "compare", o.Compare, "Run the same scenario once per remediation ("+strings.Join(sandbox.Remediations(), ", ")+"), each on a fresh cluster with the other flags as given, and print one table comparing the pods restarted, node reboots, node-seconds out of service, the apps' errors and the time from the gate opening to done.")
	fs.IntVar(&o.CompareParallel, "compare-parallel", o.CompareParallel, "With --compare: how many runs go at once, each on a cluster of its own (0 or 1: one after another). Overlapping runs share the machine: their times are not a lone run's. Each run's output is printed whole, in order.")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "Longest the scenario may take from the issuer change to every token fresh.")
}

func (o *sandboxOptions) Validate() error {
	err := o.Options.Validate()
	if o.Compare && o.flags != nil && o.flags.Changed("strategy") {
		err = errors.Join(err, errors.New("--compare runs every remediation; drop --strategy"))
	}
	return err
}

func (o *sandboxOptions) run(ctx context.Context, e cli.Env) error {
	var err error
	if o.Compare {
		_, err = sandbox.Compare(ctx, o.Options, e.Stdout)
	} else {
		_, err = sandbox.Run(ctx, o.Options, e.Stdout)
	}
	if err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	return nil
}

// sandboxNodeOptions configure the hidden `tokenroll-sandbox node ACTION`,
// which the sandbox's agents run as their --reboot-command and
// --kubelet-restart-command.
type sandboxNodeOptions struct {
	// Action is kubeletsim.ActionReboot or kubeletsim.ActionRestartKubelet.
	Action string
	// Root is the simulated node's root directory (its control socket is
	// there).
	Root string
	// Down is how long a reboot keeps the node down (0: the node's default).
	Down time.Duration
}

func (o *sandboxNodeOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Root, "root", o.Root, "Root directory of the simulated node (its kubelet root).")
	if o.Action == kubeletsim.ActionReboot {
		fs.DurationVar(&o.Down, "down", o.Down, fmt.Sprintf("How long the node stays down (0: %s).", kubeletsim.DefaultRebootDowntime))
	}
}

func (o *sandboxNodeOptions) Validate() error {
	var errs []error
	if o.Root == "" {
		errs = append(errs, errors.New("--root is required: the simulated node's root directory (the sandbox prints it)"))
	}
	if o.Down < 0 {
		errs = append(errs, fmt.Errorf("--down=%s: must not be negative", o.Down))
	}
	return errors.Join(errs...)
}

func (o *sandboxNodeOptions) run(ctx context.Context, e cli.Env) error {
	if err := kubeletsim.Control(ctx, o.Root, o.Action, o.Down); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "%s: %s done\n", o.Root, o.Action)
	return nil
}

// NewCommand builds tokenroll-sandbox and its hidden node commands.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	p := cli.NewProgram("tokenroll-sandbox", "Run the OpenShift documentation's issuer change end to end on a local cluster",
		`tokenroll-sandbox starts a real etcd, kube-apiservers, kube-controller-manager
and kube-scheduler (built by `+"`make controlplane` and `make controllers`"+`)
on loopback with the OpenShift resources and a simulated kube-apiserver
operator, worker nodes running ReplicaSets whose pods hold projected tokens, one real tokenroll-agent process per node and two tokenroll-coordinator
replicas, with the flags they have in a cluster. It then walks the OpenShift
documentation's procedure for changing the service-account issuer: it changes
Authentication/cluster .spec.serviceAccountIssuer, the operator rolls the new
revision over the API servers while the coordinator waits at the gate, and the
coordinator remediates node by node with --strategy until every token on every
node is fresh under the new issuer, while each pod's app calls the API server
with its token (--apps). It prints each change as it happens, and a summary;
--summary-json writes it. The exit status is 0 only when every invariant
held, every token is fresh and every app authenticates at the end.

It runs the binaries in --tokenroll-bin-dir: make build puts all of them in bin/.`,
		stdout, stderr)
	root := p.Root()
	sb := newSandboxOptions()
	p.Runs(root, sb, sb.run)
	node := p.Group(root, "node", "Act on a simulated node of a running sandbox", "", true)
	reboot := &sandboxNodeOptions{Action: kubeletsim.ActionReboot}
	p.Add(node, kubeletsim.ActionReboot, "Reboot a simulated node (the agents' --reboot-command in the sandbox)",
		"reboot asks the simulated node rooted at --root to go down for --down and come back with a new boot ID.",
		reboot, reboot.run)
	restart := &sandboxNodeOptions{Action: kubeletsim.ActionRestartKubelet}
	p.Add(node, kubeletsim.ActionRestartKubelet, "Restart a simulated node's kubelet (the agents' --kubelet-restart-command in the sandbox)",
		"restart-kubelet asks the simulated node rooted at --root to restart its kubelet: its token cache is emptied and every projected token requested again.",
		restart, restart.run)
	return root
}
