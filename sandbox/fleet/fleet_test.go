package fleet_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
)

// discoveryPath is what an agent reads to learn the API server's issuer.
const discoveryPath = "/.well-known/openid-configuration"

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// With CoordinatorNamespace, a fleet agent acting as its node is allowed
// to watch the published issuer and follows it: it reads OIDC discovery on
// its timer while nothing is published, never once the issuer is, and on
// its timer again once the ConfigMap is gone.
func TestAgentsFollowThePublishedIssuer(t *testing.T) {
	cp := controlplane.StartForTest(t, controlplane.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const ns = "tokenroll"
	if err := cp.PrepareNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	f, err := fleet.Start(ctx, fleet.Config{CP: cp, Dir: t.TempDir(), Nodes: []string{"node-1"}, CoordinatorNamespace: ns,
		AgentInterval: 100 * time.Millisecond, IssuerRefresh: 100 * time.Millisecond,
		AgentConfig: func(_ string, rc *rest.Config) (*rest.Config, error) {
			rc = rest.CopyConfig(rc)
			rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
				return roundTripFunc(func(r *http.Request) (*http.Response, error) {
					if r.URL.Path == discoveryPath {
						reads.Add(1)
					}
					return rt.RoundTrip(r)
				})
			})
			return rc, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); f.Wait() }()

	// Nothing published: discovery on the timer.
	waitReads(t, &reads, "with nothing published", func(n, _ int64) bool { return n >= 5 })

	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: protocol.IssuerConfigMapName, Namespace: ns},
		Data: protocol.PublishedIssuer{Issuer: controlplane.DefaultIssuer, ObservedAt: time.Now()}.Data()}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Published: the reads stop. A second without one is ten refresh
	// intervals; then none for another two.
	waitQuiet(t, &reads, time.Second)
	quietFrom := reads.Load()
	time.Sleep(2 * time.Second) // an absence of requests takes real time to see
	if n := reads.Load() - quietFrom; n != 0 {
		t.Fatalf("%d OIDC discovery reads in 2 s with the issuer published, want 0", n)
	}

	if err := admin.CoreV1().ConfigMaps(ns).Delete(ctx, protocol.IssuerConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReads(t, &reads, "after the published issuer was deleted", func(n, from int64) bool { return n >= from+5 })
}

// waitReads waits until done says the discovery read count is enough.
func waitReads(t *testing.T, reads *atomic.Int64, what string, done func(n, from int64) bool) {
	t.Helper()
	from := reads.Load()
	deadline := time.Now().Add(time.Minute)
	for !done(reads.Load(), from) {
		if time.Now().After(deadline) {
			t.Fatalf("%d OIDC discovery reads in a minute %s, want more on the agent's timer", reads.Load()-from, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitQuiet waits until no discovery read came for quiet.
func waitQuiet(t *testing.T, reads *atomic.Int64, quiet time.Duration) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	last, since := reads.Load(), time.Now()
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			t.Fatalf("the agent still reads OIDC discovery a minute after the issuer was published (%d reads); it does not follow the published issuer", reads.Load())
		}
		time.Sleep(50 * time.Millisecond)
		if n := reads.Load(); n != last {
			last, since = n, time.Now()
		}
	}
}
