package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

type rolloutCommand struct {
	use, short, long string
	opts             runner
}

func rolloutCommands() []rolloutCommand {
	return []rolloutCommand{
		{"plan", "Print which nodes need work, why and by when, without acting", "plan computes what the coordinator would do now: the nodes whose tokens need work (or all\nnodes matching --nodes with --all), the action, the reason and the deadline.", newRolloutPlanOptions()},
		{"start", "Ask the coordinator to run a rollout over the matching nodes", "start records a request the leader turns into a rollout of every node matching --nodes,\nwith --strategy. It refuses while another rollout is active.", newRolloutStartOptions()},
		{"pause", "Pause the current rollout after the nodes in flight", "pause asks the coordinator's leader to let the nodes already acting finish, release nodes\ncordoned but not yet acted on, and start no new node until resume.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: coordinator.VerbPause}},
		{"resume", "Resume a paused or halted rollout (a halted node is retried)", "resume asks the coordinator's leader to continue a paused rollout, or a halted one, starting\nagain with the node it halted on.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: coordinator.VerbResume}},
		{"cancel", "Cancel the current rollout after the nodes in flight", "cancel asks the coordinator's leader to let the nodes already acting finish, release the\nrest and end the rollout.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: coordinator.VerbCancel}},
		{"retry NODE...", "Retry nodes left unresolved (or halted): forget their record so they are planned again", "retry asks the coordinator's leader to forget its record of each node named: a node left\nunresolved (its tokens still stale after its action) is otherwise not planned again until its\nstale tokens change. A node in progress is not touched.", &rolloutRetryOptions{clusterOptions: newClusterOptions()}},
	}
}

func whoAmI() string {
	if u, err := user.Current(); err == nil {
		host, _ := os.Hostname()
		return u.Username + "@" + host
	}
	return ""
}

// rolloutStartOptions configure `tokenroll rollout start`.
type rolloutStartOptions struct {
	clusterOptions
	Strategy string
	// Nodes is a label selector; empty means every node.
	Nodes string
	// Policy names the RolloutPolicy every node of the rollout follows.
	Policy string
	// DryRun asks for a plan of what would be done to each node, doing
	// nothing.
	DryRun bool
}

func newRolloutStartOptions() *rolloutStartOptions {
	return &rolloutStartOptions{clusterOptions: newClusterOptions(), Strategy: "kubelet-restart"}
}

func (o *rolloutStartOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs, false)
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation: "+strings.Join(coordinator.StrategyNames(), ", ")+".")
	fs.StringVar(&o.Nodes, "nodes", o.Nodes, "Label selector of the nodes to include (default: every node), e.g. node-role.kubernetes.io/worker=.")
	fs.StringVar(&o.Policy, "policy", o.Policy, "RolloutPolicy every node of the rollout follows (its windows, budgets, strategy, drain), instead of the one each node's labels select (default: by selector). It must exist.")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "Record what would be done to each node, and do nothing (the result is in tokenroll status).")
}

func (o *rolloutStartOptions) Validate() error {
	errs := []error{o.validate(), cli.CheckOneOf("strategy", o.Strategy, coordinator.StrategyNames()...)}
	if _, err := labels.Parse(o.Nodes); err != nil {
		errs = append(errs, fmt.Errorf("--nodes=%q: %w", o.Nodes, err))
	}
	return errors.Join(errs...)
}

func (o *rolloutStartOptions) run(ctx context.Context, e cli.Env) error {
	api, err := o.apiClient()
	if err != nil {
		return err
	}
	name, err := coordinator.RequestStart(ctx, api, coordinator.StartSpec{Strategy: protocol.Strategy(o.Strategy), Nodes: o.Nodes, Policy: o.Policy, DryRun: o.DryRun, By: whoAmI()}, time.Now().UTC())
	if err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	what := "rollout"
	if o.DryRun {
		what = "dry run"
	}
	policy := ""
	if o.Policy != "" {
		policy = ", policy " + o.Policy
	}
	fmt.Fprintf(e.Stdout, "%s requested: TokenRollout %s, strategy %s, nodes %q%s; the coordinator's leader plans it (follow with tokenroll status, or kubectl wait --for=condition=Complete tokenrollout/%s)\n", what, name, o.Strategy, orAll(o.Nodes), policy, name)
	return nil
}

// rolloutRetryOptions configure `tokenroll rollout retry NODE...`: the
// command records the request, and the coordinator's leader applies it.
type rolloutRetryOptions struct {
	clusterOptions
	// Nodes are the nodes named on the command line.
	Nodes []string
}

func (o *rolloutRetryOptions) AddFlags(fs *pflag.FlagSet) { o.addFlags(fs, false) }

// SetArgs takes the node names.
func (o *rolloutRetryOptions) SetArgs(args []string) { o.Nodes = args }

func (o *rolloutRetryOptions) Validate() error {
	errs := []error{o.validate()}
	if len(o.Nodes) == 0 {
		errs = append(errs, errors.New("name at least one node to retry"))
	}
	for _, n := range o.Nodes {
		for _, msg := range validation.IsDNS1123Subdomain(n) {
			errs = append(errs, fmt.Errorf("node %q: %s", n, msg))
		}
	}
	return errors.Join(errs...)
}

func (o *rolloutRetryOptions) run(ctx context.Context, e cli.Env) error {
	api, err := o.apiClient()
	if err != nil {
		return err
	}
	if err := coordinator.RequestRetry(ctx, api, o.Nodes, whoAmI(), time.Now().UTC()); err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	fmt.Fprintf(e.Stdout, "retry requested for %s; the coordinator's leader applies it (follow with tokenroll status)\n", strings.Join(o.Nodes, ", "))
	return nil
}

func orAll(sel string) string {
	if sel == "" {
		return "all"
	}
	return sel
}

// rolloutSteerOptions configure pause, resume and cancel: the command
// records the request, and the coordinator's leader applies it.
type rolloutSteerOptions struct {
	clusterOptions
	verb coordinator.Verb
}

func (o *rolloutSteerOptions) AddFlags(fs *pflag.FlagSet) { o.addFlags(fs, false) }
func (o *rolloutSteerOptions) Validate() error            { return o.validate() }

func (o *rolloutSteerOptions) run(ctx context.Context, e cli.Env) error {
	api, err := o.apiClient()
	if err != nil {
		return err
	}
	id, from, err := coordinator.RequestSteer(ctx, api, o.verb, whoAmI(), time.Now().UTC())
	if err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %s requested (it is %s); the coordinator's leader applies it (follow with tokenroll status)\n", id, o.verb, from)
	return nil
}

// rolloutPlanOptions configure `tokenroll rollout plan`.
type rolloutPlanOptions struct {
	clusterOptions
	Strategy    string
	TrustMargin time.Duration
	Output      string
}

func newRolloutPlanOptions() *rolloutPlanOptions {
	return &rolloutPlanOptions{clusterOptions: newClusterOptions(), Strategy: "kubelet-restart", TrustMargin: time.Hour, Output: "table"}
}

func (o *rolloutPlanOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs, true)
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation the plan uses: "+strings.Join(coordinator.StrategyNames(), ", ")+".")
	fs.DurationVar(&o.TrustMargin, "trust-margin", o.TrustMargin, "As the coordinator's --trust-margin.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
}

func (o *rolloutPlanOptions) Validate() error {
	return errors.Join(o.validate(), cli.CheckOneOf("strategy", o.Strategy, coordinator.StrategyNames()...),
		cli.CheckPositive("trust-margin", o.TrustMargin, 0), cli.CheckOneOf("output", o.Output, "table", "json"))
}

func (o *rolloutPlanOptions) run(ctx context.Context, e cli.Env) error {
	client, dyn, err := o.clients()
	if err != nil {
		return err
	}
	gate, iss, err := o.gateAndIssuer(ctx, client, dyn)
	if err != nil {
		return err
	}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	now := time.Now().UTC()
	in := coordinator.PlanInput{Now: now, Issuer: iss, Gate: gate, Strategy: protocol.Strategy(o.Strategy), Margin: o.TrustMargin}
	for i := range list.Items {
		in.Nodes = append(in.Nodes, &list.Items[i])
	}
	p := coordinator.MakePlan(in)
	if o.Output == "json" {
		enc := json.NewEncoder(e.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(p)
	}
	gateWord := "open"
	if !gate.Open {
		gateWord = "CLOSED: nothing would start until it opens"
	}
	fmt.Fprintf(e.Stdout, "issuer %s; gate %s (%s)\n", iss, gateWord, gate.Message)
	fmt.Fprintf(e.Stdout, "%d of %s needing work (%s)\n\n", len(p.Nodes), plural.Count(len(list.Items), "node"), o.Strategy)
	tw := tabwriter.NewWriter(e.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tACTION\tDEADLINE\tWHY")
	for _, n := range p.Nodes {
		deadline := "now"
		if !n.Deadline.IsZero() {
			deadline = fmt.Sprintf("%s (in %s)", n.Deadline.Format(time.RFC3339), n.Deadline.Sub(now).Round(time.Minute))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Strategy, deadline, n.Reason)
	}
	for _, n := range p.Skipped {
		fmt.Fprintf(tw, "%s\t-\t-\tleft alone: %s\n", n.Name, n.Reason)
	}
	for _, n := range p.Waiting {
		fmt.Fprintf(tw, "%s\t?\t-\twaiting for its agent to report under %s\n", n, iss)
	}
	return tw.Flush()
}
