package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	restfake "k8s.io/client-go/rest/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/protocol"
)

const (
	tokenrollNS = "tokenroll"
	newIssuer   = "https://issuer-2.example"
	thirdIssuer = "https://issuer-3.example"
)

// discoveryServer is OIDC discovery whose issuer a test changes, counting
// the reads.
type discoveryServer struct {
	mu     sync.Mutex
	issuer string
	reads  int
}

func (d *discoveryServer) set(iss string) {
	d.mu.Lock()
	d.issuer = iss
	d.mu.Unlock()
}

func (d *discoveryServer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reads
}

func (d *discoveryServer) client() rest.Interface {
	return &restfake.RESTClient{
		NegotiatedSerializer: scheme.Codecs.WithoutConversion(),
		Client: restfake.CreateHTTPClient(func(req *http.Request) (*http.Response, error) {
			d.mu.Lock()
			d.reads++
			iss := d.issuer
			d.mu.Unlock()
			if req.URL.Path != "/.well-known/openid-configuration" {
				return &http.Response{StatusCode: http.StatusNotFound, Body: io.NopCloser(strings.NewReader(""))}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(fmt.Sprintf(`{"issuer":%q}`, iss)))}, nil
		}),
	}
}

// noWatchListCM is a fake clientset's ConfigMaps, which cannot serve
// watch-list semantics.
type noWatchListCM struct{ nodeclient.ConfigMaps }

func (noWatchListCM) IsWatchListSemanticsUnSupported() bool { return true }

func publishedConfigMap(iss string, at time.Time) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: protocol.IssuerConfigMapName, Namespace: tokenrollNS},
		Data: protocol.PublishedIssuer{Issuer: iss, ObservedAt: at}.Data()}
}

// issuerFixture is an agent on a simulated node with some pods, its
// published issuer watched through a fake clientset.
type issuerFixture struct {
	t    *testing.T
	ctx  context.Context
	clk  *clocktesting.FakeClock
	sim  *simNode
	cs   *fake.Clientset
	disc *discoveryServer
	a    *Agent
	logs *observer.ObservedLogs
}

func newIssuerFixture(t *testing.T, published bool, objs ...runtime.Object) *issuerFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &issuerFixture{t: t, ctx: ctx, clk: clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)),
		sim: newSimNode(t), disc: &discoveryServer{issuer: testIssuer}}
	for range 5 {
		p := f.sim.addPod(f.clk.Now())
		f.sim.writeToken(p, f.clk.Now().Add(-time.Duration(f.sim.next*400)*time.Second))
	}
	f.cs = fake.NewClientset(append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})...)
	core, logs := observer.New(zap.InfoLevel)
	f.logs = logs
	cfg := Config{NodeName: "node-1", KubeletRoot: f.sim.root, Client: f.cs.CoreV1().Nodes(), Discovery: f.disc.client(),
		Interval: time.Minute, Grace: 5 * time.Minute, IssuerRefresh: 10 * time.Minute, MaxTokenSeries: 100, Clock: f.clk, Log: zap.New(core)}
	if published {
		cfg.Published, cfg.PublishedNamespace = noWatchListCM{f.cs.CoreV1().ConfigMaps(tokenrollNS)}, tokenrollNS
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.a = a
	a.readIssuer(ctx, readStart)
	if published {
		go a.watchPublished(ctx)
		f.apply("the first list", func() bool { return a.src.synced || a.src.off })
	}
	return f
}

// apply takes in what the watch delivers, as Run does, until cond (read
// under a.mu) holds.
func (f *issuerFixture) apply(what string, cond func() bool) {
	f.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		f.a.mu.Lock()
		ok := cond()
		f.a.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-f.a.publishedChanged:
			f.a.applyPublished()
		case <-timeout:
			f.t.Fatalf("%s: the watch delivered nothing in 10 s", what)
		}
	}
}

// hour runs a simulated hour as Run does: a scan every minute (the kubelet
// refreshing tokens as they come due), the issuer timer every 10 minutes.
// It returns the discovery reads made.
func (f *issuerFixture) hour() int {
	f.t.Helper()
	before := f.disc.count()
	for m := 1; m <= 60; m++ {
		f.clk.Step(time.Minute)
		f.sim.sync(f.clk.Now())
		if m%10 == 0 {
			f.a.issuerTick(f.ctx)
		}
		if f.a.ScanOnce(f.ctx) == nil {
			f.t.Fatal("scan failed")
		}
	}
	return f.disc.count() - before
}

func (f *issuerFixture) expected() (string, string) {
	f.a.mu.Lock()
	defer f.a.mu.Unlock()
	return f.a.issuer, f.a.src.source
}

// reportedIssuer is the issuer the Node's tokens report was judged against.
func (f *issuerFixture) reportedIssuer() string {
	f.t.Helper()
	n, err := f.cs.CoreV1().Nodes().Get(f.ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		f.t.Fatalf("tokens report: %v", err)
	}
	return rep.Issuer
}

// With the coordinator's issuer published, an agent reads OIDC discovery
// once at start and not once in an hour; a new published issuer is in
// force at the next scan with no read.
func TestPublishedIssuerReplacesPolling(t *testing.T) {
	f := newIssuerFixture(t, true, publishedConfigMap(testIssuer, time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)))
	if iss, src := f.expected(); iss != testIssuer || src != sourcePublished {
		t.Fatalf("after start: issuer %q from %q, want %q published", iss, src, testIssuer)
	}
	if n := f.disc.count(); n != 1 {
		t.Errorf("%d discovery reads at start, want 1", n)
	}
	if n := f.hour(); n != 0 {
		t.Errorf("%d discovery reads in an hour with the issuer published, want 0", n)
	}
	f.a.rescanIssuer(f.ctx)
	if n := f.disc.count(); n != 1 {
		t.Errorf("a rescan read discovery with the issuer published (%d reads)", n)
	}

	// The API servers sign with a new issuer and the coordinator publishes
	// it.
	f.disc.set(newIssuer)
	f.sim.iss = newIssuer
	if _, err := f.cs.CoreV1().ConfigMaps(tokenrollNS).Update(f.ctx, publishedConfigMap(newIssuer, f.clk.Now()), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.apply("the published issuer's change", func() bool { return f.a.issuer == newIssuer })
	f.clk.Step(time.Minute)
	r := f.a.ScanOnce(f.ctx)
	if r.Summary[protocol.StateIssuerMismatch] != 5 {
		t.Errorf("scan after the change: %v, want every token issuer-mismatch", r.Summary)
	}
	if got := f.reportedIssuer(); got != newIssuer {
		t.Errorf("the Node's report is judged against %q, want %q", got, newIssuer)
	}
	if n := f.disc.count(); n != 1 {
		t.Errorf("the change cost %d discovery reads, want none", n-1)
	}
	if got := testutil.ToFloat64(f.a.metrics.issuerSource.WithLabelValues(sourcePublished)); got != 1 {
		t.Errorf("expected_issuer_source{source=published} %v, want 1", got)
	}
	// Old tokens of the previous issuer ask for no read: they were issued
	// before the agent learned the new one.
	if n := f.hour(); n != 0 {
		t.Errorf("%d discovery reads in the hour after the change, want 0", n)
	}
}

// A coordinator that stopped leaves its last issuer published. When the API
// servers change issuer again, the first token the kubelet gets under it
// makes the agent read discovery, once, and follow it.
func TestPublishedIssuerGoneStale(t *testing.T) {
	f := newIssuerFixture(t, true, publishedConfigMap(testIssuer, time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)))
	f.hour()
	f.disc.set(thirdIssuer)
	f.sim.iss = thirdIssuer
	reads := f.hour() // every token comes due within the hour
	if iss, src := f.expected(); iss != thirdIssuer || src != sourceDiscovery {
		t.Errorf("after the kubelet refreshed under a new issuer: %q from %q, want %q from discovery", iss, src, thirdIssuer)
	}
	if reads != 1 {
		t.Errorf("%d discovery reads in the hour, want exactly 1 (the first token of the unexpected issuer)", reads)
	}
	if got := testutil.ToFloat64(f.a.metrics.discoveryReads.WithLabelValues(readUnexpected)); got != 1 {
		t.Errorf("issuer_discovery_reads_total{reason=unexpected_issuer} %v, want 1", got)
	}
	if f.logs.FilterMessageSnippet("OIDC discovery serves another issuer than the coordinator published").Len() != 1 {
		t.Errorf("the disagreement was not logged once: %v", f.logs.All())
	}
	if n := f.hour(); n != 0 {
		t.Errorf("%d discovery reads the hour after, want 0", n)
	}
}

// Without a published issuer (no coordinator, or none yet), discovery is
// read every --issuer-refresh-interval as it always was, and on a rescan;
// once one is published, no more.
func TestNoPublishedIssuerPolls(t *testing.T) {
	for _, watched := range []bool{false, true} {
		t.Run(fmt.Sprintf("watched=%t", watched), func(t *testing.T) {
			f := newIssuerFixture(t, watched)
			if n := f.hour(); n != 6 {
				t.Errorf("%d discovery reads in an hour, want 6 (every 10 minutes)", n)
			}
			before := f.disc.count()
			f.a.rescanIssuer(f.ctx)
			if f.disc.count() != before+1 {
				t.Errorf("a rescan did not read discovery")
			}
			if iss, src := f.expected(); iss != testIssuer || src != sourceDiscovery {
				t.Errorf("issuer %q from %q, want %q from discovery", iss, src, testIssuer)
			}
			if !watched {
				return
			}
			if f.logs.FilterMessageSnippet("no valid issuer published").Len() != 1 {
				t.Errorf("the fallback was not logged once: %v", f.logs.All())
			}
			f.disc.set(newIssuer)
			f.sim.iss = newIssuer
			if _, err := f.cs.CoreV1().ConfigMaps(tokenrollNS).Create(f.ctx, publishedConfigMap(newIssuer, f.clk.Now()), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			f.apply("the published issuer", func() bool { return f.a.issuer == newIssuer })
			if n := f.hour(); n != 0 {
				t.Errorf("%d discovery reads in an hour once published, want 0", n)
			}
			// Deleted (the coordinator uninstalled): back to the timer, the
			// last issuer kept until discovery answers.
			before = f.disc.count()
			if err := f.cs.CoreV1().ConfigMaps(tokenrollNS).Delete(f.ctx, protocol.IssuerConfigMapName, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			f.apply("the deletion", func() bool { return f.a.src.published == nil })
			if iss, _ := f.expected(); iss != newIssuer || f.disc.count() != before {
				t.Errorf("issuer %q after the deletion, %d reads; want %q kept, no read until the timer", iss, f.disc.count()-before, newIssuer)
			}
			if n := f.hour(); n != 6 {
				t.Errorf("%d discovery reads in the hour after the deletion, want 6", n)
			}
			if f.logs.FilterMessageSnippet("no valid issuer published").Len() != 2 {
				t.Errorf("the return to the timer was not logged: %v", f.logs.All())
			}
		})
	}
}

// A published issuer that is not a valid one is refused with a clear error,
// and the agent keeps its own and reads discovery on the timer.
func TestInvalidPublishedIssuer(t *testing.T) {
	bad := publishedConfigMap("http://issuer.example/\x1b[2J", time.Now())
	f := newIssuerFixture(t, true, bad)
	if iss, src := f.expected(); iss != testIssuer || src != sourceDiscovery {
		t.Errorf("issuer %q from %q, want discovery's %q", iss, src, testIssuer)
	}
	if got := testutil.ToFloat64(f.a.metrics.scanErrors.WithLabelValues("issuer_published")); got != 1 {
		t.Errorf("scan_errors_total{kind=issuer_published} %v, want 1", got)
	}
	logged := f.logs.FilterMessageSnippet("the published issuer is not valid").All()
	if len(logged) != 1 || !strings.Contains(fmt.Sprint(logged[0].ContextMap()["error"]), "control character") ||
		strings.Contains(fmt.Sprint(logged[0].ContextMap()), "\x1b") {
		t.Errorf("want one error naming the problem, with no control character: %+v", logged)
	}
	if n := f.hour(); n != 6 {
		t.Errorf("%d discovery reads in an hour, want 6", n)
	}
	// Fixed: followed.
	if _, err := f.cs.CoreV1().ConfigMaps(tokenrollNS).Update(f.ctx, publishedConfigMap(newIssuer, f.clk.Now()), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.apply("the fixed issuer", func() bool { return f.a.issuer == newIssuer })
}

// An agent not allowed to watch the ConfigMap says so once, with the fix,
// and reads discovery on the timer; it tries the watch again every
// IssuerRefresh, no more often, and follows the published issuer once the
// grant is made, without a restart.
func TestPublishedIssuerForbidden(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	var mu sync.Mutex
	lists, allowed := 0, false
	cs.PrependReactor("list", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		lists++
		if allowed {
			return false, nil, nil
		}
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, "", errors.New("RBAC: no"))
	})
	listed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return lists
	}
	core, logs := observer.New(zap.InfoLevel)
	disc := &discoveryServer{issuer: testIssuer}
	clk := clocktesting.NewFakeClock(time.Now())
	a, err := New(Config{NodeName: "node-1", KubeletRoot: t.TempDir(), Client: cs.CoreV1().Nodes(), Discovery: disc.client(),
		Published: noWatchListCM{cs.CoreV1().ConfigMaps(tokenrollNS)}, PublishedNamespace: tokenrollNS,
		Interval: time.Minute, IssuerRefresh: 10 * time.Minute, Clock: clk, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.watchPublished(ctx) }()
	// waitRetry waits until the watch was refused lists times and waits
	// for the clock to try again.
	waitRetry := func(lists int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for listed() != lists || !clk.HasWaiters() {
			if time.Now().After(deadline) {
				t.Fatalf("%d lists, waiting on the clock %v; want %d lists, then a wait", listed(), clk.HasWaiters(), lists)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRetry(1)
	a.applyPublished()
	if a.publishedInForce() {
		t.Error("a forbidden watch counts as a published issuer")
	}
	a.issuerTick(ctx)
	if disc.count() != 1 {
		t.Errorf("%d discovery reads on the timer, want 1", disc.count())
	}

	// Refused again after IssuerRefresh, not before; said once.
	clk.Step(10*time.Minute - time.Second)
	if n := listed(); n != 1 {
		t.Errorf("%d lists before IssuerRefresh passed, want 1", n)
	}
	clk.Step(time.Second)
	waitRetry(2)
	if logs.FilterMessageSnippet("not allowed to watch").Len() != 1 || logs.FilterMessageSnippet("no valid issuer published").Len() != 1 {
		t.Errorf("want the refusal and the fallback logged once each: %v", logs.All())
	}

	// The grant is made: the next try follows the published issuer.
	if _, err := cs.CoreV1().ConfigMaps(tokenrollNS).Create(ctx, publishedConfigMap(newIssuer, clk.Now()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	allowed = true
	mu.Unlock()
	clk.Step(10 * time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-a.publishedChanged:
			a.applyPublished()
		case <-time.After(10 * time.Millisecond):
		}
		if a.publishedInForce() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the published issuer is not in force after the grant (%d lists)", listed())
		}
	}
	a.mu.Lock()
	got := a.issuer
	a.mu.Unlock()
	if got != newIssuer {
		t.Errorf("expected issuer %q, want the published %q", got, newIssuer)
	}
	if logs.FilterMessageSnippet("allowed to watch the coordinator's published issuer now").Len() != 1 {
		t.Errorf("want the grant logged once: %v", logs.All())
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch went on after its context ended")
	}
}
