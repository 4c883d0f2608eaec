package sandbox

import (
	"context"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
)

// The claim kubelet-restart rests on, checked against the real kubelet
// code: after an issuer change that keeps the old issuer trusted, the
// running kubelet keeps serving old-issuer tokens from its cache through
// its pod syncs, and a restarted kubelet rewrites every projected token
// under the new issuer.
func TestRealKubeletRestartRewritesTokensUnderNewIssuer(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a control plane and the real kubelet (run without -short)")
	}
	// Missing binaries fail the test, so CI cannot pass without running it.
	if _, err := controlplane.FindKubeletBinaries(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const oldIssuer, newIssuer = "https://old.test", "https://new.test"
	// Short: the kubelet's unix sockets live under the node roots.
	dir, err := os.MkdirTemp("", "tr-kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sb, err := Start(ctx, Config{Dir: dir, Nodes: 1, APIServers: 1, Issuer: oldIssuer, TrustWindow: 24 * time.Hour, Kubelet: KubeletReal})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop()
	node := sb.Nodes[0].(*realNode)

	c, err := sb.census(ctx, oldIssuer)
	if err != nil {
		t.Fatal(err)
	}
	if c.Live != TokensPerNode || !c.AllFresh() {
		t.Fatalf("before the change: %d live tokens %v, want %d fresh", c.Live, c.States, TokensPerNode)
	}

	if err := openshiftsim.SetIssuer(ctx, sb.Dynamic, newIssuer); err != nil {
		t.Fatal(err)
	}
	for {
		iss, err := issuer.Discover(ctx, sb.Admin.Discovery().RESTClient())
		if err == nil && iss == newIssuer {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the API server never signed with %s (last: %q, %v)", newIssuer, iss, err)
		case <-time.After(500 * time.Millisecond):
		}
	}

	// Two of the hollow kubelet's 10 s pod syncs and more: every sync
	// rewrites the volumes, from the token cache.
	keepUntil := time.Now().Add(25 * time.Second)
	for time.Now().Before(keepUntil) {
		c, err := sb.census(ctx, newIssuer)
		if err != nil {
			t.Fatal(err)
		}
		if c.Live != TokensPerNode || c.States[protocol.StateIssuerMismatch] != c.Live || !slices.Equal(slices.Collect(maps.Keys(c.OldIssuers)), []string{oldIssuer}) {
			t.Fatalf("the running kubelet replaced a token before its refresh time: %d live %v, old issuers %v; want %d issuer-mismatch from %s",
				c.Live, c.States, c.OldIssuers, TokensPerNode, oldIssuer)
		}
		time.Sleep(time.Second)
	}

	restarted := time.Now()
	if err := node.RestartKubelet(); err != nil {
		t.Fatal(err)
	}
	for {
		c, err := sb.census(ctx, newIssuer)
		if err != nil {
			t.Fatal(err)
		}
		if c.Live == TokensPerNode && c.AllFresh() {
			t.Logf("every token fresh under %s %s after the kubelet restart", newIssuer, time.Since(restarted).Round(100*time.Millisecond))
			return
		}
		if time.Since(restarted) > 10*time.Second {
			t.Fatalf("10s after the kubelet restart: %d live %v, old issuers %v; want %d fresh under %s; the end of the kubelet's log:\n%s",
				c.Live, c.States, c.OldIssuers, TokensPerNode, newIssuer, logTail(node.kubelet.logPath, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A node root too long for the kubelet's sockets is refused with the
// reason, before anything starts, rather than a kubelet that dies on its
// first restart.
func TestRealNodeRefusesARootTooLongForSockets(t *testing.T) {
	root := "/" + strings.Repeat("r", maxRealNodeRoot)
	n := newRealNode(realNodeConfig{Name: "worker-1", Root: root, LogDir: t.TempDir(), Log: zap.NewNop()})
	var wg sync.WaitGroup
	err := n.start(context.Background(), &wg)
	wg.Wait()
	if err == nil || !strings.Contains(err.Error(), "107 bytes") || !strings.Contains(err.Error(), "--dir") {
		t.Fatalf("start with a %d-byte root: %v; want a refusal naming the 107-byte limit and --dir", len(root), err)
	}
	if _, statErr := os.Stat(root); !os.IsNotExist(statErr) {
		t.Errorf("the refused root was created: %v", statErr)
	}
}
