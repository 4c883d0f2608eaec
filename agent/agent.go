// Package agent is the node agent: it judges every projected
// service-account token on its node by the kubelet's rotation rules
// (agent/scan), exports the result as metrics, and keeps the Node condition
// ServiceAccountTokensStale current. A scan makes no API request; the
// expected issuer comes from a watch on the ConfigMap the coordinator
// publishes it in, or, while none is published, from OIDC discovery on a
// slow timer of its own.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

// Config is everything the agent needs; New checks it.
type Config struct {
	NodeName    string
	KubeletRoot string
	// Client reads and patches the agent's own Node.
	Client nodeclient.Nodes
	// Discovery reads the API server's OIDC discovery document: any REST
	// client of the API server will do, the path is absolute.
	Discovery rest.Interface
	// Interval between scans, Grace past refreshAt before overdue, and
	// IssuerRefresh between OIDC discovery reads while no issuer is
	// published (and, while one is, the least time between two reads a
	// token of an unexpected issuer asks for).
	Interval, Grace, IssuerRefresh time.Duration
	// Published, when set, lists and watches the ConfigMap
	// protocol.IssuerConfigMapName of PublishedNamespace, in which the
	// coordinator's leader publishes the issuer: while it holds a valid
	// one, OIDC discovery is not read on a timer. Nil: discovery alone.
	Published          nodeclient.ConfigMaps
	PublishedNamespace string
	// MaxTokenSeries caps per-token metric series.
	MaxTokenSeries int
	Registry       prometheus.Registerer
	Log            *zap.Logger
	Clock          clock.WithTicker

	// MaxTokenSeriesPerNamespace caps one namespace's share of the
	// per-token series; 0 is no cap of its own.
	MaxTokenSeriesPerNamespace int
}

// Agent scans one node and reports on it.
type Agent struct {
	cfg     Config
	metrics *agentMetrics
	scanner *scan.Scanner
	socket  string

	mu     sync.Mutex
	issuer string
	// src is where issuer comes from (issuer.go); publishedChanged says
	// the published ConfigMap's cache changed.
	src              issuerSource
	publishedChanged chan struct{}
	podsReply        protocol.PodsAPI // the last answer; logged on change
	// podsListed: the Pods API has listed the pods once.
	podsListed bool
	applied    *condition
	// appliedReport is the tokens annotation last written (JSON), at
	// reportWrittenAt (zero until it writes); started is when the agent
	// was made.
	appliedReport            string
	reportWrittenAt, started time.Time
	// wanted and wantedReport are what the last scan found, and wantedOK
	// says there was one: what a repair writes back.
	wanted       condition
	wantedReport protocol.TokenReport
	wantedOK     bool
	// live is this Node as the informer last saw it (nil: not seen, or
	// deleted); nodeChanged says it changed, repairedAt when writes were
	// last put back.
	live        *corev1.Node
	nodeChanged chan struct{}
	repairedAt  time.Time
	// writtenRV is the resourceVersion of the agent's last write: a live
	// Node older than it is a late event, not someone else's change.
	writtenRV   string
	rescan      chan struct{}
	since       metav1.Time // the applied condition's transition time
	scannedOnce chan struct{}
	closeOnce   sync.Once
}

// New validates cfg and builds an agent.
func New(cfg Config) (*Agent, error) {
	var errs []error
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("agent: node name is empty"))
	}
	if cfg.KubeletRoot == "" {
		errs = append(errs, errors.New("agent: kubelet root is empty"))
	}
	if cfg.Client == nil || cfg.Discovery == nil {
		errs = append(errs, errors.New("agent: no API client for Nodes or for OIDC discovery"))
	}
	if cfg.Published != nil && cfg.PublishedNamespace == "" {
		errs = append(errs, errors.New("agent: a client for the published issuer, and no namespace to read it in"))
	}
	if cfg.Interval <= 0 || cfg.IssuerRefresh <= 0 || cfg.Grace < 0 {
		errs = append(errs, fmt.Errorf("agent: interval %s and issuer refresh %s must be positive, grace %s not negative", cfg.Interval, cfg.IssuerRefresh, cfg.Grace))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	return &Agent{
		cfg:              cfg,
		metrics:          newAgentMetrics(cfg.Registry, cfg.MaxTokenSeries, cfg.MaxTokenSeriesPerNamespace),
		scanner:          scan.NewScanner(),
		socket:           podsapi.SocketPath(cfg.KubeletRoot),
		scannedOnce:      make(chan struct{}),
		rescan:           make(chan struct{}, 1),
		nodeChanged:      make(chan struct{}, 1),
		publishedChanged: make(chan struct{}, 1),
		started:          cfg.Clock.Now(),
	}, nil
}

// Scanned is closed after the first successful scan (readiness).
func (a *Agent) Scanned() <-chan struct{} { return a.scannedOnce }

// Run scans every interval and follows the issuer until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.loadCondition(ctx); err != nil {
		a.cfg.Log.Warn("reading this node's current condition; will write it after the first scan", zap.Error(err))
	}
	a.readIssuer(ctx, readStart)
	if a.cfg.Published != nil {
		watchCtx, stopWatch := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() { defer close(watched); a.watchPublished(watchCtx) }()
		defer func() { stopWatch(); <-watched }()
	} else {
		a.cfg.Log.Info("no namespace to watch for the coordinator's published issuer (--coordinator-namespace); reading OIDC discovery every --issuer-refresh-interval",
			zap.Duration("interval", a.cfg.IssuerRefresh))
	}
	scanTick := a.cfg.Clock.NewTicker(a.cfg.Interval)
	defer scanTick.Stop()
	issuerTick := a.cfg.Clock.NewTicker(a.cfg.IssuerRefresh)
	defer issuerTick.Stop()
	a.ScanOnce(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-issuerTick.C():
			a.issuerTick(ctx)
		case <-a.publishedChanged:
			a.applyPublished()
		case <-scanTick.C():
			a.ScanOnce(ctx)
		case <-a.rescan:
			a.rescanIssuer(ctx)
			a.ScanOnce(ctx)
		case <-a.nodeChanged:
			a.repair(ctx)
		}
	}
}

// repairInterval is how often, at most, the agent puts back at once what
// someone else removed or changed on its Node; a writer that keeps undoing
// it waits for the next scan, so two controllers never fight at full speed.
const repairInterval = time.Minute

// ObserveNode is told of every version of this agent's Node its informer
// sees (nil: deleted). It never blocks: the agent compares it with what it
// wrote in its own loop.
func (a *Agent) ObserveNode(n *corev1.Node) {
	a.mu.Lock()
	a.live = n
	a.mu.Unlock()
	select {
	case a.nodeChanged <- struct{}{}:
	default:
	}
}

// repair compares the live Node with what the agent last wrote. When the
// condition or the report is not there as written (removed, changed by
// someone else, or the Node deleted and registered again under the same
// name), the agent takes the live Node as its starting point and writes
// what its last scan found, at once or, within repairInterval of the last
// repair, at the next scan.
func (a *Agent) repair(ctx context.Context) {
	a.mu.Lock()
	live, ok := a.live, a.wantedOK
	if live == nil || !ok {
		a.mu.Unlock()
		return
	}
	var cond *condition
	since := metav1.Time{}
	for _, c := range live.Status.Conditions {
		if string(c.Type) == protocol.ConditionTokensStale {
			cond, since = &condition{Status: c.Status, Reason: c.Reason, Message: c.Message}, c.LastTransitionTime
		}
	}
	if cmp, err := resourceversion.CompareResourceVersion(live.ResourceVersion, a.writtenRV); err == nil && cmp < 0 {
		a.mu.Unlock()
		return
	}
	report := live.Annotations[protocol.AnnotationTokens]
	condDrift := (cond == nil) != (a.applied == nil) || cond != nil && *cond != *a.applied
	reportDrift := report != a.appliedReport
	if !condDrift && !reportDrift {
		a.mu.Unlock()
		return
	}
	if condDrift {
		a.applied, a.since = cond, since
	}
	if reportDrift {
		a.appliedReport = report
	}
	want, wantReport := a.wanted, a.wantedReport
	now := a.cfg.Clock.Now()
	due := now.Sub(a.repairedAt) >= repairInterval
	if due {
		a.repairedAt = now
	}
	a.mu.Unlock()
	a.cfg.Log.Info("this Node's condition or tokens report is not as the agent wrote it (removed, changed by someone else, or the Node registered again); writing it again",
		zap.String("node", a.cfg.NodeName), zap.Bool("condition", condDrift), zap.Bool("report", reportDrift), zap.Bool("now", due))
	if due {
		a.writeCondition(ctx, want)
		a.writeReport(ctx, wantReport)
	}
}

// noteWritten records the resourceVersion a write of the agent's left the
// Node at; a.mu is held.
func (a *Agent) noteWritten(n *corev1.Node) {
	if n != nil && n.ResourceVersion != "" {
		a.writtenRV = n.ResourceVersion
	}
}

// Rescan asks for a scan now, with OIDC discovery read again unless a
// published issuer is followed (its watch already brings every change):
// after the agent carried out a request, so the coordinator sees its effect
// without waiting for the next interval. It never blocks; requests made
// while one is pending are merged.
func (a *Agent) Rescan() {
	select {
	case a.rescan <- struct{}{}:
	default:
	}
}

// ScanOnce scans, updates the metrics and, when it changed, the Node
// condition. It returns the report (nil when the scan failed).
func (a *Agent) ScanOnce(ctx context.Context) *scan.Report {
	start := a.cfg.Clock.Now()
	a.mu.Lock()
	expected := a.issuer
	a.mu.Unlock()
	opts := scan.Options{Root: a.cfg.KubeletRoot, Node: a.cfg.NodeName, Now: start, ExpectedIssuer: expected, Grace: a.cfg.Grace}
	opts.Pods, opts.PodsAPI = a.pods(ctx)
	report, err := a.scanner.Scan(opts)
	if err != nil {
		a.metrics.scanErrors.WithLabelValues("root").Inc()
		a.cfg.Log.Error("scan failed", zap.Error(err))
		a.writeCondition(ctx, condition{Status: corev1.ConditionUnknown, Reason: ReasonUnknown, Message: "the agent cannot read the kubelet root: " + err.Error()})
		return nil
	}
	a.metrics.scanDuration.Observe(a.cfg.Clock.Since(start).Seconds())
	for _, e := range report.Errors {
		a.metrics.scanErrors.WithLabelValues("directory").Inc()
		a.cfg.Log.Warn("part of the kubelet root could not be read", zap.String("error", e))
	}
	a.metrics.observe(report)
	a.metrics.lastScan.Set(float64(a.cfg.Clock.Now().Unix()))
	a.cfg.Log.Debug("scanned", zap.String("summary", scan.Summary(report)))
	want, wantReport := conditionFor(report), tokenReport(report, expected)
	a.mu.Lock()
	a.wanted, a.wantedReport, a.wantedOK = want, wantReport, true
	a.mu.Unlock()
	a.writeCondition(ctx, want)
	a.writeReport(ctx, wantReport)
	a.closeOnce.Do(func() { close(a.scannedOnce) })
	a.checkUnexpected(ctx, report, expected)
	return report
}

// pods asks the kubelet Pods API which pods run; nil when it did not say
// (tokens are then attributed by their claims, none judged orphaned). A
// change of answer is logged once, not per scan.
func (a *Agent) pods(ctx context.Context) (map[string]podsapi.Pod, protocol.PodsAPI) {
	pods, answer, err := podsapi.Ask(ctx, a.socket)
	a.mu.Lock()
	// A restarting kubelet removes its socket just before it listens
	// again: once the Pods API has listed, a missing socket is a kubelet
	// not serving, not the feature off, and such a scan verifies nothing.
	if answer == protocol.PodsAPIAbsent && a.podsListed {
		answer, err = protocol.PodsAPIUnavailable, fmt.Errorf("kubelet Pods API socket %s is gone", a.socket)
	}
	if answer == protocol.PodsAPIListed {
		a.podsListed = true
	}
	a.mu.Unlock()
	if err != nil {
		a.metrics.scanErrors.WithLabelValues("pods_api").Inc()
	}
	a.mu.Lock()
	changed := a.podsReply != answer
	a.podsReply = answer
	a.mu.Unlock()
	if changed {
		switch answer {
		case protocol.PodsAPIListed:
			a.cfg.Log.Info("kubelet Pods API available; only pods' serviceAccountToken projections are judged, and volumes of pods the kubelet no longer runs are orphaned", zap.String("socket", a.socket))
		case protocol.PodsAPIAbsent:
			a.cfg.Log.Warn("kubelet Pods API not available (PodsAPI feature gate off, or socket not mounted); tokens are attributed by their claims and none is judged orphaned", zap.String("socket", a.socket))
		default:
			a.cfg.Log.Warn("kubelet Pods API did not list the pods; this scan is incomplete and verifies no action", zap.String("socket", a.socket), zap.String("podsAPI", string(answer)), zap.Error(err))
		}
	}
	return pods, answer
}

// loadCondition reads the condition already on the Node, so a restarted
// agent does not rewrite an unchanged one.
func (a *Agent) loadCondition(ctx context.Context) error {
	node, err := a.cfg.Client.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range node.Status.Conditions {
		if string(c.Type) == protocol.ConditionTokensStale {
			a.mu.Lock()
			a.applied = &condition{Status: c.Status, Reason: c.Reason, Message: c.Message}
			a.since = c.LastTransitionTime
			a.mu.Unlock()
		}
	}
	a.mu.Lock()
	a.appliedReport = node.Annotations[protocol.AnnotationTokens]
	a.mu.Unlock()
	return nil
}

// writeCondition patches the condition onto this agent's own Node, and only
// when status, reason or message changed. The transition time moves only
// with the status.
func (a *Agent) writeCondition(ctx context.Context, c condition) {
	a.mu.Lock()
	prev, since := a.applied, a.since
	a.mu.Unlock()
	if prev != nil && *prev == c {
		return
	}
	now := metav1.NewTime(a.cfg.Clock.Now())
	if prev == nil || prev.Status != c.Status {
		since = now
	}
	nc := corev1.NodeCondition{
		Type: corev1.NodeConditionType(protocol.ConditionTokensStale), Status: c.Status, Reason: c.Reason, Message: c.Message,
		LastHeartbeatTime: now, LastTransitionTime: since,
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{nc}}})
	if err != nil {
		return
	}
	written, err := a.cfg.Client.Patch(ctx, a.cfg.NodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: "tokenroll-agent"}, "status")
	if err != nil {
		a.metrics.scanErrors.WithLabelValues("node_condition").Inc()
		a.cfg.Log.Warn("writing the ServiceAccountTokensStale condition", zap.String("node", a.cfg.NodeName), zap.Error(err))
		return
	}
	a.metrics.conditionWrites.Inc()
	a.cfg.Log.Info("node condition changed", zap.String("node", a.cfg.NodeName), zap.String("status", string(c.Status)), zap.String("reason", c.Reason), zap.String("message", c.Message))
	a.mu.Lock()
	a.applied, a.since = &c, since
	a.noteWritten(written)
	a.mu.Unlock()
}
