package audit

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tokenroll/tokenroll/metrics"
)

// Webhook request results, a metric label.
const (
	resultAccepted  = "accepted"
	resultBusy      = "busy"
	resultTooLarge  = "too_large"
	resultMalformed = "malformed"
	resultForbidden = "forbidden"
	resultMethod    = "bad_method"
	resultHandshake = "handshake_failed"
	resultStandby   = "standby"
)

// Log problems, a metric label.
const (
	logErrOpen       = "open"
	logErrRead       = "read"
	logErrCheckpoint = "checkpoint"
)

// Metrics are the audit sources' metrics. Every label is a fixed set:
// source, kind, reason, result; never a path, a pod or an error text.
type Metrics struct {
	events          *prometheus.CounterVec
	skipped         *prometheus.CounterVec
	lastEvent       *prometheus.GaugeVec
	webhookRequests *prometheus.CounterVec
	webhookBytes    prometheus.Counter
	logBytes        prometheus.Counter
	logRotations    *prometheus.CounterVec
	logErrors       *prometheus.CounterVec
}

// NewMetrics registers the audit sources' metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		events: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_events_total",
			Help: "Audit events read and delivered, by source (webhook, log) and kind (presented, issued, auth_failed)."}, []string{"source", "kind"}),
		skipped: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_events_skipped_total",
			Help: "Audit events that yielded nothing, by source and reason (malformed, too_large, unsupported, stage, invalid, irrelevant, duplicate)."}, []string{"source", "reason"}),
		lastEvent: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "audit_last_event_timestamp_seconds",
			Help: "Stage time of the last audit event delivered, by source (a stream that stops shows here)."}, []string{"source"}),
		webhookRequests: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_webhook_batches_total",
			Help: "EventList batches the webhook received, by result (accepted, busy, too_large, malformed, forbidden, bad_method, standby: refused by a replica that does not lead; handshake_failed counts connections refused at the TLS handshake)."}, []string{"result"}),
		webhookBytes: f.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_webhook_bytes_total",
			Help: "Bytes of the batches the webhook accepted."}),
		logBytes: f.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_log_bytes_total",
			Help: "Bytes read from audit log files."}),
		logRotations: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_log_rotations_total",
			Help: "Audit log rotations followed, by kind (rename, truncate)."}, []string{"kind"}),
		logErrors: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "audit_log_errors_total",
			Help: "Failures reading audit logs, by operation (open, read, checkpoint)."}, []string{"op"}),
	}
	for _, src := range []string{SourceWebhook, SourceLog} {
		for _, k := range kinds {
			m.events.WithLabelValues(src, k.String())
		}
		for _, r := range SkipReasons {
			m.skipped.WithLabelValues(src, string(r))
		}
	}
	for _, r := range []string{resultAccepted, resultBusy, resultTooLarge, resultMalformed, resultForbidden, resultMethod, resultHandshake, resultStandby} {
		m.webhookRequests.WithLabelValues(r)
	}
	for _, k := range []string{"rename", "truncate"} {
		m.logRotations.WithLabelValues(k)
	}
	for _, op := range []string{logErrOpen, logErrRead, logErrCheckpoint} {
		m.logErrors.WithLabelValues(op)
	}
	return m
}
