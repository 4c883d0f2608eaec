package coordinator

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tokenroll/tokenroll/metrics"
)

// rolloutPhases are the values of tokenroll_rollout_phase's label.
var rolloutPhases = []string{"none", string(RolloutRunning), string(RolloutPaused), string(RolloutHalted), string(RolloutCancelled), string(RolloutDone)}

// nodeSteps are the values of tokenroll_node_step_duration_seconds's step
// label.
var nodeSteps = []string{"drain", "action", "apps", "total"}

// nodeCountLabels are the values of tokenroll_rollout_nodes's label.
var nodeCountLabels = []string{"pending", "in_progress", "done", "halted", "unresolved", "excluded", "dry_run", "skipped"}

type coordinatorMetrics struct {
	leader         prometheus.Gauge
	gateOpen       *prometheus.GaugeVec
	gateTransition prometheus.Gauge
	gateRevision   *prometheus.GaugeVec
	trustExpiry    prometheus.Gauge
	phase          *prometheus.GaugeVec
	nodes          *prometheus.GaugeVec
	stepDuration   *prometheus.HistogramVec
	halts          *prometheus.CounterVec
	overhead       prometheus.Histogram
	syncDuration   prometheus.Histogram
	staleNodes     prometheus.Gauge
	waiting        *prometheus.GaugeVec
	waitingSince   prometheus.Gauge
	unresolved     prometheus.Gauge
	excluded       prometheus.Gauge
	estimate       prometheus.Gauge
	maxUnavailable prometheus.Gauge
}

func newCoordinatorMetrics(reg prometheus.Registerer) *coordinatorMetrics {
	f := promauto.With(reg)
	ns := metrics.Namespace
	m := &coordinatorMetrics{
		leader: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "coordinator_leader",
			Help: "1 while this replica holds the coordinator Lease."}),
		gateOpen: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "gate_open",
			Help: "1 when the revision gate is open (disruptive steps may start), 0 while the kube-apiserver configuration rolls out."}, []string{"provider"}),
		gateTransition: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "gate_last_transition_timestamp_seconds",
			Help: "When the revision gate last opened or closed (Unix time)."}),
		gateRevision: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "gate_revision",
			Help: "kube-apiserver revisions the gate saw (openshift): latest available, lowest and highest current."}, []string{"kind"}),
		trustExpiry: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "issuer_trust_expiry_timestamp_seconds",
			Help: "When the earliest trust window of a previous issuer closes (Unix time); 0 when none is known."}),
		phase: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_phase",
			Help: "1 for the current rollout's phase (none when there is no rollout), 0 for the others."}, []string{"phase"}),
		nodes: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_nodes",
			Help: "Nodes of the current rollout by state."}, []string{"state"}),
		stepDuration: f.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "node_step_duration_seconds",
			Help:    "Duration of each step of the per-node protocol.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"strategy", "step"}),
		halts: f.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rollout_halts_total",
			Help: "Rollouts halted, by reason."}, []string{"reason"}),
		overhead: f.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "coordinator_overhead_seconds",
			Help:    "Time from one node verified to the next node cordoned: the coordinator's own overhead.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}),
		syncDuration: f.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "plan_sync_duration_seconds",
			Help:    "Time one sync of the leader takes: reading the cached Nodes and the rollout state, planning, and the writes it decides on.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}}),
		staleNodes: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "nodes_needing_work",
			Help: "Nodes the planner finds needing work now (stale or old-issuer tokens, a required reboot)."}),
		waiting: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_waiting",
			Help: "1 for what the coordinator waits for while none of its nodes is in progress (" + strings.Join(WaitReasons, ", ") + "), 0 for the others."}, []string{"reason"}),
		waitingSince: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_waiting_since_timestamp_seconds",
			Help: "Since when the coordinator waits for the reason tokenroll_rollout_waiting names (Unix time); 0 when it is not waiting."}),
		unresolved: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "nodes_unresolved",
			Help: "Nodes whose tokens were still stale after their remediation was verified: left alone until their stale tokens change or a person asks for a retry."}),
		excluded: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "nodes_excluded",
			Help: "Nodes a person excluded from tokenroll (annotation tokenroll.io/exclude)."}),
		estimate: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_estimated_completion_timestamp_seconds",
			Help: "When the running rollout is expected to end (Unix time), from the median time its finished nodes took, the nodes left and the nodes it may disrupt at once; 0 when there is no estimate (no rollout running, none of its nodes finished yet, or the revision gate closed)."}),
		maxUnavailable: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rollout_max_unavailable_nodes",
			Help: "Nodes the running rollout may disrupt at once: --max-unavailable, or more when raised to meet the previous issuer's trust deadline (never above --deadline-max-unavailable); 0 when no rollout runs."}),
	}
	for _, p := range rolloutPhases {
		m.phase.WithLabelValues(p)
	}
	for _, s := range nodeCountLabels {
		m.nodes.WithLabelValues(s)
	}
	for _, r := range HaltReasons {
		m.halts.WithLabelValues(r)
	}
	// Every series from the start: a quantile over rate() and an alert on
	// increase() see the first observation, and a panel shows no data only
	// when there is none.
	for _, s := range Strategies() {
		for _, step := range nodeSteps {
			m.stepDuration.WithLabelValues(string(s), step)
		}
	}
	m.setWaiting(nil)
	return m
}

// setWaiting exports w (nil: not waiting).
func (m *coordinatorMetrics) setWaiting(w *Wait) {
	for _, r := range WaitReasons {
		m.waiting.WithLabelValues(r).Set(b2f(w != nil && w.Reason == r))
	}
	if w == nil {
		m.waitingSince.Set(0)
		return
	}
	m.waitingSince.Set(float64(w.Since.Unix()))
}

func (m *coordinatorMetrics) setPhase(p string) {
	for _, v := range rolloutPhases {
		val := 0.0
		if v == p {
			val = 1
		}
		m.phase.WithLabelValues(v).Set(val)
	}
}
