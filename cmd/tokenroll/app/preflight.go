package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/protocol"
)

// exitCouldNotCheck is preflight's status when it could not read what it
// judges: apart from 1, so a pipeline can tell "something would break"
// from "nothing was checked".
const exitCouldNotCheck = 3

const preflightLong = `preflight reads, and changes nothing: before you change the service-account issuer (or
in a pipeline), it says which workloads would break now and how long tokenroll's rollout
would take under the coordinator's policy (give the coordinator's --strategy,
--max-unavailable, --settle and --gate-settle when they are not the defaults).

It checks: the revision gate; an audit source (app detection's status, ConfigMap
tokenroll-apps); app-stale and app-failing pods, by namespace and workload; tokens the
kubelet is not refreshing (expired, overdue) and tokens of issuers the API servers do not
trust, from the agents' reports on the Nodes; nodes without a reporting agent; and whether
the rollout fits the trust window, when the gate reports a trusted issuer with a deadline
(or --trust-window says how long the old issuer will stay trusted after a change now).

The rollout estimated is the one in progress (its nodes not finished), else, during an
issuer change, the plan the coordinator would make now, else the plan it would make after
an issuer change now (every node whose agent reports tokens). The time per node is the
median measured in the last rollout the state records, for the same strategy; else a stated
default (kubelet-restart 1m, pod-restart 5m, reboot 10m); --per-node overrides both. The
output says which was used.

Exit status:
  0  nothing would break
  1  something would break: a check failed (the CHECK table, or "checks" in -o json)
  2  bad flags or arguments
  3  the cluster could not be read: nothing was checked`

// preflightOptions configure `tokenroll preflight`.
type preflightOptions struct {
	clusterOptions
	// Strategy, MaxUnavailable, MaxKubeletRestarts, Settle, GateSettle and
	// TrustMargin are the coordinator's policy, as its flags of the same
	// names.
	Strategy                        string
	MaxUnavailable                  string
	MaxKubeletRestarts              string
	Settle, GateSettle, TrustMargin time.Duration
	// TrustWindow is how long the old issuer stays trusted after a change
	// made now (0: not at all, or not known).
	TrustWindow time.Duration
	// PerNode, when positive, is the time one node takes, instead of the
	// measured or default one.
	PerNode time.Duration
	// Output is table or json.
	Output string
}

func newPreflightOptions() *preflightOptions {
	return &preflightOptions{clusterOptions: newClusterOptions(), Strategy: string(coordinator.Auto), MaxUnavailable: "1",
		MaxKubeletRestarts: coordinator.DefaultMaxKubeletRestarts.String(), GateSettle: 2 * time.Minute, TrustMargin: time.Hour, Output: "table"}
}

func (o *preflightOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs, true)
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "The coordinator's --strategy: "+strings.Join(coordinator.StrategyNames(), ", ")+".")
	fs.StringVar(&o.MaxUnavailable, "max-unavailable", o.MaxUnavailable, "The coordinator's --max-unavailable: a number of nodes or a percentage.")
	fs.StringVar(&o.MaxKubeletRestarts, "max-kubelet-restarts", o.MaxKubeletRestarts, "The coordinator's --max-kubelet-restarts: how many kubelets auto restarts at once without a cordon, after a first one, once the old issuer is no longer trusted (a number of nodes or a percentage).")
	fs.DurationVar(&o.Settle, "settle", o.Settle, "The coordinator's --settle.")
	fs.DurationVar(&o.GateSettle, "gate-settle", o.GateSettle, "The coordinator's --gate-settle (counted once, for a rollout after an issuer change with a --trust-window: without one the old tokens fail at once, and the coordinator starts as the gate opens).")
	fs.DurationVar(&o.TrustMargin, "trust-margin", o.TrustMargin, "The coordinator's --trust-margin.")
	fs.DurationVar(&o.TrustWindow, "trust-window", o.TrustWindow, "How long the old issuer stays trusted after a change made now (OpenShift: 24h); 0: not at all or not known. Used when no issuer change is under way.")
	fs.DurationVar(&o.PerNode, "per-node", o.PerNode, "Time one node takes, instead of the one measured in the last rollout or the default.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
}

func (o *preflightOptions) Validate() error {
	errs := []error{o.validate(), cli.CheckOneOf("strategy", o.Strategy, coordinator.StrategyNames()...),
		cli.CheckPositive("settle", o.Settle, 0), cli.CheckPositive("gate-settle", o.GateSettle, 0),
		cli.CheckPositive("trust-margin", o.TrustMargin, 0), cli.CheckPositive("trust-window", o.TrustWindow, 0),
		cli.CheckPositive("per-node", o.PerNode, 0), cli.CheckOneOf("output", o.Output, "table", "json")}
	if _, err := coordinator.ParseMaxUnavailable(o.MaxUnavailable); err != nil {
		errs = append(errs, fmt.Errorf("--max-unavailable=%q: %w", o.MaxUnavailable, err))
	}
	if _, err := coordinator.ParseMaxUnavailable(o.MaxKubeletRestarts); err != nil {
		errs = append(errs, fmt.Errorf("--max-kubelet-restarts=%q: %w", o.MaxKubeletRestarts, err))
	}
	return errors.Join(errs...)
}

func (o *preflightOptions) run(ctx context.Context, e cli.Env) error {
	rep, err := o.check(ctx)
	if err != nil {
		return &cli.ExitError{Code: exitCouldNotCheck, Err: fmt.Errorf("%w; nothing was checked", err)}
	}
	if o.Output == "json" {
		enc := json.NewEncoder(e.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = writePreflightTable(e.Stdout, rep)
	}
	if err != nil {
		return err
	}
	if rep.Breaks {
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	return nil
}

func (o *preflightOptions) check(ctx context.Context) (preflightReport, error) {
	client, dyn, err := o.clients()
	if err != nil {
		return preflightReport{}, err
	}
	gate, iss, err := o.gateAndIssuer(ctx, client, dyn)
	if err != nil {
		return preflightReport{}, err
	}
	now := time.Now().UTC()
	api, err := o.apiClient()
	if err != nil {
		return preflightReport{}, err
	}
	status, err := coordinator.BuildStatus(ctx, client, api, o.Namespace, iss, gate, now)
	if err != nil {
		return preflightReport{}, err
	}
	// The planner and the coordinator's per-node records need the Nodes
	// themselves, which the status does not keep.
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return preflightReport{}, fmt.Errorf("listing nodes: %w", err)
	}
	nodes := make([]*corev1.Node, len(list.Items))
	for i := range list.Items {
		nodes[i] = &list.Items[i]
	}
	mu, _ := coordinator.ParseMaxUnavailable(o.MaxUnavailable)
	kr, _ := coordinator.ParseMaxUnavailable(o.MaxKubeletRestarts)
	return buildPreflight(preflightInput{Now: now, Status: status, Nodes: nodes, Strategy: protocol.Strategy(o.Strategy), MaxUnavailable: mu, MaxKubeletRestarts: kr,
		Settle: o.Settle, GateSettle: o.GateSettle, Margin: o.TrustMargin, TrustWindow: o.TrustWindow, PerNodeOverride: o.PerNode}), nil
}

// writePreflightTable prints the report as `tokenroll status` does: a
// header block, the checks, then what failed, one row each.
func writePreflightTable(w io.Writer, rep preflightReport) error {
	g := rep.Gate
	gate := "CLOSED"
	if g.Open {
		gate = "open"
	}
	fmt.Fprintf(w, "GATE      %s (%s): %s\n", gate, g.Provider, cli.Cell(g.Message))
	fmt.Fprintf(w, "ISSUER    %s\n", cli.Cell(rep.Issuer))
	if a := rep.Apps; a != nil {
		fmt.Fprintf(w, "APPS      %s with a projected token: %d healthy, %d app-stale, %d app-failing, %d unobserved (as of %s ago, %s)\n",
			count(a.Followed, "pod"), a.Healthy, a.Stale, a.Failing, a.Unobserved, rep.Now.Sub(a.UpdatedAt).Round(time.Second), count(a.AuditEvents, "audit event"))
	} else {
		fmt.Fprintf(w, "APPS      not detected: no app detection status\n")
	}
	writeEstimate(w, rep)
	verdict := "nothing would break"
	if rep.Breaks {
		var failed []string
		for _, c := range rep.Checks {
			if !c.OK {
				failed = append(failed, c.Name)
			}
		}
		verdict = "WOULD BREAK: " + strings.Join(failed, ", ")
	}
	fmt.Fprintf(w, "RESULT    %s\n\n", verdict)

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
	for _, c := range rep.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, map[bool]string{true: "ok", false: "FAIL"}[c.OK], cli.Cell(c.Message))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.Workloads) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tWORKLOAD\tAPP-STALE\tAPP-FAILING\tNODES\tPODS")
		for _, g := range rep.Workloads {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", cli.Cell(g.Namespace), cli.Cell(g.Workload), g.AppStale, g.AppFailing,
				cli.Cell(joinMax(g.Nodes, 3)), cli.Cell(joinMax(g.Pods, 3)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if rep.PodsOmitted > 0 {
			fmt.Fprintf(w, "... and %s app detection counted but did not list\n", count(rep.PodsOmitted, "more pod"))
		}
	}
	if len(rep.Tokens) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tEXPIRED\tOVERDUE\tUNTRUSTED\tISSUERS\tPODS")
		for _, t := range rep.Tokens {
			pods := joinMax(t.Pods, 3)
			if t.PodsTruncated {
				pods += ",..."
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", cli.Cell(t.Node), t.Expired, t.Overdue, t.Untrusted, cli.Cell(joinMax(t.UntrustedIssuers, 2)), cli.Cell(pods))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(rep.NodesWithoutAgent) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tAGENT\tDETAIL")
		for _, n := range rep.NodesWithoutAgent {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", cli.Cell(n.Node), n.Reason, cli.Cell(n.Message))
		}
		return tw.Flush()
	}
	return nil
}

// writeEstimate prints the ROLLOUT and TRUST lines.
func writeEstimate(w io.Writer, rep preflightReport) {
	e := rep.Estimate
	what := map[string]string{
		scopeRollout:       "the rollout in progress",
		scopeIssuerChanged: "the issuer change under way",
		scopeIssuerChange:  "an issuer change now",
	}[e.Scope]
	fmt.Fprintf(w, "ROLLOUT   %s: %s, %d at a time (max-unavailable %d, %s out of service)\n",
		what, count(e.Nodes, "node"), e.Concurrency, e.MaxUnavailable, count(e.OutOfService, "node"))
	for _, p := range e.PerNode {
		src := p.Source
		switch {
		case p.Source == perNodeMeasured:
			src = fmt.Sprintf("measured: median of %s of rollout %s", count(p.Samples, "node"), p.Rollout)
		case p.Source == perNodeFlag:
			src = "--per-node"
		case p.Why != "":
			src = "default: " + p.Why
		}
		fmt.Fprintf(w, "          %s: %s, %s per node (%s)\n", p.Strategy, count(p.Nodes, "node"), secs(p.Seconds), src)
	}
	if e.Uncordoned > 0 {
		fmt.Fprintf(w, "          auto restarts the kubelets of %s without a cordon, outside max-unavailable (the old issuer is no longer trusted): one first, then %d at a time (max-kubelet-restarts)\n",
			count(e.Uncordoned, "node"), e.KubeletRestartsAtOnce)
	}
	switch {
	case e.Nodes == 0:
		fmt.Fprintf(w, "          no node would need work\n")
	case e.CompletesAt.IsZero():
		fmt.Fprintf(w, "          cannot start: nodes out of service fill max-unavailable\n")
	default:
		extra := ""
		if e.GateSettleSeconds > 0 {
			extra = fmt.Sprintf(", counting the %s gate settle", secs(e.GateSettleSeconds))
		}
		if e.SettleSeconds > 0 {
			extra += fmt.Sprintf(" and %s settle per node", secs(e.SettleSeconds))
		}
		fmt.Fprintf(w, "          about %s%s: done by %s\n", secs(e.DurationSeconds), extra, e.CompletesAt.UTC().Format(time.RFC3339))
	}
	switch {
	case e.TrustDeadline.IsZero():
		fmt.Fprintf(w, "TRUST     no deadline known (the gate reports none)\n")
	case e.Fits == nil:
		fmt.Fprintf(w, "TRUST     %s trusted until %s (%s)\n", cli.Cell(e.TrustIssuer), e.TrustDeadline.UTC().Format(time.RFC3339), e.TrustSource)
	case *e.Fits:
		fmt.Fprintf(w, "TRUST     %s trusted until %s (%s): fits, %s to spare\n", cli.Cell(e.TrustIssuer), e.TrustDeadline.UTC().Format(time.RFC3339), e.TrustSource,
			e.TrustDeadline.Sub(e.CompletesAt).Round(time.Second))
	default:
		fmt.Fprintf(w, "TRUST     %s trusted until %s (%s): DOES NOT FIT, %s late\n", cli.Cell(e.TrustIssuer), e.TrustDeadline.UTC().Format(time.RFC3339), e.TrustSource,
			e.CompletesAt.Sub(e.TrustDeadline).Round(time.Second))
	}
}

func secs(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Second).String()
}
