package main

import (
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestLinearFit(t *testing.T) {
	a, b := linearFit([]float64{50, 250, 500}, []float64{10 + 0.2*50, 10 + 0.2*250, 10 + 0.2*500})
	if math.Abs(a-10) > 1e-9 || math.Abs(b-0.2) > 1e-9 {
		t.Errorf("fit of an exact line: a=%v b=%v, want 10 and 0.2", a, b)
	}
	if a, b := linearFit([]float64{100}, []float64{7}); a != 7 || b != 0 {
		t.Errorf("one point: a=%v b=%v, want the point and no slope", a, b)
	}
}

func TestSummaryProjects(t *testing.T) {
	run := func(n int, rss, rollout float64) Run {
		return Run{Nodes: n, PodsPerNode: 30,
			Steady: SteadyDetail{WindowSeconds: 60, CoordinatorRSSMiB: rss, AgentNodeWritesPerNodeHour: 0.5, Syncs: 10},
			Rollout: RolloutDetail{RolloutSeconds: rollout, RequestsPerNode: 12, CoordinatorRequestsPerNode: 15, CoordinatorRequests: 600, CoordinatorLeaseRequests: 30,
				APIServerP99Millis: rollout * 10}}
	}
	s := &Summary{MaxUnavailable: "5%", Runs: []Run{run(100, 40, 300), run(200, 50, 400)}}
	s.PodsPerNode = 30
	s.fit()
	p := s.Projection5000
	// 20 waves of 14 s after the gate's 120 s settle would take 400 s; the
	// coordinator's 15 requests per node at 20/s take 3750 s.
	if p == nil || p.Nodes != 5000 || math.Abs(p.CoordinatorRSSMiB-530) > 1e-6 || math.Abs(p.RolloutSeconds-3870) > 1e-6 {
		t.Fatalf("projection %+v: want 530 MiB and 3870 s at 5000 nodes", p)
	}
	if p.RequestsPerNode != 12 || math.Abs(p.CoordinatorRequestsPerSecond-75030.0/3870) > 1e-9 {
		t.Errorf("projection %+v: want the per-node requests of the largest size, and the coordinator under its limit", p)
	}
	if s.waves(200) != 20 || s.waves(10) != 10 || (&Summary{MaxUnavailable: "3"}).waves(10) != 4 {
		t.Error("waves: want 20 of 10 nodes at 5% of 200, 10 of 1 at 5% of 10, 4 of 3 nodes for 10")
	}
	if s.Nodes != 200 || s.SyncsPerHourIdle != 600 || s.CoordinatorRequestsPerSecond != 630.0/400 {
		t.Errorf("top-level figures %+v: want the largest run's", s.Figures)
	}
	missed := strings.Join(p.Missed, "; ")
	if !strings.Contains(missed, "RSS") || !strings.Contains(missed, "rollout") || strings.Contains(missed, "Node writes") || strings.Contains(missed, "p99") {
		t.Errorf("projected misses %q: want RSS and rollout, not the agent's writes nor the machine's p99", missed)
	}
	// The 200-node run's 4,000 ms p99 is measured and missed; the
	// projection has none.
	if p.APIServerP99Millis != 0 || !slices.ContainsFunc(s.Runs[1].Figures.Missed, func(m string) bool { return strings.Contains(m, "p99 4000 ms") }) {
		t.Errorf("p99: projected %v, want none; measured misses %q", p.APIServerP99Millis, s.Runs[1].Figures.Missed)
	}
	var b strings.Builder
	s.print(&b)
	p99 := regexp.MustCompile(`API server p99 ms +3000\.00 +4000\.00 +-\n`)
	if !strings.Contains(b.String(), "5000") || !strings.Contains(b.String(), "goal missed at 5000 nodes") || !p99.MatchString(b.String()) {
		t.Errorf("table:\n%s", b.String())
	}
}

func TestGauge(t *testing.T) {
	body := []byte("# HELP x y\ntokenroll_coordinator_leader 1\ntokenroll_gate_open{provider=\"none\"} 0\n")
	if gauge(body, "tokenroll_coordinator_leader") != 1 || gauge(body, `tokenroll_gate_open{provider="none"}`) != 0 || gauge(body, "nope") != -1 {
		t.Error("gauge read the wrong values")
	}
}
