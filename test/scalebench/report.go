package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/tokenroll/tokenroll/test/benchkit"
)

// projectTo is the fleet the model projects to: Kubernetes' supported
// maximum.
const projectTo = 5000

// Goals at projectTo nodes.
const (
	goalNodeWrites  = 1.0   // per node and hour
	goalRSSMiB      = 200.0 // coordinator
	goalIdleCPU     = 36.0  // CPU seconds per hour: 1% of a core
	goalRollout     = 3600.0
	goalP99Millis   = 1000.0
	coordinatorQPS  = 20.0 // tokenroll-coordinator's --kube-api-qps default
	secondsPerHour  = 3600.0
	millisPerSecond = 1000.0
)

// Figures are the headline numbers of one size (measured or projected).
type Figures struct {
	Nodes       int `json:"nodes"`
	PodsPerNode int `json:"podsPerNode"`
	// Steady state.
	AgentNodeWritesPerNodeHour       float64  `json:"agentNodeWritesPerNodeHour"`
	AgentRequestsPerNodeHour         float64  `json:"agentRequestsPerNodeHour"`
	CoordinatorRSSMiB                float64  `json:"coordinatorRSSMiB"`
	CoordinatorCPUSecondsPerHourIdle float64  `json:"coordinatorCPUSecondsPerHourIdle"`
	PlanSyncMillis                   MedMax   `json:"planSyncMillis"`
	SyncsPerHourIdle                 float64  `json:"syncsPerHourIdle"`
	RolloutSeconds                   float64  `json:"rolloutSeconds"`
	RequestsPerNode                  float64  `json:"requestsPerNode"`
	CoordinatorRequestsPerSecond     float64  `json:"coordinatorRequestsPerSecond"`
	APIServerRequestsPerSecond       float64  `json:"apiserverRequestsPerSecond"`
	APIServerP99Millis               float64  `json:"apiserverP99Millis"`
	CoordinatorRolloutRSSMiB         float64  `json:"coordinatorRolloutRSSMiB"`
	CoordinatorRolloutCPUCores       float64  `json:"coordinatorRolloutCPUCores"`
	AgentProcessRSSMiB               float64  `json:"agentProcessRSSMiB"`
	AgentProcessCPUSecondsPerHour    float64  `json:"agentProcessCPUSecondsPerHour"`
	Missed                           []string `json:"missed,omitempty"`
}

// MedMax is a median and a maximum, in milliseconds. The maximum is the
// upper bound of the histogram bucket the slowest sync fell in.
type MedMax struct {
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

func millis(h benchkit.Histogram) MedMax {
	if h.Count == 0 {
		return MedMax{}
	}
	return MedMax{Median: millisPerSecond * h.Quantile(0.5), Max: millisPerSecond * h.MaxBound()}
}

// SteadyDetail is phase 1 of one size.
type SteadyDetail struct {
	WindowSeconds                float64 `json:"windowSeconds"`
	PodsReplaced                 int64   `json:"podsReplaced"`
	PodReplaceFailures           int64   `json:"podReplaceFailures,omitempty"`
	AgentNodeWritesPerNodeHour   float64 `json:"agentNodeWritesPerNodeHour"`
	AgentWatchesPerNodeHour      float64 `json:"agentWatchesPerNodeHour"`
	AgentReadsPerNodeHour        float64 `json:"agentReadsPerNodeHour"`
	AgentRequestsPerNodeHour     float64 `json:"agentRequestsPerNodeHour"`
	CoordinatorCPUSecondsPerHour float64 `json:"coordinatorCPUSecondsPerHour"`
	// AgentProcess* are the calibration node's agent, a process of its own.
	AgentProcessRSSMiB            float64 `json:"agentProcessRSSMiB"`
	AgentProcessCPUSecondsPerHour float64 `json:"agentProcessCPUSecondsPerHour"`
	CoordinatorRSSMiB             float64 `json:"coordinatorRSSMiB"`
	Syncs                         float64 `json:"syncs"`
	PlanSyncMillis                MedMax  `json:"planSyncMillis"`
}

// RolloutDetail is phase 2 of one size.
type RolloutDetail struct {
	Phase   string `json:"phase"`
	Problem string `json:"problem,omitempty"`
	// IssuerChangeSeconds is the API servers' restart; the gate opens at
	// its end. DiscoverySeconds is from then until the coordinator had read
	// the new issuer and the rollout was requested; RolloutSeconds from the
	// gate opening to the rollout done.
	IssuerChangeSeconds        float64 `json:"issuerChangeSeconds"`
	DiscoverySeconds           float64 `json:"discoverySeconds"`
	RolloutSeconds             float64 `json:"rolloutSeconds"`
	NodesDone                  int     `json:"nodesDone"`
	CoordinatorRequests        float64 `json:"coordinatorRequests"`
	CoordinatorLeaseRequests   float64 `json:"coordinatorLeaseRequests"`
	CoordinatorRequestsPerNode float64 `json:"coordinatorRequestsPerNode"`
	// CoordinatorRequestRows counts the coordinator's requests (Lease
	// renewals apart) by "VERB resource", or "VERB /path" outside the
	// resource API, from its API server's audit log.
	CoordinatorRequestRows map[string]int `json:"coordinatorRequestRows"`
	// OthersNonResource counts the other clients' requests outside the
	// resource API on the coordinator's API server, by "VERB /path (user)".
	OthersNonResource map[string]int `json:"othersNonResource,omitempty"`
	// ServerRequestRows is the coordinator's API server's
	// apiserver_request_total over the rollout: the coordinator's requests
	// and the server's own.
	ServerRequestRows          []benchkit.RequestRow `json:"serverRequestRows"`
	AgentRequestsPerNode       float64               `json:"agentRequestsPerNode"`
	RequestsPerNode            float64               `json:"requestsPerNode"`
	APIServerRequestsPerSecond float64               `json:"apiserverRequestsPerSecond"`
	APIServerP99Millis         float64               `json:"apiserverP99Millis"`
	CoordinatorCPUSeconds      float64               `json:"coordinatorCPUSeconds"`
	CoordinatorPeakRSSMiB      float64               `json:"coordinatorPeakRSSMiB"`
}

// Run is one size, measured.
type Run struct {
	Nodes        int     `json:"nodes"`
	PodsPerNode  int     `json:"podsPerNode"`
	SetupSeconds float64 `json:"setupSeconds"`
	// Load is the machine's mean 1-minute load average in each phase (2
	// cores, shared).
	Load struct {
		Setup   float64 `json:"setup"`
		Steady  float64 `json:"steady"`
		Rollout float64 `json:"rollout"`
	} `json:"loadAverage"`
	TotalSeconds float64       `json:"totalSeconds"`
	Steady       SteadyDetail  `json:"steady"`
	Rollout      RolloutDetail `json:"rollout"`
	Figures      Figures       `json:"figures"`
}

func (r *Run) figures() Figures {
	s, ro := r.Steady, r.Rollout
	f := Figures{Nodes: r.Nodes, PodsPerNode: r.PodsPerNode,
		AgentNodeWritesPerNodeHour: s.AgentNodeWritesPerNodeHour, AgentRequestsPerNodeHour: s.AgentRequestsPerNodeHour,
		CoordinatorRSSMiB: s.CoordinatorRSSMiB, CoordinatorCPUSecondsPerHourIdle: s.CoordinatorCPUSecondsPerHour,
		PlanSyncMillis: s.PlanSyncMillis, SyncsPerHourIdle: s.Syncs * secondsPerHour / s.WindowSeconds,
		RolloutSeconds: ro.RolloutSeconds, RequestsPerNode: ro.RequestsPerNode,
		APIServerRequestsPerSecond: ro.APIServerRequestsPerSecond, APIServerP99Millis: ro.APIServerP99Millis,
		CoordinatorRolloutRSSMiB: ro.CoordinatorPeakRSSMiB, AgentProcessRSSMiB: s.AgentProcessRSSMiB, AgentProcessCPUSecondsPerHour: s.AgentProcessCPUSecondsPerHour}
	if ro.RolloutSeconds > 0 {
		f.CoordinatorRequestsPerSecond = (ro.CoordinatorRequests + ro.CoordinatorLeaseRequests) / ro.RolloutSeconds
		f.CoordinatorRolloutCPUCores = ro.CoordinatorCPUSeconds / ro.RolloutSeconds
	}
	f.judge()
	return f
}

// judge lists the goals f misses.
func (f *Figures) judge() {
	f.Missed = nil
	miss := func(bad bool, format string, args ...any) {
		if bad {
			f.Missed = append(f.Missed, fmt.Sprintf(format, args...))
		}
	}
	miss(f.AgentNodeWritesPerNodeHour > goalNodeWrites, "agent Node writes %.2f per node-hour > %g", f.AgentNodeWritesPerNodeHour, goalNodeWrites)
	miss(f.CoordinatorRSSMiB > goalRSSMiB || f.CoordinatorRolloutRSSMiB > goalRSSMiB, "coordinator RSS %.0f/%.0f MiB > %g", f.CoordinatorRSSMiB, f.CoordinatorRolloutRSSMiB, goalRSSMiB)
	miss(f.CoordinatorCPUSecondsPerHourIdle > goalIdleCPU, "coordinator idle CPU %.0f s/h > %g (1%% of a core)", f.CoordinatorCPUSecondsPerHourIdle, goalIdleCPU)
	miss(f.RolloutSeconds > goalRollout, "rollout %.0f s > %g", f.RolloutSeconds, goalRollout)
	miss(f.APIServerP99Millis > goalP99Millis, "API server p99 %.0f ms > %g", f.APIServerP99Millis, goalP99Millis)
	miss(f.CoordinatorRequestsPerSecond > coordinatorQPS, "coordinator %.1f requests/s > its client limit %g", f.CoordinatorRequestsPerSecond, coordinatorQPS)
}

// Summary is the whole run: the figures of the largest size at the top,
// every size, and the projection.
type Summary struct {
	Figures
	MaxUnavailable string  `json:"maxUnavailable"`
	Churn          float64 `json:"churnPerNodeHour"`
	Steady         float64 `json:"steadyWindowSeconds"`
	Runs           []Run   `json:"runs"`
	// Projection5000 is every figure fitted as a + b·nodes over the sizes
	// measured (least squares; with one size, b = 0), at 5,000 nodes.
	Projection5000 *Figures `json:"projection5000"`
	Model          string   `json:"model"`
}

// fit fills the top-level figures (the largest size) and the projection.
func (s *Summary) fit() {
	for i := range s.Runs {
		s.Runs[i].Figures = s.Runs[i].figures()
	}
	if len(s.Runs) == 0 {
		return
	}
	s.Figures = s.Runs[len(s.Runs)-1].Figures
	xs := make([]float64, len(s.Runs))
	for i, r := range s.Runs {
		xs[i] = float64(r.Nodes)
	}
	proj := func(get func(Figures) float64) float64 {
		ys := make([]float64, len(s.Runs))
		for i, r := range s.Runs {
			ys[i] = get(r.Figures)
		}
		a, b := linearFit(xs, ys)
		return math.Max(0, a+b*projectTo)
	}
	last := s.Runs[len(s.Runs)-1].Figures
	lastRun := s.Runs[len(s.Runs)-1]
	p := &Figures{Nodes: projectTo, PodsPerNode: s.PodsPerNode,
		// Each agent speaks of its own node alone: its figures do not
		// depend on the fleet; the largest size's stand.
		AgentNodeWritesPerNodeHour:    last.AgentNodeWritesPerNodeHour,
		AgentRequestsPerNodeHour:      last.AgentRequestsPerNodeHour,
		RequestsPerNode:               last.RequestsPerNode,
		AgentProcessRSSMiB:            mean(s.Runs, func(f Figures) float64 { return f.AgentProcessRSSMiB }),
		AgentProcessCPUSecondsPerHour: mean(s.Runs, func(f Figures) float64 { return f.AgentProcessCPUSecondsPerHour }),
		// The coordinator caches every Node and a sync reads them all.
		CoordinatorRSSMiB:                proj(func(f Figures) float64 { return f.CoordinatorRSSMiB }),
		CoordinatorCPUSecondsPerHourIdle: proj(func(f Figures) float64 { return f.CoordinatorCPUSecondsPerHourIdle }),
		// The slowest sync's bucket and the API servers' p99 are not
		// projected (0): the one is a histogram bucket, noise to a fit;
		// the other is this machine's, 2 shared cores running the whole
		// fleet, not a control plane's.
		PlanSyncMillis:             MedMax{Median: proj(func(f Figures) float64 { return f.PlanSyncMillis.Median })},
		SyncsPerHourIdle:           proj(func(f Figures) float64 { return f.SyncsPerHourIdle }),
		APIServerRequestsPerSecond: proj(func(f Figures) float64 { return f.APIServerRequestsPerSecond }),
		CoordinatorRolloutRSSMiB:   proj(func(f Figures) float64 { return f.CoordinatorRolloutRSSMiB }),
		CoordinatorRolloutCPUCores: proj(func(f Figures) float64 { return f.CoordinatorRolloutCPUCores }),
	}
	// The rollout: with --max-unavailable a percentage the number of waves
	// does not grow with the fleet, and a wave lasts as long as it did on
	// the largest size (a kubelet restart and the agent's next scan); but
	// the coordinator's requests, which do grow, cannot go faster than its
	// client's rate limit.
	ro := lastRun.Rollout
	waveTime := (ro.RolloutSeconds - ro.DiscoverySeconds - gateSettle) / float64(s.waves(lastRun.Nodes))
	coordPerNode := ro.CoordinatorRequestsPerNode
	p.RolloutSeconds = math.Max(ro.DiscoverySeconds+gateSettle+waveTime*float64(s.waves(projectTo)),
		ro.DiscoverySeconds+gateSettle+coordPerNode*projectTo/coordinatorQPS)
	p.CoordinatorRequestsPerSecond = math.Min(coordinatorQPS, (coordPerNode*projectTo+ro.CoordinatorLeaseRequests)/p.RolloutSeconds)
	p.judge()
	s.Projection5000 = p
	s.Model = fmt.Sprintf("pods per node fixed at %d; per-node figures (agents, requests per node) as at %d nodes; coordinator memory, CPU, syncs and median sync time and the API servers' rate fitted as a + b*nodes (least squares) over %v nodes; rollout = discovery + --gate-settle + waves (--max-unavailable %s) at the largest size's wave time, or the coordinator's requests at its %g/s client limit if longer; not projected: the slowest sync's bucket, and the API servers' p99, this machine's (2 shared cores running the whole fleet), not a control plane's",
		s.PodsPerNode, lastRun.Nodes, xs, s.MaxUnavailable, coordinatorQPS)
}

// gateSettle is the coordinator's --gate-settle default, part of every
// rollout after an issuer change.
const gateSettle = 120.0

// waves is how many rounds of --max-unavailable nodes a rollout of n nodes
// takes (a percentage rounds down, to at least one node).
func (s *Summary) waves(n int) int {
	per := 1
	if v, ok := strings.CutSuffix(s.MaxUnavailable, "%"); ok {
		if pct, err := strconv.Atoi(v); err == nil {
			per = max(1, n*pct/100)
		}
	} else if k, err := strconv.Atoi(s.MaxUnavailable); err == nil && k > 0 {
		per = k
	}
	return (n + per - 1) / per
}

func mean(runs []Run, get func(Figures) float64) float64 {
	t := 0.0
	for _, r := range runs {
		t += get(r.Figures)
	}
	return t / float64(len(runs))
}

// linearFit is ordinary least squares y = a + b·x; with one point, or all
// x equal, b is 0 and a the mean.
func linearFit(xs, ys []float64) (a, b float64) {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if n < 2 || den == 0 {
		return sy / n, 0
	}
	b = (n*sxy - sx*sy) / den
	return (sy - b*sx) / n, b
}

func (s *Summary) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	cols := make([]Figures, 0, len(s.Runs)+1)
	for _, r := range s.Runs {
		cols = append(cols, r.Figures)
	}
	if s.Projection5000 != nil {
		cols = append(cols, *s.Projection5000)
	}
	row := func(name string, get func(Figures) string) {
		fmt.Fprint(tw, name, "\t")
		for _, c := range cols {
			fmt.Fprint(tw, get(c), "\t")
		}
		fmt.Fprintln(tw)
	}
	// measuredRow is row for a figure the model does not project: "-" in
	// the projection's column.
	measuredRow := func(name string, get func(Figures) string) {
		fmt.Fprint(tw, name, "\t")
		for _, r := range s.Runs {
			fmt.Fprint(tw, get(r.Figures), "\t")
		}
		if s.Projection5000 != nil {
			fmt.Fprint(tw, "-\t")
		}
		fmt.Fprintln(tw)
	}
	f1 := func(get func(Figures) float64) func(Figures) string {
		return func(f Figures) string { return fmt.Sprintf("%.2f", get(f)) }
	}
	f3 := func(get func(Figures) float64) func(Figures) string {
		return func(f Figures) string { return fmt.Sprintf("%.3f", get(f)) }
	}
	row("nodes (last: projected)", func(f Figures) string { return fmt.Sprint(f.Nodes) })
	row("pods", func(f Figures) string { return fmt.Sprint(f.Nodes * f.PodsPerNode) })
	row("agent Node writes /node/h", f1(func(f Figures) float64 { return f.AgentNodeWritesPerNodeHour }))
	row("agent requests /node/h", f1(func(f Figures) float64 { return f.AgentRequestsPerNodeHour }))
	row("coordinator RSS idle MiB", f1(func(f Figures) float64 { return f.CoordinatorRSSMiB }))
	row("coordinator CPU idle s/h", f1(func(f Figures) float64 { return f.CoordinatorCPUSecondsPerHourIdle }))
	row("syncs /h idle", f1(func(f Figures) float64 { return f.SyncsPerHourIdle }))
	row("plan sync median ms", f1(func(f Figures) float64 { return f.PlanSyncMillis.Median }))
	measuredRow("plan sync max ms (bucket)", f1(func(f Figures) float64 { return f.PlanSyncMillis.Max }))
	row("rollout s (gate open->done)", f1(func(f Figures) float64 { return f.RolloutSeconds }))
	row("requests /node (rollout)", f1(func(f Figures) float64 { return f.RequestsPerNode }))
	row("coordinator requests/s", f1(func(f Figures) float64 { return f.CoordinatorRequestsPerSecond }))
	row("API servers requests/s", f1(func(f Figures) float64 { return f.APIServerRequestsPerSecond }))
	measuredRow("API server p99 ms", f1(func(f Figures) float64 { return f.APIServerP99Millis }))
	row("coordinator RSS rollout MiB", f1(func(f Figures) float64 { return f.CoordinatorRolloutRSSMiB }))
	row("coordinator CPU rollout cores", f3(func(f Figures) float64 { return f.CoordinatorRolloutCPUCores }))
	row("agent process RSS MiB", f1(func(f Figures) float64 { return f.AgentProcessRSSMiB }))
	row("agent process CPU s/h", f1(func(f Figures) float64 { return f.AgentProcessCPUSecondsPerHour }))
	_ = tw.Flush()
	for _, r := range s.Runs {
		if r.Rollout.Problem != "" {
			fmt.Fprintf(w, "%d nodes: %s\n", r.Nodes, r.Rollout.Problem)
		}
	}
	for _, c := range cols {
		for _, m := range c.Missed {
			fmt.Fprintf(w, "goal missed at %d nodes: %s\n", c.Nodes, m)
		}
	}
	if s.Model != "" {
		fmt.Fprintln(w, "model:", s.Model)
	}
}

func (s *Summary) write(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing --summary-json %s: %w", path, err)
	}
	return nil
}

// readSummaries reads earlier --summary-json files (comma-separated), one
// size or several each, and fits their runs together: sizes measured one
// run at a time make one model.
func readSummaries(paths string) (*Summary, error) {
	var out *Summary
	for _, path := range strings.Split(paths, ",") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--from-json: %w", err)
		}
		var s Summary
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("--from-json %s: %w", path, err)
		}
		if len(s.Runs) == 0 {
			return nil, fmt.Errorf("--from-json %s: no runs", path)
		}
		if out == nil {
			out = &s
			continue
		}
		if s.PodsPerNode != out.PodsPerNode || s.MaxUnavailable != out.MaxUnavailable || s.Churn != out.Churn || s.Steady != out.Steady {
			return nil, fmt.Errorf("--from-json %s: measured with other settings (pods per node %d, --max-unavailable %s, churn %g, steady %gs) than the first file (%d, %s, %g, %gs): one model needs the same",
				path, s.PodsPerNode, s.MaxUnavailable, s.Churn, s.Steady, out.PodsPerNode, out.MaxUnavailable, out.Churn, out.Steady)
		}
		out.Runs = append(out.Runs, s.Runs...)
	}
	sort.SliceStable(out.Runs, func(i, j int) bool { return out.Runs[i].Nodes < out.Runs[j].Nodes })
	out.fit()
	return out, nil
}
