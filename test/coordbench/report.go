package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenroll/tokenroll/test/benchkit"
)

// Goals from the issue.
const (
	overheadGoal        = time.Second
	requestsPerNodeGoal = 15
)

// Result is everything one run measured.
type Result struct {
	Nodes          int      `json:"nodes"`
	Strategy       string   `json:"strategy"`
	MaxUnavailable int      `json:"maxUnavailable"`
	PodsPerNode    int      `json:"podsPerNode"`
	RebootDown     Duration `json:"rebootDown"`
	// Setup is the time to start the control plane, the nodes and their
	// pods; Rollout from the administrator's request to the observer
	// seeing the last node done and in service; Total the whole run.
	Setup        Duration `json:"setup"`
	Rollout      Duration `json:"rollout"`
	RolloutPhase string   `json:"rolloutPhase"`
	Total        Duration `json:"total"`
	Overhead     struct {
		// Gaps is how many were measured: one between each two nodes.
		Gaps    int      `json:"gaps"`
		Median  Duration `json:"median"`
		P90     Duration `json:"p90"`
		Max     Duration `json:"max"`
		GoalMet bool     `json:"goalMet"`
	} `json:"overhead"`
	Requests struct {
		// Rollout is the figure the goal is about: from just before the
		// administrator's request until the rollout ended. Whole is from
		// before the coordinator started until after it stopped (its
		// watches are counted when they end).
		Rollout RequestFigures `json:"rollout"`
		Whole   RequestFigures `json:"whole"`
	} `json:"requests"`
	Invariants struct {
		Hold                   bool     `json:"hold"`
		MaxConcurrentDisrupted int      `json:"maxConcurrentDisrupted"`
		MaxDisruptedNodes      []string `json:"maxDisruptedNodes,omitempty"`
		NodesLeftCordoned      []string `json:"nodesLeftCordoned"`
		// RequestsPerNode and ActionsPerNode count nodes by how many action
		// requests the observer saw and how many actions their agents took.
		RequestsPerNode map[int]int `json:"requestsPerNode"`
		ActionsPerNode  map[int]int `json:"actionsPerNode"`
		Failures        []string    `json:"failures,omitempty"`
	} `json:"invariants"`
}

// RequestFigures are the requests over one window: as API server 1's
// apiserver_request_total counts them (its /metrics reads taken out), and
// as its audit log attributes them.
type RequestFigures struct {
	Window Duration `json:"window"`
	// Total counts everything; Lease the Lease requests (the leader
	// election's, and the API server's own identity lease); PerNode is
	// (Total - Lease) / nodes, the figure the goal is about.
	Total   float64               `json:"total"`
	Lease   float64               `json:"lease"`
	PerNode float64               `json:"perNode"`
	GoalMet bool                  `json:"goalMet"`
	Rows    []benchkit.RequestRow `json:"rows"`
	Audit   AuditFigures          `json:"audit"`
	// Unattributed is the metric's resource requests less the audited ones
	// of the coordinator and the loopback client: anyone else's (about 0).
	Unattributed float64 `json:"unattributed"`
}

func newRequestFigures(c benchkit.Counts, a AuditFigures, nodes int, window time.Duration) RequestFigures {
	lease, rest := c.Split()
	f := RequestFigures{Window: duration(window), Total: c.Total(), Lease: lease.Total(), PerNode: rest.Total() / float64(nodes),
		Rows: c.Rows(nodes), Audit: a}
	f.GoalMet = f.PerNode < requestsPerNodeGoal
	for k, v := range c {
		if k.Resource != "" {
			f.Unattributed += v
		}
	}
	for _, rows := range [][]AuditRow{a.CoordinatorRows, a.LoopbackRows} {
		for _, r := range rows {
			if !strings.HasPrefix(r.What, "/") {
				f.Unattributed -= r.Count
			}
		}
	}
	return f
}

// Duration marshals as seconds, as Prometheus would.
type Duration time.Duration

func duration(d time.Duration) Duration { return Duration(d) }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string {
	t := time.Duration(d)
	switch {
	case t >= 10*time.Second:
		return t.Round(100 * time.Millisecond).String()
	case t >= time.Second:
		return t.Round(10 * time.Millisecond).String()
	default:
		return t.Round(100 * time.Microsecond).String()
	}
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).Seconds()) }

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// print writes the result as tables for people.
func (r *Result) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("coordbench: %d nodes, strategy %s, max-unavailable %d, reboot down %s, %d pods per node\n",
		r.Nodes, r.Strategy, r.MaxUnavailable, r.RebootDown, r.PodsPerNode)
	p("run time %s (setup %s, rollout %s)\n\n", r.Total, r.Setup, r.Rollout)

	o := r.Overhead
	p("Seen by an observer watching Nodes through API server 0:\n")
	p("  overhead per node, one node freed (schedulable and Ready) -> the next cordoned, %d gaps:\n", o.Gaps)
	p("    median %s  p90 %s  max %s   goal < %s: %s\n", o.Median, o.P90, o.Max, overheadGoal, met(o.GoalMet))
	p("  rollout: %d nodes in %s (%s per node), ended %s\n\n", r.Nodes, r.Rollout, duration(r.Rollout.D()/time.Duration(r.Nodes)), r.RolloutPhase)

	q := r.Requests.Rollout
	p("API requests counted by API server 1, the coordinator's only server (apiserver_request_total), over the rollout (%s):\n", q.Window)
	p("  %.0f requests; %.0f of them Leases (the leader election's and the API server's own), left out of the per-node figure\n", q.Total, q.Lease)
	p("  per node, without the Leases: %.2f   goal < %d: %s\n", q.PerNode, requestsPerNodeGoal, met(q.GoalMet))
	printRows(w, q.Rows)
	p("  from the coordinator's start to its stop (%s): %.0f requests, %.2f per node without the Leases\n\n",
		r.Requests.Whole.Window, r.Requests.Whole.Total, r.Requests.Whole.PerNode)

	a := q.Audit
	p("Who made them (API server 1's audit log, same window):\n")
	p("  the coordinator: %.0f requests (Lease %.0f), %.2f per node without the Lease\n", a.Coordinator, a.CoordinatorLease, a.PerNode)
	printAudit(w, a.CoordinatorRows, r.Nodes)
	p("  the API server itself (its loopback client): %.0f\n", a.Loopback)
	printAudit(w, a.LoopbackRows, r.Nodes)
	p("  anyone else (counted resource requests not in the audit log): %.0f\n", q.Unattributed)
	p("  (apiserver_request_total leaves some paths outside the resource API uncounted, such as discovery's GET /api/v1)\n")
	p("  from start to stop the coordinator made %.2f per node without the Lease\n\n", r.Requests.Whole.Audit.PerNode)

	inv := r.Invariants
	p("Invariants:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  max nodes disrupted at once\t%d\t(limit %d)\t%s\n", inv.MaxConcurrentDisrupted, r.MaxUnavailable, ok(inv.MaxConcurrentDisrupted <= r.MaxUnavailable))
	fmt.Fprintf(tw, "  nodes left cordoned\t%d\t\t%s\n", len(inv.NodesLeftCordoned), ok(len(inv.NodesLeftCordoned) == 0))
	fmt.Fprintf(tw, "  action requests per node\t%s\t(want 1 each)\t%s\n", histogram(inv.RequestsPerNode), ok(only(inv.RequestsPerNode, 1, r.Nodes)))
	fmt.Fprintf(tw, "  actions taken per node\t%s\t(want 1 each)\t%s\n", histogram(inv.ActionsPerNode), ok(only(inv.ActionsPerNode, 1, r.Nodes)))
	_ = tw.Flush()
	for _, f := range inv.Failures {
		p("  BROKEN: %s\n", f)
	}
	if inv.Hold {
		p("  all hold\n")
	}
}

func printRows(w io.Writer, rows []benchkit.RequestRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "    VERB\tRESOURCE\tCOUNT\tPER NODE\tCODES\t\n")
	for _, row := range rows {
		codes := make([]string, 0, len(row.Codes))
		for _, c := range slices.Sorted(maps.Keys(row.Codes)) {
			codes = append(codes, fmt.Sprintf("%s:%.0f", c, row.Codes[c]))
		}
		fmt.Fprintf(tw, "    %s\t%s\t%.0f\t%.2f\t%s\t\n", row.Verb, orPath(row.Resource), row.Count, row.PerNode, strings.Join(codes, " "))
	}
	_ = tw.Flush()
}

func printAudit(w io.Writer, rows []AuditRow, nodes int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "    VERB\tWHAT\tCOUNT\tPER NODE\t\n")
	for _, row := range rows {
		fmt.Fprintf(tw, "    %s\t%s\t%.0f\t%.2f\t\n", row.Verb, row.What, row.Count, row.Count/float64(nodes))
	}
	_ = tw.Flush()
}

func orPath(resource string) string {
	if resource == "" {
		return "(non-resource path)"
	}
	return resource
}

func ok(b bool) string {
	if b {
		return "ok"
	}
	return "BROKEN"
}

// only tells whether every one of n nodes has the count want.
func only(h map[int]int, want, n int) bool { return len(h) == 1 && h[want] == n }

// histogram writes "1 x50" or "1 x48, 2 x2".
func histogram(h map[int]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(h)) {
		parts = append(parts, fmt.Sprintf("%d x%d", k, h[k]))
	}
	return strings.Join(parts, ", ")
}
