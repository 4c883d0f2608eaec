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
		"One series per token that is not fresh (capped by --max-token-series): its refreshAt (Unix time), 0 when unknown.",
		[]string{"namespace", "pod", "volume", "path", "state"}, nil)
)

// agentMetrics holds the scan's gauges (a collector over the last report,
// so a token that disappears takes its series with it) and the counters.
type agentMetrics struct {
	maxSeries int

	mu   sync.Mutex
	last *scan.Report

	scanDuration    prometheus.Histogram
	scanErrors      *prometheus.CounterVec
	lastScan        prometheus.Gauge
	seriesDropped   prometheus.Counter
	issuerKnown     prometheus.Gauge
	conditionWrites prometheus.Counter
}

func newAgentMetrics(reg prometheus.Registerer, maxSeries int) *agentMetrics {
	f := promauto.With(reg)
	m := &agentMetrics{
		maxSeries: maxSeries,
		scanDuration: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "scan_duration_seconds",
			Help:    "Time one scan of the kubelet root takes.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		scanErrors: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "scan_errors_total",
			Help: "Scan problems by kind: root (the scan failed), directory (part of the root unreadable), pods_api, issuer_discovery, node_condition.",
		}, []string{"kind"}),
		lastScan: f.NewGauge(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Name: "last_scan_timestamp_seconds",
			Help: "When the last successful scan finished (Unix time).",
		}),
		seriesDropped: f.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "stale_token_series_dropped_total",
			Help: "Per-token series left out because of --max-token-series, summed over scans.",
		}),
		issuerKnown: f.NewGauge(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Name: "expected_issuer_known",
			Help: "1 when the API server's issuer is known (tokens are checked against it), 0 when discovery has not answered yet.",
		}),
		conditionWrites: f.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Name: "node_condition_updates_total",
			Help: "Writes of the ServiceAccountTokensStale condition to the Node (only on change).",
		}),
	}
	for _, kind := range []string{"root", "directory", "pods_api", "issuer_discovery", "node_condition"} {
		m.scanErrors.WithLabelValues(kind)
	}
	reg.MustRegister(m)
	return m
}

func (m *agentMetrics) observe(r *scan.Report) {
	m.mu.Lock()
	m.last = r
	m.mu.Unlock()
	if dropped := stalesOf(r) - m.maxSeries; dropped > 0 {
		m.seriesDropped.Add(float64(dropped))
	}
}

func stalesOf(r *scan.Report) int {
	n := 0
	for _, t := range r.Tokens {
		if t.State != protocol.StateFresh {
			n++
		}
	}
	return n
}

// Describe implements prometheus.Collector.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTokens, descOldestAgeRatio, descNextRefresh, descLatestOverdue, descStale} {
		ch <- d
	}
}

// Collect implements prometheus.Collector from the last report.
func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	r := m.last
	m.mu.Unlock()
	if r == nil {
		return
	}
	type key struct{ state, ns string }
	counts := map[key]int{}
	var oldest float64
	var next, latestOverdue float64
	type seriesKey struct{ ns, pod, vol, path, state string }
	emitted := map[seriesKey]bool{}
	for _, t := range r.Tokens {
		counts[key{string(t.State), t.Namespace}]++
		live := t.State != protocol.StateInvalid && t.State != protocol.StateOrphaned
		if live && t.IssuedAt != nil && *t.TTLSeconds > 0 {
			if ratio := r.Now.Sub(*t.IssuedAt).Seconds() / float64(*t.TTLSeconds); ratio > oldest {
				oldest = ratio
			}
			at := float64(t.RefreshAt.Unix())
			if next == 0 || at < next {
				next = at
			}
			if t.State == protocol.StateOverdue && at > latestOverdue {
				latestOverdue = at
			}
		}
		sk := seriesKey{t.Namespace, t.Pod, t.Volume, t.Path, string(t.State)}
		if t.State != protocol.StateFresh && len(emitted) < m.maxSeries && !emitted[sk] {
			// Two pods of one name (a leftover volume and its successor) must
			// not yield one series twice.
			emitted[sk] = true
			var at float64
			if t.RefreshAt != nil {
				at = float64(t.RefreshAt.Unix())
			}
			ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, at, t.Namespace, t.Pod, t.Volume, t.Path, string(t.State))
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descTokens, prometheus.GaugeValue, float64(n), k.state, k.ns)
	}
	ch <- prometheus.MustNewConstMetric(descOldestAgeRatio, prometheus.GaugeValue, oldest)
	if next > 0 {
		ch <- prometheus.MustNewConstMetric(descNextRefresh, prometheus.GaugeValue, next)
	}
	if latestOverdue > 0 {
		ch <- prometheus.MustNewConstMetric(descLatestOverdue, prometheus.GaugeValue, latestOverdue)
	}
}
