package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
)

type rolloutCommand struct {
	use, short, long string
	opts             runner
}

func rolloutCommands() []rolloutCommand {
	return []rolloutCommand{
		{"plan", "Print which nodes need work, why and by when, without acting", "plan computes what the coordinator would do now: the nodes whose tokens need work (or all\nnodes matching --nodes with --all), the action, the reason and the deadline.", newRolloutPlanOptions()},
		{"start", "Ask the coordinator to run a rollout over the matching nodes", "start records a request the leader turns into a rollout of every node matching --nodes,\nwith --strategy. It refuses while another rollout is active.", newRolloutStartOptions()},
		{"pause", "Pause the current rollout after the nodes in flight", "pause lets the nodes already acting finish, releases nodes cordoned but not yet acted on,\nand starts no new node until resume.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: "pause"}},
		{"resume", "Resume a paused or halted rollout (a halted node is retried)", "resume continues a paused rollout, or a halted one, starting again with the node it halted on.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: "resume"}},
		{"cancel", "Cancel the current rollout after the nodes in flight", "cancel lets the nodes already acting finish, releases the rest and ends the rollout.", &rolloutSteerOptions{clusterOptions: newClusterOptions(), verb: "cancel"}},
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
}

func newRolloutStartOptions() *rolloutStartOptions {
	return &rolloutStartOptions{clusterOptions: newClusterOptions(), Strategy: "kubelet-restart"}
}

func (o *rolloutStartOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs, false)
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation: kubelet-restart, pod-restart or reboot.")
	fs.StringVar(&o.Nodes, "nodes", o.Nodes, "Label selector of the nodes to include (default: every node), e.g. node-role.kubernetes.io/worker=.")
}

func (o *rolloutStartOptions) Validate() error {
	errs := []error{o.validate(), cli.CheckOneOf("strategy", o.Strategy, "kubelet-restart", "pod-restart", "reboot")}
	if _, err := labels.Parse(o.Nodes); err != nil {
		errs = append(errs, fmt.Errorf("--nodes=%q: %w", o.Nodes, err))
	}
	return errors.Join(errs...)
}

func (o *rolloutStartOptions) run(ctx context.Context, e cli.Env) error {
	client, _, err := o.clients()
	if err != nil {
		return err
	}
	store := coordinator.Store{Client: client, Namespace: o.Namespace, FieldManager: "tokenroll-cli"}
	_, err = store.Update(ctx, func(st *coordinator.State) error {
		if r := st.Active(); r != nil {
			return fmt.Errorf("rollout %s is %s; cancel it first (tokenroll rollout cancel)", r.ID, r.Phase)
		}
		if st.Start != nil {
			return fmt.Errorf("a start requested by %s at %s is still waiting for the coordinator; is it running? (tokenroll status)", st.Start.RequestedBy, st.Start.RequestedAt.Format(time.RFC3339))
		}
		st.Start = &coordinator.StartRequest{Strategy: coordinator.Strategy(o.Strategy), Selector: o.Nodes, RequestedAt: time.Now().UTC(), RequestedBy: whoAmI()}
		return nil
	})
	if err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	fmt.Fprintf(e.Stdout, "rollout requested: strategy %s, nodes %q; the coordinator's leader plans it (follow with tokenroll status)\n", o.Strategy, orAll(o.Nodes))
	return nil
}

func orAll(sel string) string {
	if sel == "" {
		return "all"
	}
	return sel
}

// rolloutSteerOptions configure pause, resume and cancel.
type rolloutSteerOptions struct {
	clusterOptions
	verb string
}

func (o *rolloutSteerOptions) AddFlags(fs *pflag.FlagSet) { o.addFlags(fs, false) }
func (o *rolloutSteerOptions) Validate() error            { return o.validate() }

func (o *rolloutSteerOptions) run(ctx context.Context, e cli.Env) error {
	client, _, err := o.clients()
	if err != nil {
		return err
	}
	store := coordinator.Store{Client: client, Namespace: o.Namespace, FieldManager: "tokenroll-cli"}
	var id string
	var from coordinator.Phase
	_, err = store.Update(ctx, func(st *coordinator.State) error {
		r := st.Active()
		if r == nil {
			return errors.New("no rollout is active (tokenroll status)")
		}
		id, from = r.ID, r.Phase
		next, err := steer(o.verb, r.Phase)
		if err != nil {
			return fmt.Errorf("rollout %s: %w", r.ID, err)
		}
		r.Phase, r.UpdatedAt = next, time.Now().UTC()
		if o.verb == "resume" {
			r.Message = "resumed by " + whoAmI() + "; was " + r.HaltReason + " " + r.Message
			r.HaltReason, r.HaltNode = "", ""
		}
		return nil
	})
	if err != nil {
		return &cli.ExitError{Code: cli.ExitFailure, Err: err}
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %s (was %s)\n", id, o.verb, from)
	return nil
}

func steer(verb string, p coordinator.Phase) (coordinator.Phase, error) {
	switch {
	case verb == "pause" && p == coordinator.PhaseRunning:
		return coordinator.PhasePaused, nil
	case verb == "resume" && (p == coordinator.PhasePaused || p == coordinator.PhaseHalted):
		return coordinator.PhaseRunning, nil
	case verb == "cancel" && p != coordinator.PhaseCancelled:
		return coordinator.PhaseCancelled, nil
	}
	return p, fmt.Errorf("cannot %s a rollout that is %s", verb, p)
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
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation the plan uses: kubelet-restart, pod-restart or reboot.")
	fs.DurationVar(&o.TrustMargin, "trust-margin", o.TrustMargin, "As the coordinator's --trust-margin.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
}

func (o *rolloutPlanOptions) Validate() error {
	return errors.Join(o.validate(), cli.CheckOneOf("strategy", o.Strategy, "kubelet-restart", "pod-restart", "reboot"),
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
	in := coordinator.PlanInput{Now: now, Issuer: iss, Gate: gate, Strategy: coordinator.Strategy(o.Strategy), Margin: o.TrustMargin}
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
	fmt.Fprintf(e.Stdout, "%d of %d nodes need work (%s)\n\n", len(p.Nodes), len(list.Items), o.Strategy)
	tw := tabwriter.NewWriter(e.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tACTION\tDEADLINE\tWHY")
	for _, n := range p.Nodes {
		deadline := "now"
		if !n.Deadline.IsZero() {
			deadline = fmt.Sprintf("%s (in %s)", n.Deadline.Format(time.RFC3339), n.Deadline.Sub(now).Round(time.Minute))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Action, deadline, n.Reason)
	}
	for _, n := range p.Skipped {
		fmt.Fprintf(tw, "%s\t-\t-\tleft alone: %s\n", n.Name, n.Reason)
	}
	for _, n := range p.Waiting {
		fmt.Fprintf(tw, "%s\t?\t-\twaiting for its agent to report under %s\n", n, iss)
	}
	return tw.Flush()
}
