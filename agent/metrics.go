package agent

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/metrics"
	"github.com/tokenroll/tokenroll/protocol"
)

// Label values are bounded: states are a fixed set, namespaces and pods are
// those on one node, per-token series are capped, and no error text is ever
// a label.
var (
	descTokens = prometheus.NewDesc(metrics.Namespace+"_tokens",
		"Projected service-account tokens on this node by state and namespace, from the last scan.",
		[]string{"state", "namespace"}, nil)
	descOldestAgeRatio = prometheus.NewDesc(metrics.Namespace+"_token_oldest_age_ratio",
		"Age of the oldest live token as a fraction of its lifetime (the kubelet refreshes at 0.8).", nil, nil)
	descNextRefresh = prometheus.NewDesc(metrics.Namespace+"_token_next_refresh_timestamp_seconds",
		"Earliest refreshAt among live tokens (Unix time); absent when there are none.", nil, nil)
	descLatestOverdue = prometheus.NewDesc(metrics.Namespace+"_token_latest_overdue_refresh_timestamp_seconds",
		"Latest refreshAt among overdue tokens (Unix time); absent when none is overdue.", nil, nil)
	descStale = prometheus.NewDesc(metrics.Namespace+"_stale_token_refresh_timestamp_seconds",
		"One series per token that is not fresh (capped by --max-token-series and --max-token-series-per-namespace): its refreshAt (Unix time), 0 when unknown.",
		[]string{"namespace", "pod", "volume", "path", "state"}, nil)
)

// snapshot is what the gauges need from a report, kept instead of the
// report itself so the agent holds a few hundred entries, not every token.
type snapshot struct {
	counts        map[[2]string]int // (state, namespace) -> tokens
	oldestRatio   float64
	nextRefresh   float64 // Unix seconds, 0 when no live token
	latestOverdue float64 // Unix seconds, 0 when none overdue
	stale         []staleSeries
}

type staleSeries struct {
	ns, pod, vol, path, state string
	refreshAt                 float64
}

// agentMetrics holds the scan's gauges (a collector over the last scan's
// snapshot, so a token that disappears takes its series with it) and the
// counters.
type agentMetrics struct {
	// maxSeries caps the per-token series; maxPerNamespace (0: no cap of
	// its own) caps one namespace's share, so one tenant's tokens cannot
	// take the whole budget.
	maxSeries, maxPerNamespace int

	mu   sync.Mutex
	last *snapshot

	scanDuration    prometheus.Histogram
	scanErrors      *prometheus.CounterVec
	lastScan        prometheus.Gauge
	seriesDropped   *prometheus.CounterVec
	issuerKnown     prometheus.Gauge
	issuerSource    *prometheus.GaugeVec
	discoveryReads  *prometheus.CounterVec
	conditionWrites prometheus.Counter
	reportWrites    prometheus.Counter
}

// Reasons a per-token series is left out: the flag whose cap it passed.
const (
	droppedTotal        = "max_token_series"
	droppedPerNamespace = "max_token_series_per_namespace"
)

func newAgentMetrics(reg prometheus.Registerer, maxSeries, maxPerNamespace int) *agentMetrics {
	f := promauto.With(reg)
	m := &agentMetrics{
		maxSeries: maxSeries, maxPerNamespace: maxPerNamespace,
		scanDuration: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "scan_duration_seconds",
			Help:    "Time one scan of the kubelet root takes.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		scanErrors: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "scan_errors_total",
			Help: "Scan problems by kind: root (the scan failed), directory (part of the root unreadable), pods_api, issuer_discovery, issuer_published (the coordinator's published issuer invalid, or not allowed to watch it), node_condition, node_annotation.",
		}, []string{"kind"}),
		lastScan: f.NewGauge(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Name: "last_scan_timestamp_seconds",
			Help: "When the last successful scan finished (Unix time).",
		}),
		seriesDropped: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "stale_token_series_dropped_total",
			Help: "Per-token series left out, summed over scans, by the cap that left them out: max_token_series or max_token_series_per_namespace.",
		}, []string{"reason"}),
		issuerKnown: f.NewGauge(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Name: "expected_issuer_known",
			Help: "1 when the API server's issuer is known (tokens are checked against it), 0 when neither OIDC discovery nor the coordinator's published issuer has given it yet.",
		}),
		issuerSource: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Name: "expected_issuer_source",
			Help: "1 for where the expected issuer in force came from: published (the coordinator's ConfigMap, watched) or discovery (OIDC discovery, read); 0 for the other.",
		}, []string{"source"}),
		discoveryReads: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "issuer_discovery_reads_total",
			Help: "Reads of the API server's OIDC discovery document by reason: start, interval (no issuer published), rescan (after a request, no issuer published), unexpected_issuer (a new token of another issuer than the published one).",
		}, []string{"reason"}),
		conditionWrites: f.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "node_condition_updates_total",
			Help: "Writes of the ServiceAccountTokensStale condition to the Node (only on change).",
		}),
		reportWrites: f.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "node_report_updates_total",
			Help: "Writes of the tokenroll.io/tokens annotation (the coordinator's summary) to the Node (only on change).",
		}),
	}
	for _, kind := range []string{"root", "directory", "pods_api", "issuer_discovery", "issuer_published", "node_condition", "node_annotation"} {
		m.scanErrors.WithLabelValues(kind)
	}
	for _, source := range []string{sourcePublished, sourceDiscovery} {
		m.issuerSource.WithLabelValues(source)
	}
	for _, reason := range []string{readStart, readInterval, readRescan, readUnexpected} {
		m.discoveryReads.WithLabelValues(reason)
	}
	for _, reason := range []string{droppedTotal, droppedPerNamespace} {
		m.seriesDropped.WithLabelValues(reason)
	}
	reg.MustRegister(m)
	return m
}

// observe reduces a report to a snapshot for the collector.
func (m *agentMetrics) observe(r *scan.Report) {
	snap := &snapshot{counts: map[[2]string]int{}}
	emitted := map[staleSeries]bool{}
	perNamespace := map[string]int{}
	dropped := map[string]int{}
	for _, t := range r.Tokens {
		snap.counts[[2]string{string(t.State), t.Namespace}]++
		live := t.State != protocol.StateInvalid && t.State != protocol.StateOrphaned && t.State != protocol.StateForeign
		if live && t.TTLSeconds > 0 {
			if ratio := r.Now.Sub(t.IssuedAt).Seconds() / float64(t.TTLSeconds); ratio > snap.oldestRatio {
				snap.oldestRatio = ratio
			}
			at := float64(t.RefreshAt.Unix())
			if snap.nextRefresh == 0 || at < snap.nextRefresh {
				snap.nextRefresh = at
			}
			if t.State == protocol.StateOverdue && at > snap.latestOverdue {
				snap.latestOverdue = at
			}
		}
		if t.State == protocol.StateFresh || t.State == protocol.StateForeign {
			continue // foreign files are counted in descTokens, never a series each
		}
		s := staleSeries{ns: t.Namespace, pod: t.Pod, vol: t.Volume, path: t.Path, state: string(t.State)}
		if !t.RefreshAt.IsZero() {
			s.refreshAt = float64(t.RefreshAt.Unix())
		}
		key := s
		key.refreshAt = 0
		switch {
		case emitted[key]:
			// Two pods of one name (a leftover volume and its successor)
			// must not yield one series twice.
		case m.maxPerNamespace > 0 && perNamespace[s.ns] >= m.maxPerNamespace:
			dropped[droppedPerNamespace]++
		case len(snap.stale) < m.maxSeries:
			emitted[key] = true
			perNamespace[s.ns]++
			snap.stale = append(snap.stale, s)
		default:
			dropped[droppedTotal]++
		}
	}
	m.mu.Lock()
	m.last = snap
	m.mu.Unlock()
	for reason, n := range dropped {
		m.seriesDropped.WithLabelValues(reason).Add(float64(n))
	}
}

// Describe implements prometheus.Collector.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTokens, descOldestAgeRatio, descNextRefresh, descLatestOverdue, descStale} {
		ch <- d
	}
}

// Collect implements prometheus.Collector from the last snapshot.
func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	snap := m.last
	m.mu.Unlock()
	if snap == nil {
		return
	}
	for k, n := range snap.counts {
		ch <- prometheus.MustNewConstMetric(descTokens, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	ch <- prometheus.MustNewConstMetric(descOldestAgeRatio, prometheus.GaugeValue, snap.oldestRatio)
	if snap.nextRefresh > 0 {
		ch <- prometheus.MustNewConstMetric(descNextRefresh, prometheus.GaugeValue, snap.nextRefresh)
	}
	if snap.latestOverdue > 0 {
		ch <- prometheus.MustNewConstMetric(descLatestOverdue, prometheus.GaugeValue, snap.latestOverdue)
	}
	for _, s := range snap.stale {
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, s.refreshAt, s.ns, s.pod, s.vol, s.path, s.state)
	}
}
