package coordinator

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
)

// NodeStatus is one node as `tokenroll status` shows it.
type NodeStatus struct {
	Name          string `json:"name"`
	Ready         bool   `json:"ready"`
	Unschedulable bool   `json:"unschedulable"`
	// Tokens and Stale come from the agent's report (-1: no report).
	Tokens int `json:"tokens"`
	Stale  int `json:"stale"`
	// OldIssuer counts tokens from issuers other than the current one.
	OldIssuer int `json:"oldIssuer"`
	// Condition is the ServiceAccountTokensStale reason.
	Condition      string `json:"condition,omitempty"`
	RebootRequired bool   `json:"rebootRequired,omitempty"`
	// Phase is the node's step in the current rollout: pending, cordoned,
	// acting, done, halted, unresolved, excluded, dry-run (what would have
	// been done, in Message; DryRunBy says whose dry run), or "" when it
	// is not in it. A node left
	// unresolved by an earlier rollout, or excluded, says so whatever the
	// rollout.
	Phase string `json:"phase,omitempty"`
	// DryRunBy says, for a dry-run node, whose dry run it is: the
	// rollout's (DryRunLabel), its RolloutPolicy's (DryRunByPolicy) or
	// its agent's (DryRunByAgent).
	DryRunBy string `json:"dryRunBy,omitempty"`
	// Excluded is the reason a person gave in tokenroll.io/exclude.
	Excluded string `json:"excluded,omitempty"`
	// Strategy is what the node gets in the current rollout.
	Strategy protocol.Strategy `json:"action,omitempty"`
	// Policy names the RolloutPolicy that covered the node when it
	// started in the current rollout, and Drain says how its pods are
	// drained (DescribeDrain); both empty until it starts.
	Policy  string    `json:"policy,omitempty"`
	Drain   string    `json:"drain,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	Message string    `json:"message,omitempty"`
	// Apps counts the node's pods with a projected token: [pods, healthy,
	// app-stale, app-failing] (nil: app detection has not counted them).
	Apps *[4]int `json:"apps,omitempty"`
}

// StatusReport is everything `tokenroll status` prints.
type StatusReport struct {
	Now     time.Time     `json:"now"`
	Issuer  string        `json:"issuer"`
	Gate    GateState     `json:"gate"`
	Rollout *Rollout      `json:"rollout,omitempty"`
	Last    *Rollout      `json:"last,omitempty"`
	Pending *StartRequest `json:"pendingStart,omitempty"`
	// PendingSteer is a pause, resume or cancel the coordinator has not
	// applied yet.
	PendingSteer *SteerRequest `json:"pendingSteer,omitempty"`
	// PendingRetry are retries the coordinator has not applied yet.
	PendingRetry []RetryRequest `json:"pendingRetry,omitempty"`
	// Waiting is what the coordinator waits for, when nothing of its own
	// is in progress.
	Waiting *Wait        `json:"waiting,omitempty"`
	Nodes   []NodeStatus `json:"nodes"`
	// Apps is what app detection last wrote: counts, and the app-stale
	// and app-failing pods (nil: it has written nothing).
	Apps *apps.Status `json:"apps,omitempty"`
}

// Who made a node dry-run, besides the rollout (DryRunLabel).
const (
	DryRunByPolicy = "policy dryRun"
	DryRunByAgent  = "agent --dry-run"
)

// DryRunLabel says for people what made a rollout a dry run.
func DryRunLabel(by v1alpha1.DryRunSource) string {
	if by == v1alpha1.DryRunByCoordinator {
		return "coordinator --dry-run"
	}
	return "TokenRollout spec.dryRun"
}

// BuildStatus reads the state and the Nodes.
func BuildStatus(ctx context.Context, client kubernetes.Interface, rollouts versioned.Interface, namespace, issuer string, gate GateState, now time.Time) (*StatusReport, error) {
	st, err := Store{Client: rollouts}.Get(ctx)
	if err != nil {
		return nil, err
	}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	appStatus, err := apps.ReadStatus(ctx, client, namespace)
	if err != nil {
		return nil, err
	}
	rep := &StatusReport{Now: now, Issuer: issuer, Gate: gate, Rollout: st.Rollout, Last: st.Last, Pending: st.Start, PendingSteer: st.Steer,
		PendingRetry: st.Retry, Waiting: st.Waiting, Apps: appStatus}
	planned := map[string]PlannedNode{}
	if st.Rollout != nil {
		for _, pn := range st.Rollout.Nodes {
			planned[pn.Name] = pn
		}
	}
	for i := range list.Items {
		n := &list.Items[i]
		ns := NodeStatus{Name: n.Name, Ready: nodeutil.Ready(n), Unschedulable: n.Spec.Unschedulable, Tokens: -1, Stale: -1}
		ns.RebootRequired, _ = protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired])
		if tr, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens]); err == nil && n.Annotations[protocol.AnnotationTokens] != "" {
			ns.Tokens, ns.Stale = tr.Tokens, tr.StaleTotal()
			for _, it := range tr.Issuers {
				if it.Issuer != issuer {
					ns.OldIssuer += it.Tokens
				}
			}
		}
		for _, c := range n.Status.Conditions {
			if string(c.Type) == protocol.ConditionTokensStale {
				ns.Condition = c.Reason
			}
		}
		if u := unresolvedState(n); u != nil {
			ns.Phase, ns.Strategy, ns.Since, ns.Message = string(u.Step), u.Strategy, u.StepAt, u.Message
		}
		ns.Excluded = excludedBy(n)
		if ns.Excluded != "" {
			ns.Phase, ns.Message = string(protocol.StepExcluded), ns.Excluded
		}
		if pn, ok := planned[n.Name]; ok {
			switch s := readNodeState(n, st.Rollout.ID); {
			case st.Rollout.DryRun:
				ns.Phase, ns.Strategy, ns.Message = "dry-run", pn.Strategy, "would "+pn.Would
				if pn.Would == "" {
					ns.Message = fmt.Sprintf("would be remediated (the TokenRollout keeps what would be done for %d nodes)", v1alpha1.MaxDetailedNodes)
				}
				ns.DryRunBy = DryRunLabel(st.Rollout.DryRunBy)
			case s != nil:
				ns.Phase, ns.Strategy, ns.Since, ns.Message = string(s.Step), pn.Strategy, s.StepAt, cmp.Or(s.Message, pn.Reason)
				if s.Step == protocol.StepDryRun {
					// Only an agent's answer to a request makes a node
					// dry-run with a request; a policy's dry run requests
					// nothing.
					ns.DryRunBy = DryRunByPolicy
					if s.Request != "" {
						ns.DryRunBy = DryRunByAgent
					}
				}
				if s.Step != protocol.StepDryRun && s.Step != protocol.StepExcluded {
					ns.Policy, ns.Drain = s.Policy, DescribeDrain(s.Policy, s.Drain)
				}
			case ns.Excluded == "" && ns.Phase == "":
				ns.Phase, ns.Strategy, ns.Message = "pending", pn.Strategy, pn.Reason
			}
		}
		if appStatus != nil {
			if c, ok := appStatus.Nodes[n.Name]; ok {
				ns.Apps = &c
			}
		}
		rep.Nodes = append(rep.Nodes, ns)
	}
	slices.SortFunc(rep.Nodes, func(a, b NodeStatus) int { return cmp.Compare(a.Name, b.Name) })
	return rep, nil
}

// WriteStatusJSON writes the report as indented JSON.
func WriteStatusJSON(w io.Writer, rep *StatusReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteStatusTable prints the report as kubectl does: a header block, then
// one row per node.
func WriteStatusTable(w io.Writer, rep *StatusReport) error {
	g := rep.Gate
	gate := "CLOSED"
	if g.Open {
		gate = "open"
	}
	fmt.Fprintf(w, "GATE      %s (%s): %s\n", gate, g.Provider, g.Message)
	if g.Progressing != "" {
		fmt.Fprintf(w, "          %s\n", g.Progressing)
	}
	fmt.Fprintf(w, "ISSUER    %s\n", orDash(rep.Issuer))
	for _, t := range g.Trusted {
		if t.Name == rep.Issuer {
			continue
		}
		until := "no end known"
		if !t.Expires.IsZero() {
			until = fmt.Sprintf("until %s (in %s)", t.Expires.UTC().Format(time.RFC3339), t.Expires.Sub(rep.Now).Round(time.Minute))
		}
		fmt.Fprintf(w, "          also trusted: %s, %s\n", t.Name, until)
	}
	if r := rep.Rollout; r != nil {
		done, total := 0, len(r.Nodes)
		dry := map[string]int{}
		for _, n := range rep.Nodes {
			switch n.Phase {
			case string(protocol.StepDone):
				done++
			case string(protocol.StepDryRun):
				dry[n.DryRunBy]++
			}
		}
		phase := strings.ToUpper(string(r.Phase))
		progress := fmt.Sprintf("%d/%d nodes done", done, total)
		switch {
		case r.DryRun:
			phase = "DRY RUN (" + DryRunLabel(r.DryRunBy) + ") " + phase
			progress = fmt.Sprintf("0/%d nodes done", total)
		case len(dry) > 0:
			// Nodes of a dry-run policy were planned only; agents in
			// --dry-run answered after their nodes were cordoned (and
			// drained, for a reboot) but did not act.
			if done == 0 {
				phase = "DRY RUN " + phase
			}
			for _, by := range []string{DryRunByPolicy, DryRunByAgent} {
				if dry[by] > 0 {
					progress += fmt.Sprintf(", %d dry-run (%s)", dry[by], by)
				}
			}
		}
		strategy := string(r.Strategy)
		if r.Policy != "" {
			strategy += "  policy=" + r.Policy
		}
		fmt.Fprintf(w, "ROLLOUT   %s  %s  strategy=%s  trigger=%s  %s  started %s ago\n",
			r.ID, phase, strategy, r.Trigger, progress, rep.Now.Sub(r.CreatedAt).Round(time.Second))
		if r.HaltReason != "" || r.Message != "" {
			fmt.Fprintf(w, "          %s %s: %s\n", r.HaltReason, r.HaltNode, r.Message)
		}
		if r.Steered != "" {
			fmt.Fprintf(w, "          %s\n", r.Steered)
		}
		if r.Apps != "" {
			fmt.Fprintf(w, "          %s\n", r.Apps)
		}
		if r.Phase == RolloutHalted {
			fmt.Fprintf(w, "          waiting for you: tokenroll rollout resume (retries %s) or tokenroll rollout cancel\n", r.HaltNode)
		}
		writeEstimate(w, rep, r)
	} else {
		fmt.Fprintf(w, "ROLLOUT   none\n")
	}
	if p := rep.Pending; p != nil {
		strategy := string(p.Strategy)
		if p.Policy != "" {
			strategy += " policy=" + p.Policy
		}
		fmt.Fprintf(w, "          start requested by %s: strategy=%s nodes=%q\n", orUnknown(p.RequestedBy), strategy, p.Selector)
	}
	if p := rep.PendingSteer; p != nil {
		fmt.Fprintf(w, "          %s requested by %s, waiting for the coordinator\n", p.Verb, orUnknown(p.RequestedBy))
	}
	for _, p := range rep.PendingRetry {
		fmt.Fprintf(w, "          retry of %s requested by %s, waiting for the coordinator\n", p.Node, orUnknown(p.RequestedBy))
	}
	if wt := rep.Waiting; wt != nil {
		fmt.Fprintf(w, "WAITING   %s for %s: %s\n", wt.Reason, rep.Now.Sub(wt.Since).Round(time.Second), wt.Message)
	}
	writeAppsSummary(w, rep)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREADY\tSCHED\tTOKENS\tSTALE\tOLD-ISSUER\tAPPS\tCONDITION\tPHASE\tACTION\tSINCE\tMESSAGE")
	for _, n := range rep.Nodes {
		sched := "yes"
		if n.Unschedulable {
			sched = "cordoned"
		}
		tokens, stale := "-", "-"
		if n.Tokens >= 0 {
			tokens, stale = fmt.Sprint(n.Tokens), fmt.Sprint(n.Stale)
		}
		cond := orDash(n.Condition)
		if n.RebootRequired {
			cond += ",RebootRequired"
		}
		since := "-"
		if !n.Since.IsZero() {
			since = rep.Now.Sub(n.Since).Round(time.Second).String()
		}
		action := orDash(string(n.Strategy))
		if n.Policy != "" {
			// The pool's policy gave it its drain settings; -o json
			// says which.
			action += " (" + n.Policy + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, yesNo(n.Ready), sched, tokens, stale, n.OldIssuer,
			appsCell(rep.Apps, n.Apps), cond, orDash(n.Phase), action, since, truncate(n.Message, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeAppPods(w, rep)
}

// writeEstimate prints when an unfinished rollout is expected to end, as
// the coordinator last recorded it, against the previous issuer's trust
// deadline, and any raise of its nodes at once.
func writeEstimate(w io.Writer, rep *StatusReport, r *Rollout) {
	if r.DryRun || !r.FinishedAt.IsZero() {
		return
	}
	deadline := TrustDeadline(rep.Gate, rep.Now)
	e := r.Estimate
	switch {
	case e == nil || !e.Known():
		fmt.Fprintf(w, "ESTIMATE  none yet: made from the time this rollout's nodes take, once one has finished\n")
	default:
		fmt.Fprintf(w, "ESTIMATE  done by %s (in %s) at %s at once: %s left, %s each as the %d finished took (as of %s ago)\n",
			stamp(e.Completion), e.Completion.Sub(rep.Now).Round(time.Second), nodeCount(e.MaxUnavailable), nodeCount(e.Pending+e.InProgress),
			e.PerNode.Round(time.Second), e.Measured, rep.Now.Sub(e.At).Round(time.Second))
		switch {
		case deadline.IsZero():
		case e.Completion.After(deadline):
			fmt.Fprintf(w, "          WILL MISS the previous issuer's trust deadline %s by %s: pods on the nodes left then fail to authenticate (TokenrollRolloutWillMissTrustDeadline)\n",
				stamp(deadline), e.Completion.Sub(deadline).Round(time.Second))
		default:
			fmt.Fprintf(w, "          %s before the previous issuer's trust deadline %s\n", deadline.Sub(e.Completion).Round(time.Second), stamp(deadline))
		}
	}
	if r.Raised != nil {
		fmt.Fprintf(w, "          raised to %s at once %s ago: %s\n", nodeCount(r.Raised.MaxUnavailable), rep.Now.Sub(r.Raised.At).Round(time.Second), r.Raised.Message)
	}
}

// appsCell is a node's APPS column: healthy/pods, and the app-stale and
// app-failing pods; "-" when detection has not counted the node.
func appsCell(st *apps.Status, c *[4]int) string {
	switch {
	case st == nil:
		return "-"
	case c == nil && st.NodesOmitted > 0:
		return "?"
	case c == nil:
		return "0/0"
	}
	s := fmt.Sprintf("%d/%d", c[1], c[0])
	if c[2] > 0 {
		s += fmt.Sprintf(",%d stale", c[2])
	}
	if c[3] > 0 {
		s += fmt.Sprintf(",%d failing", c[3])
	}
	return s
}

// writeAppsSummary prints the APPS line: what the leader's detection
// counted, and how old that is.
func writeAppsSummary(w io.Writer, rep *StatusReport) {
	a := rep.Apps
	if a == nil {
		fmt.Fprintf(w, "APPS      not detected (the coordinator runs without --app-detection, or has not reported yet)\n")
		return
	}
	fmt.Fprintf(w, "APPS      %s with a projected token: %d healthy, %d app-stale, %d app-failing, %d unobserved (as of %s ago)\n",
		plural.Count(a.Followed, "pod"), a.Healthy, a.Stale, a.Failing, a.Unobserved, rep.Now.Sub(a.UpdatedAt).Round(time.Second))
	if a.AuditEvents == 0 {
		fmt.Fprintf(w, "          no audit event has reached the coordinator: no pod can be judged; connect an audit source\n")
	}
}

// writeAppPods lists the app-stale and app-failing pods with their
// workload, as many as the status holds.
func writeAppPods(w io.Writer, rep *StatusReport) error {
	a := rep.Apps
	if a == nil || len(a.Pods) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tNODE\tWORKLOAD\tAPP\tSINCE\tTOKEN REPLACED")
	for _, p := range a.Pods {
		replaced := "-"
		if !p.ReplacedAt.IsZero() {
			replaced = rep.Now.Sub(p.ReplacedAt).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, orDash(p.Workload), strings.Join(p.Conditions, ","),
			rep.Now.Sub(p.Since).Round(time.Second), replaced)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if a.PodsOmitted > 0 {
		fmt.Fprintf(w, "... and %d more (kubectl get events -A --field-selector reason=%s)\n", a.PodsOmitted, apps.ReasonAppStale)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
