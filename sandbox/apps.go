package sandbox

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

// AppKind is how a pod's app treats its token file.
type AppKind string

const (
	// AppReloading reads the file again at least every minute and right
	// after a 401, as client-go's file token source does.
	AppReloading AppKind = "reloading"
	// AppCaching reads the file once when its container starts and never
	// again, as an old SDK or a sidecar that cached its token does.
	AppCaching AppKind = "caching"
)

// AppKinds lists the kinds of apps, as --apps takes them.
var AppKinds = []AppKind{AppReloading, AppCaching}

// AppsNone is the --apps value that runs no app.
const AppsNone = "none"

// AppLabel is the pod label naming the kind of app a workload's pods run.
const AppLabel = "sandbox.tokenroll.io/app"

// ParseApps reads --apps: kinds of AppKinds, or none (or nothing) for no
// app; the error names the flag.
func ParseApps(values []string) ([]AppKind, error) {
	var kinds []AppKind
	var errs []error
	for _, v := range values {
		v = strings.TrimSpace(v)
		switch {
		case v == AppsNone && len(values) == 1:
		case v == AppsNone:
			errs = append(errs, fmt.Errorf("--apps=%s: %q runs no app, so it stands alone", strings.Join(values, ","), AppsNone))
		case slices.Contains(AppKinds, AppKind(v)):
			if !slices.Contains(kinds, AppKind(v)) {
				kinds = append(kinds, AppKind(v))
			}
		default:
			errs = append(errs, fmt.Errorf("--apps: unknown kind %q; want a comma-separated list of %s and %s, or %s", v, AppReloading, AppCaching, AppsNone))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return kinds, nil
}

// The pace of an app: a request every appInterval plus up to
// appIntervalJitter, and a reloading app reads its file again once its
// copy is appReloadAfter old (client-go's file token source: a minute).
const (
	appInterval       = time.Second
	appIntervalJitter = time.Second
	appReloadAfter    = time.Minute
	appRequestTimeout = 5 * time.Second
	// maxTokenSize bounds what an app reads from its token file.
	maxTokenSize = 64 << 10
)

// appRunnerConfig says what apps run and where.
type appRunnerConfig struct {
	// Client lists the pods (any identity that may).
	Client kubernetes.Interface
	// URL is the API server the apps call: the control plane's load
	// balancer.
	URL string
	// CA is the API server's CA certificate (PEM).
	CA []byte
	// Kinds are the kinds of app that run; pods labelled with another run
	// none.
	Kinds []AppKind
	// Nodes are the nodes whose pods run apps.
	Nodes []Node
	Clock clock.Clock
	Log   *zap.Logger
}

// appRunner runs an app for every running container, on a node that is
// up, whose pod is labelled with a kind it runs and that mounts a
// service-account token for the API server: it follows the pods through an
// informer and the token files in the node's kubelet root, and keys each
// app by its container's start, so that a restarted container or a
// rebooted node starts a fresh app that reads the file as it is then.
type appRunner struct {
	cfg   appRunnerConfig
	log   *zap.Logger
	tls   *tls.Config
	nodes map[string]Node

	pods corelisters.PodLister
	kick chan struct{}

	mu sync.Mutex
	// down are the nodes that are rebooting, and up when each last came up.
	down map[string]bool
	up   map[string]time.Time
	apps map[appKey]*app
	// ended are the apps that stopped, for the figures.
	ended []*app
	wg    sync.WaitGroup
}

// appKey is one start of one container.
type appKey struct {
	UID       types.UID
	Container string
	Restarts  int32
	StartedAt time.Time
	IP        netip.Addr
	BootID    string
}

func newAppRunner(cfg appRunnerConfig) (*appRunner, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.CA) {
		return nil, errors.New("apps: the API server's CA certificate is not PEM")
	}
	r := &appRunner{cfg: cfg, log: cfg.Log, tls: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		nodes: map[string]Node{}, kick: make(chan struct{}, 1),
		down: map[string]bool{}, up: map[string]time.Time{}, apps: map[appKey]*app{}}
	for _, n := range cfg.Nodes {
		r.nodes[n.Name()] = n
	}
	return r, nil
}

// Run starts and stops apps until ctx ends, then stops them all.
func (r *appRunner) Run(ctx context.Context) error {
	defer r.stopAll()
	if len(r.cfg.Kinds) == 0 {
		<-ctx.Done()
		return nil
	}
	factory := informers.NewSharedInformerFactory(r.cfg.Client, 0)
	informer := factory.Core().V1().Pods().Informer()
	r.pods = factory.Core().V1().Pods().Lister()
	kick := func(any) { r.poke() }
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: kick, UpdateFunc: func(_, o any) { kick(o) }, DeleteFunc: kick,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return ctx.Err()
	}
	// Token files appear without an event: the kubelet writes them when
	// it syncs the pod; a look every second finds them.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-r.kick:
		}
	}
}

func (r *appRunner) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// observe follows the nodes: a node going down for a reboot takes its
// apps with it at once.
func (r *appRunner) observe(e kubeletsim.Event) {
	switch e.Kind {
	case kubeletsim.EventDown:
		r.mu.Lock()
		r.down[e.Node] = true
		var stopping []*app
		for k, a := range r.apps {
			if a.Node == e.Node {
				stopping = append(stopping, a)
				delete(r.apps, k)
			}
		}
		r.ended = append(r.ended, stopping...)
		r.mu.Unlock()
		for _, a := range stopping {
			a.stop()
		}
	case kubeletsim.EventUp:
		r.mu.Lock()
		r.down[e.Node] = false
		r.up[e.Node] = r.cfg.Clock.Now()
		r.mu.Unlock()
		r.poke()
	}
}

// want is one app that should run.
type want struct {
	key       appKey
	kind      AppKind
	pod       types.NamespacedName
	node      string
	tokenPath string
}

func (r *appRunner) reconcile(ctx context.Context) {
	pods, err := r.pods.List(labels.Everything())
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	wanted := map[appKey]want{}
	for _, p := range pods {
		for _, w := range r.wants(p) {
			wanted[w.key] = w
		}
	}
	for k, a := range r.apps {
		if _, ok := wanted[k]; !ok {
			delete(r.apps, k)
			r.ended = append(r.ended, a)
			go a.stop()
		}
	}
	for k, w := range wanted {
		if r.apps[k] != nil {
			continue
		}
		a := r.newApp(w)
		r.apps[k] = a
		r.wg.Add(1)
		go func() { defer r.wg.Done(); a.run(ctx) }()
	}
}

// wants lists the apps pod's containers run now. Called with r.mu held.
func (r *appRunner) wants(p *corev1.Pod) []want {
	n := r.nodes[p.Spec.NodeName]
	kind := AppKind(p.Labels[AppLabel])
	if n == nil || r.down[n.Name()] || !slices.Contains(r.cfg.Kinds, kind) ||
		p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return nil
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil || !ip.IsLoopback() {
		return nil
	}
	// Seconds: a start time in the API has no finer grain.
	upAt := r.up[n.Name()].Truncate(time.Second)
	var out []want
	for _, c := range p.Spec.Containers {
		var cs *corev1.ContainerStatus
		for i := range p.Status.ContainerStatuses {
			if p.Status.ContainerStatuses[i].Name == c.Name {
				cs = &p.Status.ContainerStatuses[i]
			}
		}
		// A container that started before its node last came up is the
		// API's record of one the reboot ended.
		if cs == nil || cs.State.Running == nil || cs.State.Running.StartedAt.Time.Before(upAt) {
			continue
		}
		path := apiTokenPath(p, c, n.Root())
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			continue
		}
		out = append(out, want{
			key: appKey{UID: p.UID, Container: c.Name, Restarts: cs.RestartCount, StartedAt: cs.State.Running.StartedAt.Time,
				IP: ip, BootID: n.BootID()},
			kind: kind, pod: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, node: n.Name(), tokenPath: path,
		})
	}
	return out
}

// apiTokenPath is where on its node the token container c presents to the
// API server lies: the first projected service-account token it mounts
// whose audience is the API server's (none named); "" when it mounts none.
func apiTokenPath(p *corev1.Pod, c corev1.Container, root string) string {
	for _, m := range c.VolumeMounts {
		for _, v := range p.Spec.Volumes {
			if v.Name != m.Name || v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil && t.Audience == "" {
					return filepath.Join(root, "pods", string(p.UID), "volumes", "kubernetes.io~projected", v.Name, t.Path)
				}
			}
		}
	}
	return ""
}

func (r *appRunner) newApp(w want) *app {
	a := &app{
		Kind: w.kind, Pod: w.pod, UID: w.key.UID, Node: w.node, IP: w.key.IP, tokenPath: w.tokenPath,
		url:   strings.TrimSuffix(r.cfg.URL, "/") + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		clock: r.cfg.Clock, log: r.log.With(zap.String("kind", string(w.kind)), zap.String("namespace", w.pod.Namespace),
			zap.String("pod", w.pod.Name), zap.String("node", w.node), zap.String("podIP", w.key.IP.String())),
		stopped: make(chan struct{}), done: make(chan struct{}),
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: w.key.IP.AsSlice()}, Timeout: appRequestTimeout}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err == nil {
			if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
				ip, _ := netip.AddrFromSlice(ta.IP)
				a.mu.Lock()
				a.stats.SourceIP = ip.Unmap()
				a.mu.Unlock()
			}
		}
		return c, err
	}
	transport := &http.Transport{DialContext: dial, TLSClientConfig: r.tls.Clone(), ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: appRequestTimeout, IdleConnTimeout: time.Minute}
	a.http = &http.Client{Transport: transport, Timeout: appRequestTimeout}
	return a
}

func (r *appRunner) stopAll() {
	r.mu.Lock()
	for k, a := range r.apps {
		delete(r.apps, k)
		r.ended = append(r.ended, a)
		a.stop()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// reports is every app that ran, running ones marked so, as of now.
func (r *appRunner) reports() []AppReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	out := make([]AppReport, 0, len(r.apps)+len(r.ended))
	for _, a := range r.apps {
		out = append(out, a.report(true, now))
	}
	for _, a := range r.ended {
		out = append(out, a.report(false, now))
	}
	return out
}

// app is one container's process calling the API server with the token in
// its volume, from its pod's IP.
type app struct {
	Kind      AppKind
	Pod       types.NamespacedName
	UID       types.UID
	Node      string
	IP        netip.Addr
	tokenPath string
	url       string
	http      *http.Client
	clock     clock.Clock
	log       *zap.Logger

	stopOnce sync.Once
	stopped  chan struct{}
	done     chan struct{}

	mu    sync.Mutex
	stats appStats
}

// appStats is what an app counts.
type appStats struct {
	Requests     int
	AuthFailures int
	OtherErrors  int
	// ErrorTime is the time spent unable to authenticate, from a 401 to
	// the next success, in spans that ended; FailingSince is when the
	// current one began (zero: none).
	ErrorTime    time.Duration
	FailingSince time.Time
	// LastFailed says whether the last request failed, and LastError how.
	LastFailed bool
	LastError  string
	// SourceIP is the local address of the app's last connection.
	SourceIP netip.Addr
	// What the sandbox saw of the app's token file, for judging app
	// detection (never the token): ReplacedAt is when the file first held
	// another token than the one the app read when it started,
	// FileChangedAt when its content last changed, FirstAuthFailure the
	// app's first 401 and StoppedAt when it stopped (zero: never).
	ReplacedAt, FileChangedAt, FirstAuthFailure, StoppedAt time.Time
}

// AppReport is one app's figures.
type AppReport struct {
	Kind      AppKind
	Namespace string
	Pod       string
	UID       types.UID
	Node      string
	IP        netip.Addr
	// Running: the app still runs (it did not stop with its container).
	Running bool
	appStats
	// ErrorTime here includes the current span, up to the report.
}

func (a *app) report(running bool, now time.Time) AppReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	rep := AppReport{Kind: a.Kind, Namespace: a.Pod.Namespace, Pod: a.Pod.Name, UID: a.UID, Node: a.Node, IP: a.IP,
		Running: running, appStats: a.stats}
	if !a.stats.FailingSince.IsZero() && running {
		rep.ErrorTime += now.Sub(a.stats.FailingSince)
	}
	return rep
}

// stop ends the app and waits for its last request to end.
func (a *app) stop() {
	a.stopOnce.Do(func() { close(a.stopped) })
	<-a.done
}

func (a *app) run(ctx context.Context) {
	defer close(a.done)
	defer a.http.CloseIdleConnections()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-a.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	a.log.Info("app started")
	defer func() {
		// A span still open ends with the app.
		a.mu.Lock()
		if !a.stats.FailingSince.IsZero() {
			a.stats.ErrorTime += a.clock.Since(a.stats.FailingSince)
			a.stats.FailingSince = time.Time{}
		}
		a.stats.StoppedAt = a.clock.Now()
		a.mu.Unlock()
		a.log.Info("app stopped")
	}()
	var token []byte
	var readAt time.Time
	reload := true
	var watched fileWatch
	for {
		if token == nil || a.Kind == AppReloading && (reload || a.clock.Since(readAt) >= appReloadAfter) {
			t, err := readToken(a.tokenPath)
			switch {
			case err != nil && token == nil:
				a.log.Warn("app cannot read its token; trying again", zap.Error(err))
			case err != nil:
				a.log.Warn("app cannot read its token again; keeping the one it has", zap.Error(err))
			default:
				token, readAt, reload = t, a.clock.Now(), false
				if watched.first == nil {
					watched.first, watched.last = t, t
				}
			}
		}
		if token != nil {
			a.noteFile(&watched)
			reload = a.call(ctx, token) == http.StatusUnauthorized
		}
		select {
		case <-ctx.Done():
			return
		case <-a.clock.After(appInterval + rand.N(appIntervalJitter)):
		}
	}
}

// fileWatch is what the sandbox, not the app, remembers of an app's token
// file: the token the app started with and the file's last content.
type fileWatch struct {
	first, last []byte
}

// noteFile reads the app's token file as the sandbox's ground truth,
// whatever the app's kind does with it, and records when it first holds
// another token than the one the app started with, and when it last
// changed. The kubelet rewrites a volume on every sync, often with the same
// token: only another token counts.
func (a *app) noteFile(w *fileWatch) {
	t, err := readToken(a.tokenPath)
	if err != nil {
		return
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if bytes.Equal(t, w.last) {
		return
	}
	w.last = t
	a.stats.FileChangedAt = now
	if a.stats.ReplacedAt.IsZero() && !bytes.Equal(t, w.first) {
		a.stats.ReplacedAt = now
	}
}

// readToken reads a token file, at most maxTokenSize bytes of it.
func readToken(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenSize+1))
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSpace(data)
	switch {
	case len(data) > maxTokenSize:
		return nil, fmt.Errorf("token file %s is larger than %d bytes", path, maxTokenSize)
	case len(data) == 0:
		return nil, fmt.Errorf("token file %s is empty", path)
	}
	return data, nil
}

// call creates a SelfSubjectReview, which any authenticated identity may,
// with token, and counts the outcome; it returns the HTTP status (0: no
// answer).
func (a *app) call(ctx context.Context, token []byte) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url,
		strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
	if err != nil {
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := a.http.Do(req)
	if ctx.Err() != nil {
		return 0 // stopped: not a request the app made
	}
	status := 0
	if err == nil {
		status = resp.StatusCode
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.stats
	s.Requests++
	wasFailing := !s.FailingSince.IsZero()
	switch {
	case status >= 200 && status < 300:
		s.LastFailed, s.LastError = false, ""
		if wasFailing {
			s.ErrorTime += now.Sub(s.FailingSince)
			s.FailingSince = time.Time{}
			a.log.Info("app authenticates again", zap.Int("afterAuthFailures", s.AuthFailures))
		}
	case status == http.StatusUnauthorized:
		s.AuthFailures++
		if s.FirstAuthFailure.IsZero() {
			s.FirstAuthFailure = now
		}
		s.LastFailed, s.LastError = true, "401 Unauthorized"
		if !wasFailing {
			s.FailingSince = now
			a.log.Info("app fails to authenticate")
		}
	default:
		s.OtherErrors++
		s.LastFailed = true
		if err != nil {
			// Go's client errors name the method and URL, never a header.
			s.LastError = err.Error()
		} else {
			s.LastError = resp.Status
		}
	}
	return status
}
