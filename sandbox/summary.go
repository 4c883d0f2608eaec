package sandbox

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenroll/tokenroll/protocol"
)

// Summary is the outcome of the scenario, as --summary-json writes it.
// Everything in it comes from what the sandbox saw itself: token states
// from its own scan of every node's kubelet root, judged against the
// issuer the API servers name; the rest from an invariant watcher
// (sandbox/invariants) and the sandbox's own watch on Nodes, the Lease and
// KubeAPIServer/cluster, through the API server. Nothing is taken from the
// coordinator's account of itself.
type Summary struct {
	Nodes int `json:"nodes"`
	// Kubelet is what ran the nodes: "sim" (kubeletsim) or "real" (the
	// pinned kubelet code).
	Kubelet  string `json:"kubelet"`
	Strategy string `json:"strategy"`
	// TokensBefore counts every token by state just after the issuer
	// change (nothing may touch a token until the new revision is out),
	// judged against the new issuer; TokensAfter at the end, against the
	// issuer the API servers then sign with.
	TokensBefore map[string]int `json:"tokensBefore"`
	TokensAfter  map[string]int `json:"tokensAfter"`
	// MaxConcurrentDisrupted is the most nodes cordoned or NotReady at once.
	MaxConcurrentDisrupted int `json:"maxConcurrentDisrupted"`
	NodesLeftCordoned      int `json:"nodesLeftCordoned"`
	// ActionsPerNode counts the distinct requests written to each node.
	ActionsPerNode map[string]int `json:"actionsPerNode"`
	// GateClosedSeconds is how long the revision gate was closed after the
	// issuer change.
	GateClosedSeconds float64 `json:"gateClosedSeconds"`
	// RolloutSeconds is from the gate opening on the new revision to the
	// end: every token fresh under the new issuer (or, within a trust
	// window, nothing to do), no node disrupted and no rollout active.
	RolloutSeconds float64 `json:"rolloutSeconds"`
	// OverheadPerNodeSeconds is the time between one node back in service
	// and the next taken out.
	OverheadPerNodeSeconds Spread `json:"overheadPerNodeSeconds"`
	LeaderChanges          int    `json:"leaderChanges"`
	// Alerts are what the real Prometheus of --prometheus fired (absent
	// without it).
	Alerts *AlertSummary `json:"alerts,omitempty"`
	OK     bool          `json:"ok"`

	// Failures say which check did not hold (not written to the JSON).
	Failures []string `json:"-"`
	// Issuer is the issuer the tokens were judged against at the end.
	Issuer string `json:"-"`
	// MaxUnavailable is the coordinators' --max-unavailable as a node count.
	MaxUnavailable int `json:"-"`
}

// Spread is the median and the largest of some durations, in seconds.
type Spread struct {
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

func spread(ds []time.Duration) Spread {
	if len(ds) == 0 {
		return Spread{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	mid := len(s) / 2
	median := s[mid]
	if len(s)%2 == 0 {
		median = (s[mid-1] + s[mid]) / 2
	}
	return Spread{Median: seconds(median), Max: seconds(s[len(s)-1])}
}

// seconds rounds to milliseconds.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// WriteJSON writes the summary to path (indented, mode 0644).
func (s *Summary) WriteJSON(path string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the summary: %w", err)
	}
	return nil
}

// states prints token counts worst state first.
func states(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return protocol.State(keys[i]).Severity() < protocol.State(keys[j]).Severity()
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}

// Print writes the summary for a person.
func (s *Summary) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSummary")
	fmt.Fprintf(tw, "  nodes\t%d (kubelet: %s)\n", s.Nodes, s.Kubelet)
	fmt.Fprintf(tw, "  strategy\t%s\n", s.Strategy)
	fmt.Fprintf(tw, "  tokens after the issuer change\t%s\n", states(s.TokensBefore))
	fmt.Fprintf(tw, "  tokens at the end\t%s (judged against %s)\n", states(s.TokensAfter), s.Issuer)
	fmt.Fprintf(tw, "  most nodes disrupted at once\t%d (max-unavailable %d)\n", s.MaxConcurrentDisrupted, s.MaxUnavailable)
	fmt.Fprintf(tw, "  nodes left cordoned\t%d\n", s.NodesLeftCordoned)
	names := make([]string, 0, len(s.ActionsPerNode))
	for n := range s.ActionsPerNode {
		names = append(names, n)
	}
	slices.SortFunc(names, byNodeName)
	counts := make([]string, len(names))
	for i, n := range names {
		counts[i] = fmt.Sprintf("%s=%d", n, s.ActionsPerNode[n])
	}
	fmt.Fprintf(tw, "  actions per node\t%s\n", strings.Join(counts, " "))
	fmt.Fprintf(tw, "  gate closed\t%.1fs\n", s.GateClosedSeconds)
	fmt.Fprintf(tw, "  rollout (gate open to done)\t%.1fs\n", s.RolloutSeconds)
	fmt.Fprintf(tw, "  overhead between nodes\tmedian %.2fs, max %.2fs\n", s.OverheadPerNodeSeconds.Median, s.OverheadPerNodeSeconds.Max)
	fmt.Fprintf(tw, "  leader changes\t%d\n", s.LeaderChanges)
	if s.Alerts != nil {
		fmt.Fprintf(tw, "  alerts fired\t%s\n", orNone(s.Alerts.Fired))
		fmt.Fprintf(tw, "  alerts firing at the end\t%s\n", orNone(s.Alerts.FiringAtEnd))
	}
	if s.OK {
		fmt.Fprintf(tw, "  result\tOK: the procedure completed with every invariant held\n")
	} else {
		fmt.Fprintf(tw, "  result\tFAILED\n")
		for _, f := range s.Failures {
			fmt.Fprintf(tw, "  \t- %s\n", f)
		}
	}
	tw.Flush()
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// byNodeName orders worker-2 before worker-10.
func byNodeName(a, b string) int {
	return cmp.Or(cmp.Compare(len(a), len(b)), cmp.Compare(a, b))
}
