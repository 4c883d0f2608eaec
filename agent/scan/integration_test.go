package scan_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

// TestRealTokensThroughAnIssuerChange scans tokens minted by the real API
// server and written by a simulated kubelet, before and after the issuer
// changes, with the kubelet Pods API telling live pods from leftovers.
func TestRealTokensThroughAnIssuerChange(t *testing.T) {
	const oldIss, newIss = "https://kubernetes.default.svc", "https://test.default.svc"
	c := simtest.Start(t, oldIss, "node-1")
	ctx := context.Background()
	node := c.Nodes["node-1"]
	robot, web := c.ExamplePods(t, "node-1")

	discover := func() string {
		t.Helper()
		iss, err := issuer.Discover(ctx, c.Admin.Discovery().RESTClient())
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	live := func() map[string]podsapi.Pod {
		t.Helper()
		pods, err := podsapi.List(ctx, podsapi.SocketPath(node.Root()))
		if err != nil {
			t.Fatal(err)
		}
		return pods
	}
	scanNow := func(expected string, at time.Time) *scan.Report {
		t.Helper()
		r, err := scan.NewScanner().Scan(scan.Options{Root: node.Root(), Now: at, ExpectedIssuer: expected, Grace: 5 * time.Minute, Pods: live()})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	if got := discover(); got != oldIss {
		t.Fatalf("discovery issuer %q, want %q", got, oldIss)
	}
	r := scanNow(oldIss, time.Now())
	if r.Node != "node-1" || len(r.Tokens) != 3 || r.Summary[protocol.StateFresh] != 3 {
		t.Fatalf("before the change: node %q, %s", r.Node, scan.Summary(r))
	}
	for _, tok := range r.Tokens {
		want := map[string]string{string(robot.UID): "nginx", string(web.UID): "web"}[tok.PodUID]
		if tok.Pod != want || tok.Namespace != "build" {
			t.Errorf("token %s/%s attributed to %s/%s, want build/%s", tok.Volume, tok.Path, tok.Namespace, tok.Pod, want)
		}
		if tok.Volume == "vault-token" && (tok.ServiceAccount != "build-robot" || tok.Audiences[0] != "vault" || tok.TTLSeconds != 7200 || !tok.WarnAfter.IsZero()) {
			t.Errorf("vault token: %+v", tok)
		}
		if tok.Volume != "vault-token" && (tok.TTLSeconds != 3607 || tok.WarnAfter.IsZero()) {
			t.Errorf("kube-api-access token is not judged by warnafter: %+v", tok)
		}
	}

	if err := c.CP.RestartAPIServer(ctx, 0, []string{newIss, oldIss}); err != nil {
		t.Fatal(err)
	}
	if got := discover(); got != newIss {
		t.Fatalf("discovery issuer after the change %q, want %q", got, newIss)
	}
	r = scanNow(newIss, time.Now())
	if r.Summary[protocol.StateIssuerMismatch] != 3 {
		t.Fatalf("after the change: %s, want 3 issuer-mismatch", scan.Summary(r))
	}

	// The kubelet refreshes the kube-api-access tokens at 80% of 3607 s; the
	// vault token waits for 80% of 7200 s and stays on the old issuer.
	mark := c.Events.Mark()
	c.Clock.SetTime(r.Tokens[0].IssuedAt.Add(2900 * time.Second))
	node.ResyncAll()
	for _, p := range []*corev1.Pod{robot, web} {
		c.Events.Wait(t, mark, p.Name+" kube-api-access rewritten", simtest.Is(kubeletsim.EventVolumeWritten, "node-1", p.Name, simtest.KubeAPIAccess(t, p)))
	}
	r = scanNow(newIss, time.Now())
	if r.Summary[protocol.StateFresh] != 2 || r.Summary[protocol.StateIssuerMismatch] != 1 || r.Tokens[0].Volume != "vault-token" {
		t.Errorf("after the kubelet's refresh: %s, first %s", scan.Summary(r), r.Tokens[0].Volume)
	}

	// A copy of the robot's volume under a pod directory the kubelet does
	// not run: its token names the robot, not that pod, so it is foreign,
	// never attributed to the robot, and not an alarm.
	left := filepath.Join(node.Root(), "pods", "0000-deleted-pod", scan.ProjectedDir)
	if err := os.MkdirAll(left, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", node.VolumeDir(robot.UID, "vault-token"), left).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	r = scanNow(newIss, time.Now())
	if last := r.Tokens[len(r.Tokens)-1]; r.Summary[protocol.StateForeign] != 1 || last.PodUID != "0000-deleted-pod" || last.Pod != "" {
		t.Errorf("copied volume: %s, last %+v", scan.Summary(r), last)
	}

	// A wedged kubelet: an hour and three quarters on, the vault token is
	// overdue and the kube-api-access tokens (past warnafter, a year before
	// exp) are overdue, not expired.
	node.SetStopRefreshing(true)
	r = scanNow("", time.Now().Add(6100*time.Second))
	if r.Summary[protocol.StateOverdue] != 3 {
		t.Errorf("wedged kubelet: %s, want 3 overdue", scan.Summary(r))
	}
}
