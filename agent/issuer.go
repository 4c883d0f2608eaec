package agent

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
)

// Where the expected issuer in force came from (the label of
// tokenroll_expected_issuer_source).
const (
	// sourcePublished: the ConfigMap the coordinator's leader publishes it
	// in, or a discovery read that agreed with it.
	sourcePublished = "published"
	// sourceDiscovery: OIDC discovery, with no valid published issuer or
	// one discovery disagreed with.
	sourceDiscovery = "discovery"
)

// Why OIDC discovery is read (the label of
// tokenroll_issuer_discovery_reads_total).
const (
	// readStart: once at start, so the first scan judges issuers without
	// waiting on a watch that RBAC may forbid or a coordinator that may not
	// run.
	readStart = "start"
	// readInterval: every IssuerRefresh while no valid issuer is published.
	readInterval = "interval"
	// readRescan: after a request was carried out, while no valid issuer
	// is published.
	readRescan = "rescan"
	// readUnexpected: a scan found a token of another issuer issued after
	// the agent last learned its issuer, while one is published: the
	// published issuer may be stale (a coordinator that stopped, or the API
	// servers changing issuer before the gate opens). At most once per
	// IssuerRefresh.
	readUnexpected = "unexpected_issuer"
)

// issuerSource is what the agent knows of where its expected issuer comes
// from; a.mu guards it.
type issuerSource struct {
	// source is where the issuer in force came from ("" before any).
	source string
	// learnedAt is when the agent last adopted or confirmed the issuer in
	// force: a token of another issuer issued before it tells nothing new.
	learnedAt time.Time
	// lastRead is when OIDC discovery was last asked.
	lastRead time.Time
	// published is the valid issuer the ConfigMap holds (nil: none, not
	// read yet, invalid, or not allowed), at resourceVersion publishedRV;
	// seen names the version last taken in (its resourceVersion and data).
	published         *protocol.PublishedIssuer
	publishedRV, seen string
	// store caches the ConfigMap (nil until the watch starts); synced says
	// it has been listed once, off that the watch was given up.
	store       cache.Store
	synced, off bool
	// polling is what the agent last said of its source (nil: nothing
	// yet), so a change is logged once.
	polling *bool
	// disagreed is the last discovery answer logged as differing from the
	// published issuer at publishedRV.
	disagreed string
}

// signalPublished tells Run the published ConfigMap may have changed. It
// never blocks.
func (a *Agent) signalPublished() {
	select {
	case a.publishedChanged <- struct{}{}:
	default:
	}
}

// watchPublished keeps a cache of the one ConfigMap the coordinator
// publishes the issuer in (a field selector on its name, which RBAC limits
// by resourceName) until ctx ends. A watch the agent may not make is given
// up at once, logged once, and OIDC discovery read on its timer instead;
// the watch is tried again every IssuerRefresh, no more often than
// discovery is read then, so that a grant made later is followed without
// restarting the agent (a forbidden list retried every few seconds would
// be polling again).
func (a *Agent) watchPublished(ctx context.Context) {
	for a.followPublished(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-a.cfg.Clock.After(a.cfg.IssuerRefresh):
		}
	}
}

// followPublished runs one watch of the published ConfigMap until ctx ends
// (false) or the API server forbids it (true).
func (a *Agent) followPublished(ctx context.Context) (forbidden bool) {
	client := a.cfg.Published
	selector := func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + protocol.IssuerConfigMapName }
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			selector(&o)
			return client.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			selector(&o)
			return client.Watch(ctx, o)
		},
	}, client)
	informer := cache.NewSharedIndexInformer(lw, &corev1.ConfigMap{}, 0, cache.Indexers{})
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var refused atomic.Bool
	if err := informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			a.metrics.scanErrors.WithLabelValues("issuer_published").Inc()
			a.mu.Lock()
			if !a.src.off {
				a.cfg.Log.Error("not allowed to watch the coordinator's published issuer; reading OIDC discovery every --issuer-refresh-interval instead, and trying the watch again as often; grant list and watch on it (deploy/: Role tokenroll-agent)",
					zap.String("namespace", a.cfg.PublishedNamespace), zap.String("configMap", protocol.IssuerConfigMapName), zap.Error(err))
			}
			a.src.off = true
			a.mu.Unlock()
			refused.Store(true)
			a.signalPublished()
			stop()
			return
		}
		cache.DefaultWatchErrorHandler(ctx, r, err)
	}); err != nil {
		a.cfg.Log.Error("watching the published issuer", zap.Error(err))
		return false
	}
	signal := func(any) { a.signalPublished() }
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: signal, UpdateFunc: func(_, n any) { signal(n) }, DeleteFunc: signal,
	}); err != nil {
		a.cfg.Log.Error("watching the published issuer", zap.Error(err))
		return false
	}
	a.mu.Lock()
	a.src.store = informer.GetStore()
	a.mu.Unlock()
	done := make(chan struct{})
	go func() { defer close(done); informer.RunWithContext(ctx) }()
	defer func() { stop(); <-done }()
	if cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		a.mu.Lock()
		if a.src.off {
			a.cfg.Log.Info("allowed to watch the coordinator's published issuer now; following it",
				zap.String("namespace", a.cfg.PublishedNamespace), zap.String("configMap", protocol.IssuerConfigMapName))
		}
		a.src.synced, a.src.off = true, false
		a.mu.Unlock()
		a.signalPublished() // absent: say so, and poll
	}
	<-ctx.Done()
	stop()
	<-done
	return refused.Load()
}

// publishedObject is the cached ConfigMap (nil: absent, or not known).
// The fake clientset ignores field selectors, hence the name check. a.mu
// is held.
func (a *Agent) publishedObject() *corev1.ConfigMap {
	if a.src.store == nil || a.src.off {
		return nil
	}
	for _, o := range a.src.store.List() {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == protocol.IssuerConfigMapName {
			return cm
		}
	}
	return nil
}

// applyPublished takes in the published ConfigMap as the cache holds it:
// a new valid version becomes the issuer in force at once, with no
// discovery read; an absent or invalid one leaves the issuer as it is and
// turns the discovery timer on.
func (a *Agent) applyPublished() {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	cm := a.publishedObject()
	known := a.src.synced || a.src.off
	rv, seen := "", ""
	var p *protocol.PublishedIssuer
	if cm != nil {
		rv = cm.ResourceVersion
		seen = rv + "\x00" + cm.Data[protocol.IssuerKey] + "\x00" + cm.Data[protocol.IssuerObservedAtKey]
	}
	newVersion := seen != a.src.seen
	if cm != nil {
		parsed, err := protocol.ParsePublishedIssuer(cm.Data)
		switch {
		case err == nil:
			p = &parsed
		case newVersion:
			a.metrics.scanErrors.WithLabelValues("issuer_published").Inc()
			a.cfg.Log.Error("the published issuer is not valid; ignored, OIDC discovery is read every --issuer-refresh-interval until it is",
				zap.String("namespace", cm.Namespace), zap.String("configMap", cm.Name), zap.String("resourceVersion", rv), zap.Error(err))
		}
	}
	a.src.published, a.src.publishedRV, a.src.seen = p, rv, seen
	if p != nil && newVersion {
		prev, prevSource := a.issuer, a.src.source
		a.setIssuer(p.Issuer, sourcePublished, now)
		if prev != p.Issuer || prevSource != sourcePublished {
			a.cfg.Log.Info("expected issuer from the coordinator's published ConfigMap", zap.String("issuer", p.Issuer), zap.String("previous", prev),
				zap.Time("observedAt", p.ObservedAt), zap.String("namespace", cm.Namespace), zap.String("configMap", cm.Name), zap.String("resourceVersion", rv))
		}
	}
	if known {
		a.announce(p == nil)
	}
}

// announce logs, once per change, whether OIDC discovery is read on a
// timer. a.mu is held.
func (a *Agent) announce(polling bool) {
	if a.src.polling != nil && *a.src.polling == polling {
		return
	}
	a.src.polling = &polling
	if polling {
		a.cfg.Log.Info("no valid issuer published by the coordinator; reading OIDC discovery every --issuer-refresh-interval",
			zap.String("namespace", a.cfg.PublishedNamespace), zap.String("configMap", protocol.IssuerConfigMapName), zap.Duration("interval", a.cfg.IssuerRefresh))
		return
	}
	a.cfg.Log.Info("following the issuer the coordinator publishes; OIDC discovery is read only at start and when a token of an unexpected issuer appears",
		zap.String("namespace", a.cfg.PublishedNamespace), zap.String("configMap", protocol.IssuerConfigMapName))
}

// setIssuer puts iss in force. a.mu is held.
func (a *Agent) setIssuer(iss, source string, now time.Time) {
	a.issuer, a.src.source, a.src.learnedAt = iss, source, now
	for _, s := range []string{sourcePublished, sourceDiscovery} {
		v := 0.0
		if s == source {
			v = 1
		}
		a.metrics.issuerSource.WithLabelValues(s).Set(v)
	}
	a.metrics.issuerKnown.Set(1)
}

// publishedInForce reports whether a valid published issuer is followed,
// so that OIDC discovery is not read on a timer.
func (a *Agent) publishedInForce() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.src.published != nil
}

// issuerTick reads OIDC discovery, every IssuerRefresh, while no valid
// issuer is published.
func (a *Agent) issuerTick(ctx context.Context) {
	if !a.publishedInForce() {
		a.readIssuer(ctx, readInterval)
	}
}

// rescanIssuer reads OIDC discovery before a rescan, while no valid issuer
// is published: with one, the watch has brought every change already.
func (a *Agent) rescanIssuer(ctx context.Context) {
	if !a.publishedInForce() {
		a.readIssuer(ctx, readRescan)
	}
}

// readIssuer reads OIDC discovery, for reason; on failure the last known
// issuer stays in force. Whatever answers last, discovery or a new
// published version, is in force: discovery is the API server's own word,
// the published issuer a copy that saves every node the request.
func (a *Agent) readIssuer(ctx context.Context, reason string) {
	now := a.cfg.Clock.Now()
	a.metrics.discoveryReads.WithLabelValues(reason).Inc()
	iss, err := issuer.Discover(ctx, a.cfg.Discovery)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.src.lastRead = now
	if err != nil {
		a.metrics.scanErrors.WithLabelValues("issuer_discovery").Inc()
		a.cfg.Log.Warn("reading the API server's issuer; keeping the last known one", zap.String("lastKnown", a.issuer), zap.String("reason", reason), zap.Error(err))
		return
	}
	source := sourceDiscovery
	if p := a.src.published; p != nil {
		if p.Issuer == iss {
			source = sourcePublished
		} else if a.src.disagreed != a.src.seen+"\x00"+iss {
			a.src.disagreed = a.src.seen + "\x00" + iss
			a.cfg.Log.Warn("OIDC discovery serves another issuer than the coordinator published; using discovery's until the published one changes (the API servers may be changing issuer, or the coordinator may not be running)",
				zap.String("discovered", iss), zap.String("published", p.Issuer), zap.String("resourceVersion", a.src.publishedRV), zap.String("reason", reason))
		}
	}
	if iss != a.issuer {
		a.cfg.Log.Info("expected issuer", zap.String("issuer", iss), zap.String("previous", a.issuer), zap.String("source", source), zap.String("reason", reason))
	}
	a.setIssuer(iss, source, now)
}

// checkUnexpected reads OIDC discovery when a published issuer is followed
// and the scan found a token of another issuer issued after the agent last
// learned its issuer: the kubelet only gets such a token from an API
// server that signs with another issuer, so the published one may be
// stale. It costs nothing while every token matches.
func (a *Agent) checkUnexpected(ctx context.Context, r *scan.Report, expected string) {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	published, learnedAt, lastRead := a.src.published != nil, a.src.learnedAt, a.src.lastRead
	a.mu.Unlock()
	if !published || expected == "" || now.Sub(lastRead) < a.cfg.IssuerRefresh {
		return
	}
	for _, t := range r.Tokens {
		if t.State == protocol.StateIssuerMismatch && t.IssuedAt.After(learnedAt) {
			a.readIssuer(ctx, readUnexpected)
			return
		}
	}
}
