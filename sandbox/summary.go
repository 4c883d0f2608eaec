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

	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/coordinator"
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
	// Disruption is what the remediation cost: pods restarted, node
	// reboots, node-seconds out of service, from issuer change to end.
	Disruption
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
	// Apps are the figures of the pods' apps, by kind (the kinds --apps
	// ran).
	Apps map[AppKind]AppFigures `json:"apps"`
	// AppDetection judges the coordinator's app detection against the
	// pods that ran a caching app (absent when none ran).
	AppDetection *AppDetection `json:"appDetection,omitempty"`
	// Alerts are what the real Prometheus of --prometheus fired (absent
	// without it).
	Alerts *AlertSummary `json:"alerts,omitempty"`
	OK     bool          `json:"ok"`

	// Failures say which check did not hold (not written to the JSON).
	Failures []string `json:"-"`
	// appFailures are those of Failures that name apps still failing at
	// the end: an outcome of the remediation, which --compare shows
	// rather than fails on.
	appFailures []string
	// Issuer is the issuer the tokens were judged against at the end.
	Issuer string `json:"-"`
	// MaxUnavailable is the coordinators' --max-unavailable as a node count.
	MaxUnavailable int `json:"-"`
}

// AppFigures are what the apps of one kind did over the run.
type AppFigures struct {
	// Pods counts the pods that ran one.
	Pods         int `json:"pods"`
	Requests     int `json:"requests"`
	AuthFailures int `json:"authFailures"`
	// ErrorSeconds is the time the apps spent unable to authenticate, from
	// a 401 to the next success, summed over pods.
	ErrorSeconds float64 `json:"errorSeconds"`
	// ErrorSecondsAfterGate is the part of ErrorSeconds after the
	// revision gate opened: what the remediation's pace cost. Before it,
	// every remediation waits for the same revision rollout, whose length
	// varies from run to run.
	ErrorSecondsAfterGate float64 `json:"errorSecondsAfterGate"`
	// FailingAtEnd counts the pods whose app still runs and whose last
	// request failed.
	FailingAtEnd int `json:"failingAtEnd"`
	// OtherErrors counts answers other than 2xx and 401, and requests that
	// got none (shown, not judged).
	OtherErrors int `json:"-"`
}

// errorsAfterGate sets each kind's ErrorSecondsAfterGate: its error time
// less what the apps had spent unable to authenticate when the gate
// opened (atGate, their reports then; every app then is in the reports at
// the end, ended or not).
func errorsAfterGate(figs map[AppKind]AppFigures, atGate []AppReport) {
	before := map[AppKind]time.Duration{}
	for _, r := range atGate {
		before[r.Kind] += r.ErrorTime
	}
	for k, f := range figs {
		f.ErrorSecondsAfterGate = max(f.ErrorSeconds-seconds(before[k]), 0)
		figs[k] = f
	}
}

// maxFailingApps is how many failing apps a failure message names.
const maxFailingApps = 10

// judgeApps sums the apps' reports by kind (every kind in kinds appears)
// and names the apps that still fail: a running app whose last request
// failed. A pod whose app restarted counts once, by its running app.
func judgeApps(reports []AppReport, kinds []AppKind) (map[AppKind]AppFigures, []string) {
	figs := map[AppKind]AppFigures{}
	for _, k := range kinds {
		figs[k] = AppFigures{}
	}
	pods := map[AppKind]map[types.UID]bool{}
	var errTime = map[AppKind]time.Duration{}
	var failing []AppReport
	for _, r := range reports {
		f, ok := figs[r.Kind]
		if !ok {
			continue
		}
		if pods[r.Kind] == nil {
			pods[r.Kind] = map[types.UID]bool{}
		}
		pods[r.Kind][r.UID] = true
		f.Requests += r.Requests
		f.AuthFailures += r.AuthFailures
		f.OtherErrors += r.OtherErrors
		errTime[r.Kind] += r.ErrorTime
		if r.Running && r.LastFailed {
			f.FailingAtEnd++
			failing = append(failing, r)
		}
		figs[r.Kind] = f
	}
	for k, f := range figs {
		f.Pods = len(pods[k])
		f.ErrorSeconds = seconds(errTime[k])
		figs[k] = f
	}
	if len(failing) == 0 {
		return figs, nil
	}
	slices.SortFunc(failing, func(a, b AppReport) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), byNodeName(a.Node, b.Node), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod))
	})
	names := make([]string, 0, maxFailingApps)
	for _, r := range failing[:min(len(failing), maxFailingApps)] {
		names = append(names, fmt.Sprintf("%s %s/%s on %s (%s)", r.Kind, r.Namespace, r.Pod, r.Node, r.LastError))
	}
	if len(failing) > maxFailingApps {
		names = append(names, fmt.Sprintf("and %d more", len(failing)-maxFailingApps))
	}
	return figs, []string{fmt.Sprintf("%d app(s) still fail at the end, their last request refused: %s", len(failing), strings.Join(names, ", "))}
}

// explainAppFailures says why the apps still fail when that is what the
// strategy does by design: a kubelet restart renews every token file and
// restarts no pod, so only apps that cached their token fail after it. A
// reloading app still failing is not explained away.
func explainAppFailures(strategy string, figs map[AppKind]AppFigures, failures []string) []string {
	if len(failures) == 0 || strategy != string(coordinator.KubeletRestart) ||
		figs[AppCaching].FailingAtEnd == 0 || figs[AppReloading].FailingAtEnd > 0 {
		return failures
	}
	out := slices.Clone(failures)
	out[0] += "; as expected of --strategy=" + strategy + ", which restarts no pod: an app that cached its token keeps presenting the one it read when its container started, whatever its file holds. --strategy=auto or pod-restart also restart those pods; to judge the token files alone, run with --apps=" + string(AppReloading)
	return out
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
	fmt.Fprintf(tw, "  pods restarted\t%d\n", s.PodsRestarted)
	fmt.Fprintf(tw, "  node reboots\t%d\n", s.NodeReboots)
	fmt.Fprintf(tw, "  node-seconds out of service\t%.1f\n", s.NodeSecondsOutOfService)
	fmt.Fprintf(tw, "  gate closed\t%.1fs\n", s.GateClosedSeconds)
	fmt.Fprintf(tw, "  rollout (gate open to done)\t%.1fs\n", s.RolloutSeconds)
	fmt.Fprintf(tw, "  overhead between nodes\tmedian %.2fs, max %.2fs\n", s.OverheadPerNodeSeconds.Median, s.OverheadPerNodeSeconds.Max)
	fmt.Fprintf(tw, "  leader changes\t%d\n", s.LeaderChanges)
	if len(s.Apps) == 0 {
		fmt.Fprintf(tw, "  apps\tnone ran\n")
	}
	for _, k := range AppKinds {
		f, ok := s.Apps[k]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "  apps %s\t%d pods, %d requests, %d auth failures, %d other errors, %.1fs unable to authenticate, %d failing at the end\n",
			k, f.Pods, f.Requests, f.AuthFailures, f.OtherErrors, f.ErrorSeconds, f.FailingAtEnd)
	}
	if d := s.AppDetection; d != nil {
		fmt.Fprintf(tw, "  app detection\t%d true positives, %d false positives, %d false negatives; reported %.1fs (median) and %.1fs (max) after the token refresh; waited %.1fs for it\n",
			d.TruePositives, d.FalsePositives, d.FalseNegatives, d.SecondsToDetect.Median, d.SecondsToDetect.Max, d.WaitSeconds)
	}
	if s.Alerts != nil {
		fmt.Fprintf(tw, "  alerts fired\t%s\n", orNone(s.Alerts.Fired))
		fmt.Fprintf(tw, "  alerts firing at the end\t%s\n", orNone(s.Alerts.FiringAtEnd))
	}
	if s.OK {
		fmt.Fprintf(tw, "  result\tOK: every invariant held, every token fresh, every app authenticating\n")
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
