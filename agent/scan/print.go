package scan

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// WriteTable prints the report for people: one line per token, worst first,
// then a summary.
func WriteTable(w io.Writer, r *Report, expectedIssuer string) error {
	iss := expectedIssuer
	if iss == "" {
		iss = "(not checked)"
	}
	fmt.Fprintf(w, "Node %s at %s, expected issuer %s\n", cli.Cell(r.Node), r.Now.Format(time.RFC3339), cli.Cell(iss))
	fmt.Fprintf(w, "Pods: %s\n\n", podsAPILine(r.PodsAPI))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tNAMESPACE/POD\tVOLUME/PATH\tISSUER\tAGE\tREFRESH\tEXPIRES\tREASON")
	for _, t := range r.Tokens {
		pod := "?"
		if t.Pod != "" {
			pod = cli.Cell(t.Namespace + "/" + t.Pod)
		} else if len(t.PodUID) > 0 {
			pod = "uid " + cli.Cell(t.PodUID)
		}
		age, refresh, expires := "-", "-", "-"
		if !t.IssuedAt.IsZero() {
			if age = short(r.Now.Sub(t.IssuedAt)); t.IssuedAt.After(r.Now) {
				age = "-" + age
			}
			refresh = relative(r.Now, t.RefreshAt)
			exp := t.ExpiresAt
			if !t.WarnAfter.IsZero() {
				exp = t.WarnAfter // an extended token's real deadline
			}
			expires = relative(r.Now, exp)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.State, pod, cli.Cell(t.Volume+"/"+t.Path), cli.Cell(t.Issuer), age, refresh, expires, cli.Cell(t.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "\n%s\n", Summary(r)); err != nil {
		return err
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\nNot read, or read only in part:\n")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", cli.Cell(e))
		}
	}
	return nil
}

// podsAPILine says where the scan learnt which pods run.
func podsAPILine(p protocol.PodsAPI) string {
	switch p {
	case protocol.PodsAPIListed:
		return "listed by the kubelet Pods API; only serviceAccountToken projections are judged"
	case protocol.PodsAPIAbsent:
		return "no kubelet Pods API on this node; tokens attributed by their claims, none judged orphaned"
	default:
		return fmt.Sprintf("INCOMPLETE: the kubelet Pods API is %s; tokens attributed by their claims, none judged orphaned", p)
	}
}

// Summary is one line: "12 tokens: 2 issuer-mismatch, 10 fresh".
func Summary(r *Report) string { return SummaryOf(r, func(protocol.State) bool { return true }) }

// SummaryOf is Summary counting only the states include accepts.
func SummaryOf(r *Report, include func(protocol.State) bool) string {
	var parts []string
	total := 0
	for _, s := range protocol.States {
		if n := r.Summary[s]; n > 0 && include(s) {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
			total += n
		}
	}
	if len(parts) == 0 {
		return "no projected tokens on this node"
	}
	return plural.Count(total, "token") + ": " + strings.Join(parts, ", ")
}

// relative says "in 12m" or "8m ago".
func relative(now, t time.Time) string {
	if t.After(now) {
		return "in " + short(t.Sub(now))
	}
	return short(now.Sub(t)) + " ago"
}

// short renders a duration as kubectl does: 45s, 12m, 3h5m, 2d3h, 364d.
func short(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	case d < 8*24*time.Hour:
		days, h := int(d.Hours())/24, int(d.Hours())%24
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	default:
		return fmt.Sprintf("%dd", int(d.Hours())/24)
	}
}

// WriteJSON writes the report as one JSON document, a token per line, without
// building the whole document in memory.
func WriteJSON(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	head, err := json.Marshal(struct {
		Node    string           `json:"node"`
		Now     time.Time        `json:"now"`
		PodsAPI protocol.PodsAPI `json:"podsAPI"`
	}{r.Node, r.Now, r.PodsAPI})
	if err != nil {
		return err
	}
	bw.Write(head[:len(head)-1])
	bw.WriteString(`,"tokens":[`)
	for i, t := range r.Tokens {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n  ")
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		bw.Write(b)
	}
	bw.WriteString("\n],")
	tail, err := json.Marshal(struct {
		Summary map[protocol.State]int `json:"summary"`
		Errors  []string               `json:"errors,omitempty"`
		Partial bool                   `json:"partial,omitempty"`
	}{r.Summary, r.Errors, r.Partial})
	if err != nil {
		return err
	}
	bw.Write(tail[1:])
	bw.WriteByte('\n')
	return bw.Flush()
}
