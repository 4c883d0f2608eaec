package apps

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/metrics"
)

// ConfigMapName holds the apps' status in the coordinator's namespace, for
// `tokenroll status`; StatusKey is its data key. It is apart from the
// rollout state so that its writes neither wake the rollout loop nor race
// a person's steering of the rollout.
const (
	ConfigMapName = "tokenroll-apps"
	StatusKey     = "apps.json"
)

// Bounds on what is exported, whatever the cluster.
const (
	// MaxNamespaceLabels namespaces get their own series in the
	// app-stale/app-failing gauges, the ones with the most such pods;
	// the rest are summed under OtherNamespace.
	MaxNamespaceLabels = 20
	// OtherNamespace is no namespace's name: parentheses are not allowed
	// in one.
	OtherNamespace = "(other)"
	// MaxStatusPods app-stale or app-failing pods are listed in the
	// status; MaxStatusBytes bounds the per-node counts.
	MaxStatusPods  = 100
	MaxStatusBytes = 512 << 10
)

// Event reasons on a Pod.
const (
	ReasonAppStale        = "AppStaleToken"
	ReasonAppStaleCleared = "AppStaleTokenCleared"
	ReasonAppFailing      = "AppAuthFailing"
	ReasonAppRecovered    = "AppAuthRecovered"
)

// Metrics are the detector's, registered once per process.
type Metrics struct {
	stale, failing        *prometheus.GaugeVec
	unobserved, followed  prometheus.Gauge
	events                *prometheus.CounterVec
	staleNS, failNS       map[string]bool
	reported              map[string]map[string]uint64
	eventsSent, eventsCut *prometheus.CounterVec
}

// NewMetrics registers the detector's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	ns := metrics.Namespace
	m := &Metrics{
		stale: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "app_stale_pods",
			Help: "Pods whose app keeps presenting a service-account token the kubelet replaced more than --app-stale-grace ago (it does not reload its token file), by namespace: the " +
				fmt.Sprint(MaxNamespaceLabels) + " with the most, the rest under " + OtherNamespace + "."}, []string{"namespace"}),
		failing: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "app_failing_pods",
			Help: "Pods whose requests (from their pod IP) have kept failing authentication for more than --app-stale-grace, by namespace: the " +
				fmt.Sprint(MaxNamespaceLabels) + " with the most, the rest under " + OtherNamespace + "."}, []string{"namespace"}),
		unobserved: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "app_unobserved_pods",
			Help: "Running pods with a projected service-account token that made no authenticated request in --app-window (never counted healthy)."}),
		followed: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "app_followed_pods",
			Help: "Running pods with a projected service-account token that the leader's app detection follows."}),
		events: f.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "app_audit_events_total",
			Help: "Audit events given to app detection, by kind (presented, issued, auth_failed, other) and result (counted, unknown_pod, ignored)."}, []string{"kind", "result"}),
		eventsSent: f.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "app_pod_events_total",
			Help: "Events recorded on Pods by app detection, by reason."}, []string{"reason"}),
		eventsCut: f.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "app_pod_events_suppressed_total",
			Help: "Events on Pods app detection did not record, by reason: over the rate limit, or the same pod's same condition within an hour."}, []string{"reason"}),
		staleNS: map[string]bool{}, failNS: map[string]bool{}, reported: map[string]map[string]uint64{},
	}
	for _, k := range kindNames {
		for r := range numResults {
			m.events.WithLabelValues(k, r.String())
		}
	}
	for _, r := range []string{ReasonAppStale, ReasonAppStaleCleared, ReasonAppFailing, ReasonAppRecovered} {
		m.eventsSent.WithLabelValues(r)
		m.eventsCut.WithLabelValues(r)
	}
	return m
}

// set exports an evaluation.
func (m *Metrics) set(res Result) {
	setByNamespace(m.stale, m.staleNS, res.StaleByNamespace)
	setByNamespace(m.failing, m.failNS, res.FailingByNamespace)
	m.unobserved.Set(float64(res.Unobserved))
	m.followed.Set(float64(res.Followed))
	for k, byResult := range res.Events {
		if m.reported[k] == nil {
			m.reported[k] = map[string]uint64{}
		}
		for r, n := range byResult {
			if d := n - m.reported[k][r]; n >= m.reported[k][r] && d > 0 {
				m.events.WithLabelValues(k, r).Add(float64(d))
			}
			m.reported[k][r] = n
		}
	}
}

// reset zeroes the gauges when this replica stops leading: another
// replica reports then.
func (m *Metrics) reset() {
	setByNamespace(m.stale, m.staleNS, nil)
	setByNamespace(m.failing, m.failNS, nil)
	m.unobserved.Set(0)
	m.followed.Set(0)
	// A new term's detector counts from zero.
	m.reported = map[string]map[string]uint64{}
}

// setByNamespace sets one series per namespace for the namespaces with the
// most pods, the rest summed under OtherNamespace, and deletes the series
// no longer set; the series are always at most MaxNamespaceLabels+1.
func setByNamespace(g *prometheus.GaugeVec, had map[string]bool, counts map[string]int) {
	names := make([]string, 0, len(counts))
	for ns := range counts {
		names = append(names, ns)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(counts[b], counts[a]), cmp.Compare(a, b)) })
	now := map[string]bool{}
	other := 0
	for i, ns := range names {
		if i < MaxNamespaceLabels {
			g.WithLabelValues(ns).Set(float64(counts[ns]))
			now[ns] = true
		} else {
			other += counts[ns]
		}
	}
	if other > 0 {
		g.WithLabelValues(OtherNamespace).Set(float64(other))
		now[OtherNamespace] = true
	}
	for ns := range had {
		if !now[ns] {
			g.DeleteLabelValues(ns)
			delete(had, ns)
		}
	}
	for ns := range now {
		had[ns] = true
	}
}

// Status is the apps' section of `tokenroll status`, as the leader last
// wrote it.
type Status struct {
	UpdatedAt time.Time `json:"updatedAt"`
	// Grace and Window are the detector's settings.
	Grace  string `json:"grace"`
	Window string `json:"window"`
	// Counts over the pods followed (running, with a projected token).
	Followed   int `json:"followed"`
	Healthy    int `json:"healthy"`
	Unobserved int `json:"unobserved"`
	Stale      int `json:"appStale"`
	Failing    int `json:"appFailing"`
	// AuditEvents counts the audit events the detector was given: 0 means
	// no audit source feeds it, and every pod is unobserved.
	AuditEvents uint64 `json:"auditEvents"`
	// Nodes are per-node counts [pods, healthy, app-stale, app-failing],
	// the nodes with app-stale or app-failing pods first; NodesOmitted did
	// not fit.
	Nodes        map[string][4]int `json:"nodes,omitempty"`
	NodesOmitted int               `json:"nodesOmitted,omitempty"`
	// Pods are app-stale and app-failing pods, the longest-standing first;
	// PodsOmitted did not fit.
	Pods        []PodStatus `json:"pods,omitempty"`
	PodsOmitted int         `json:"podsOmitted,omitempty"`
}

// PodStatus is one app-stale or app-failing pod.
type PodStatus struct {
	Namespace  string    `json:"namespace"`
	Name       string    `json:"name"`
	UID        string    `json:"uid"`
	Node       string    `json:"node"`
	Workload   string    `json:"workload,omitempty"`
	Conditions []string  `json:"conditions"`
	Since      time.Time `json:"since"`
	// ReplacedAt: when the token an app-stale pod presents was replaced.
	ReplacedAt time.Time `json:"replacedAt,omitzero"`
}

// BuildStatus makes the bounded status of an evaluation.
func BuildStatus(res Result, grace, window time.Duration) Status {
	st := Status{UpdatedAt: res.Now.UTC(), Grace: grace.String(), Window: window.String(), Followed: res.Followed, Healthy: res.Healthy,
		Unobserved: res.Unobserved, Stale: res.Stale, Failing: res.Failing}
	for _, byResult := range res.Events {
		for _, n := range byResult {
			st.AuditEvents += n
		}
	}
	pods := make([]PodStatus, 0, len(res.Problems))
	for _, pr := range res.Problems {
		ps := PodStatus{Namespace: pr.Pod.Namespace, Name: pr.Pod.Name, UID: string(pr.Pod.UID), Node: pr.Pod.Node, Workload: pr.Pod.Workload}
		if pr.Stale {
			ps.Conditions = append(ps.Conditions, string(AppStale))
			ps.Since, ps.ReplacedAt = pr.StaleSince.UTC(), pr.ReplacedAt.UTC()
		}
		if pr.Failing {
			ps.Conditions = append(ps.Conditions, string(AppFailing))
			if ps.Since.IsZero() || pr.FailingSince.Before(ps.Since) {
				ps.Since = pr.FailingSince.UTC()
			}
		}
		pods = append(pods, ps)
	}
	slices.SortFunc(pods, func(a, b PodStatus) int {
		return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	if len(pods) > MaxStatusPods {
		st.PodsOmitted = len(pods) - MaxStatusPods
		pods = pods[:MaxStatusPods]
	}
	st.Pods = pods
	names := make([]string, 0, len(res.Nodes))
	for n := range res.Nodes {
		names = append(names, n)
	}
	bad := func(n string) int { return -b2i(res.Nodes[n].Stale+res.Nodes[n].Failing > 0) }
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(bad(a), bad(b)), cmp.Compare(a, b)) })
	size := 0
	for i, n := range names {
		// A node's entry is its name and four small numbers.
		size += len(n) + 32
		if size > MaxStatusBytes {
			st.NodesOmitted = len(names) - i
			break
		}
		if st.Nodes == nil {
			st.Nodes = map[string][4]int{}
		}
		c := res.Nodes[n]
		st.Nodes[n] = [4]int{c.Pods, c.Healthy, c.Stale, c.Failing}
	}
	return st
}

// ReadStatus reads the apps' status (nil: app detection has written none).
func ReadStatus(ctx context.Context, client kubernetes.Interface, namespace string) (*Status, error) {
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the apps' status (ConfigMap %s/%s): %w", namespace, ConfigMapName, err)
	}
	if cm.Data[StatusKey] == "" {
		return nil, nil
	}
	var st Status
	if err := json.Unmarshal([]byte(cm.Data[StatusKey]), &st); err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s key %s is not valid apps status: %w; the coordinator rewrites it within a minute, or delete it", namespace, ConfigMapName, StatusKey, err)
	}
	return &st, nil
}

// Reporter turns evaluations into metrics, Events on Pods and the status
// ConfigMap. It writes no Node: the detector's state lives with the
// leader, which alone reads the audit stream.
type Reporter struct {
	Client    kubernetes.Interface
	Namespace string
	Recorder  events.EventRecorder
	Metrics   *Metrics
	Log       *zap.Logger
	Clock     clock.PassiveClock
	// Grace and Window are the detector's, for the status.
	Grace, Window time.Duration
	// StatusInterval: the status is written at most this often, and only
	// when it changed (or is older than StatusRefresh).
	StatusInterval, StatusRefresh time.Duration
	// Limiter bounds the Events recorded across pods (nil: none).
	Limiter flowcontrol.PassiveRateLimiter

	lastWritten time.Time
	lastData    string
	cmExists    bool
}

// Report exports one evaluation; an error is a status write that failed
// (metrics and Events are done), retried on the next evaluation.
func (r *Reporter) Report(ctx context.Context, res Result) error {
	r.Metrics.set(res)
	for _, tr := range res.Transitions {
		r.event(tr)
	}
	return r.writeStatus(ctx, res)
}

func (r *Reporter) event(tr Transition) {
	p := tr.Pod
	var typ, reason, note string
	switch {
	case tr.Condition == AppStale && tr.Set:
		typ, reason = corev1.EventTypeWarning, ReasonAppStale
		note = fmt.Sprintf("its app still presents a service-account token the kubelet replaced at %s; the app does not reload its token file and will fail once the issuer that signed the old token is no longer trusted: make it reload the file (client-go does every minute), or restart the pod",
			tr.ReplacedAt.UTC().Format(time.RFC3339))
	case tr.Condition == AppStale:
		typ, reason, note = corev1.EventTypeNormal, ReasonAppStaleCleared, "its app no longer presents a replaced service-account token"
	case tr.Condition == AppFailing && tr.Set:
		typ, reason = corev1.EventTypeWarning, ReasonAppFailing
		note = fmt.Sprintf("requests from this pod's IP have failed authentication (401) since %s; if its app cached its service-account token, restart the pod",
			tr.Since.UTC().Format(time.RFC3339))
	default:
		typ, reason, note = corev1.EventTypeNormal, ReasonAppRecovered, "requests from this pod's IP no longer fail authentication"
	}
	if tr.Repeat || (r.Limiter != nil && !r.Limiter.TryAccept()) {
		r.Metrics.eventsCut.WithLabelValues(reason).Inc()
		return
	}
	r.Metrics.eventsSent.WithLabelValues(reason).Inc()
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: p.UID}
	r.Recorder.Eventf(ref, nil, typ, reason, "DetectApps", "%s", note)
	if tr.Set {
		r.Log.Info("pod "+string(tr.Condition), zap.String("namespace", p.Namespace), zap.String("pod", p.Name),
			zap.String("node", p.Node), zap.String("workload", p.Workload))
	}
}

func (r *Reporter) writeStatus(ctx context.Context, res Result) error {
	now := r.Clock.Now()
	if !r.lastWritten.IsZero() && now.Sub(r.lastWritten) < r.StatusInterval {
		// Not built either: it sorts and encodes every node's counts.
		return nil
	}
	st := BuildStatus(res, r.Grace, r.Window)
	// What changes with every event is refreshed every StatusRefresh only.
	content := st
	content.UpdatedAt, content.AuditEvents = time.Time{}, 0
	cb, err := json.Marshal(content)
	if err != nil {
		return err
	}
	if !r.lastWritten.IsZero() && string(cb) == r.lastData && now.Sub(r.lastWritten) < r.StatusRefresh {
		return nil
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: r.Namespace,
		Labels: map[string]string{"app.kubernetes.io/name": "tokenroll", "app.kubernetes.io/component": "coordinator"}},
		Data: map[string]string{StatusKey: string(data)}}
	cms := r.Client.CoreV1().ConfigMaps(r.Namespace)
	// Only the leader writes it, so an update needs no resourceVersion:
	// one request per write.
	if r.cmExists {
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "tokenroll-coordinator"})
		if apierrors.IsNotFound(err) {
			r.cmExists = false
		}
	}
	if !r.cmExists {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "tokenroll-coordinator"})
		if apierrors.IsAlreadyExists(err) {
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "tokenroll-coordinator"})
		}
	}
	if err != nil {
		return fmt.Errorf("writing the apps' status (ConfigMap %s/%s): %w", r.Namespace, ConfigMapName, err)
	}
	r.cmExists, r.lastWritten, r.lastData = true, now, string(cb)
	return nil
}

var errNoClient = errors.New("app detection: no API client")
