package sandbox

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tokenroll/tokenroll/protocol"
)

func TestSpread(t *testing.T) {
	s := time.Second
	cases := []struct {
		in   []time.Duration
		want Spread
	}{
		{nil, Spread{}},
		{[]time.Duration{3 * s}, Spread{Median: 3, Max: 3}},
		{[]time.Duration{4 * s, 1 * s, 2 * s}, Spread{Median: 2, Max: 4}},
		{[]time.Duration{4 * s, 1 * s, 2 * s, 3 * s}, Spread{Median: 2.5, Max: 4}},
		{[]time.Duration{1234567 * time.Microsecond}, Spread{Median: 1.235, Max: 1.235}},
	}
	for _, c := range cases {
		if got := spread(c.in); got != c.want {
			t.Errorf("spread(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestMaxUnavailableNodes(t *testing.T) {
	for _, c := range []struct {
		v     string
		nodes int
		want  int
		bad   bool
	}{
		{"1", 5, 1, false}, {"3", 5, 3, false}, {"40%", 5, 2, false}, {"10%", 5, 1, false},
		{"0", 5, 0, true}, {"", 5, 0, true}, {"x", 5, 0, true}, {"-1", 5, 0, true},
	} {
		got, err := maxUnavailableNodes(c.v, c.nodes)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("maxUnavailableNodes(%q, %d) = %d, %v; want %d, error %v", c.v, c.nodes, got, err, c.want, c.bad)
		}
	}
}

func validOptions() Options {
	return Options{Nodes: 3, APIServers: 3, Issuer: "https://a", NewIssuer: "https://b", Strategy: "reboot",
		MaxUnavailable: "1", RebootDowntime: 5 * time.Second, Timeout: 10 * time.Minute, Kubelet: KubeletSim}
}

func TestValidateNamesEveryBadFlag(t *testing.T) {
	if err := validOptions().Validate(); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	o := Options{Nodes: 0, APIServers: 9, Issuer: "https://a", NewIssuer: "https://a", TrustWindow: -time.Hour, Strategy: "pray",
		MaxUnavailable: "0", RebootDowntime: 0, Timeout: time.Second, Dir: "/tmp/a,b", Kubelet: "hollow", Apps: []string{"reloading", "lazy"}}
	err := o.Validate()
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, want := range []string{"--nodes=0", "--apiservers=9", "--new-issuer", "--trust-window", "--strategy", "--max-unavailable", "--reboot-downtime", "--timeout", "--dir", "--kubelet", `--apps: unknown kind "lazy"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func kas(latest int32, cur []int32, target int32, issuers ...any) *unstructured.Unstructured {
	var nodes []any
	for i, c := range cur {
		n := map[string]any{"nodeName": MasterNames(len(cur))[i], "currentRevision": int64(c)}
		if i == 0 && target != 0 {
			n["targetRevision"] = int64(target)
		}
		nodes = append(nodes, n)
	}
	return &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{
		"latestAvailableRevision": int64(latest), "nodeStatuses": nodes, "serviceAccountIssuers": issuers,
		"conditions": []any{map[string]any{"type": "NodeInstallerProgressing", "status": "True", "reason": "NodeInstaller",
			"message": "3 nodes are at revision 11; 0 nodes have achieved new revision 12", "lastTransitionTime": "2026-11-27T10:00:00Z"}},
	}}}
}

func TestJudgeGate(t *testing.T) {
	if g := judgeGate(kas(12, []int32{11, 11, 11}, 0)); !g.Known || g.Open || g.Latest != 12 ||
		g.Condition != "NodeInstallerProgressing=True NodeInstaller: 3 nodes are at revision 11; 0 nodes have achieved new revision 12" {
		t.Errorf("rolling: %+v", g)
	}
	if g := judgeGate(kas(12, []int32{11, 11, 11}, 0)); !g.Progressing || !g.Since.Equal(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("NodeInstallerProgressing: %v since %s, want true since 10:00", g.Progressing, g.Since)
	}
	if g := judgeGate(kas(12, []int32{12, 12, 12}, 12)); g.Open {
		t.Errorf("a node with a target revision: %+v, want closed", g)
	}
	g := judgeGate(kas(12, []int32{12, 12, 12}, 0,
		map[string]any{"name": "https://new"}, map[string]any{"name": "https://old", "expirationTime": "2026-11-28T10:00:00Z"}))
	if !g.Open || !g.Trusted["https://old"].Equal(time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)) || len(g.Trusted) != 1 {
		t.Errorf("settled: %+v", g)
	}
	if g := judgeGate(kas(11, nil, 0)); g.Open {
		t.Errorf("no nodes: %+v, want closed", g)
	}
}

func TestGateLog(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	var g gateLog
	// Observed at the first time; the operator's transitions at the second.
	g.observe(gateView{Known: true, Open: true, Since: at(-100)}, at(0))
	g.observe(gateView{Known: true, Open: true, Since: at(-100)}, at(1))
	g.observe(gateView{Known: true, Open: false, Progressing: true, Since: at(10)}, at(10.2))
	g.observe(gateView{}, at(12)) // unknown: ignored
	g.observe(gateView{Known: true, Open: false, Progressing: true, Since: at(10)}, at(15))
	g.observe(gateView{Known: true, Open: true, Since: at(25)}, at(27)) // seen late
	if got := g.closedFor(at(30)); got != 16800*time.Millisecond {
		t.Errorf("closed for %s, want 16.8s", got)
	}
	g.observe(gateView{Known: true, Open: false, Progressing: true, Since: at(40)}, at(40.1))
	if got := g.closedFor(at(45)); got != 21700*time.Millisecond {
		t.Errorf("closed for %s while closed again, want 21.7s", got)
	}
	if n := len(g.progressing); n != 4 {
		t.Errorf("%d transitions recorded, want 4: %+v", n, g.progressing)
	}
	for _, c := range []struct {
		at   float64
		want bool
	}{{5, false}, {10.5, false}, {11.5, false}, {12.5, true}, {24.9, true}, {25.5, false}, {26, false}, {30, false}, {43, true}} {
		if got := g.rollingAt(at(c.at), time.Second); got != c.want {
			t.Errorf("rollingAt(%vs) = %v, want %v", c.at, got, c.want)
		}
	}
}

func TestTrustedUntilRefresh(t *testing.T) {
	until := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	g := gateView{Known: true, Open: true, Trusted: map[string]time.Time{"https://old": until}}
	census := func(refresh time.Time, extra protocol.State) tokenCensus {
		c := tokenCensus{States: map[protocol.State]int{protocol.StateFresh: 2, protocol.StateIssuerMismatch: 3},
			OldIssuers: map[string]time.Time{"https://old": refresh}}
		if extra != "" {
			c.States[extra] = 1
		}
		return c
	}
	if !trustedUntilRefresh(census(until.Add(-time.Hour), ""), g) {
		t.Error("old tokens refreshing an hour before the trust ends: want true")
	}
	if trustedUntilRefresh(census(until.Add(time.Hour), ""), g) {
		t.Error("old tokens refreshing after the trust ends: want false")
	}
	if trustedUntilRefresh(census(until.Add(-time.Hour), protocol.StateExpired), g) {
		t.Error("an expired token: want false")
	}
	if trustedUntilRefresh(tokenCensus{States: map[protocol.State]int{protocol.StateIssuerMismatch: 1}, OldIssuers: map[string]time.Time{"https://other": until}}, g) {
		t.Error("an issuer not trusted at all: want false")
	}
}

// The summary JSON has exactly the fields the issue names.
func TestSummaryJSONShape(t *testing.T) {
	s := &Summary{Nodes: 3, Kubelet: KubeletReal, Strategy: "reboot", TokensBefore: map[string]int{"issuer-mismatch": 9}, TokensAfter: map[string]int{"fresh": 9},
		ActionsPerNode: map[string]int{"worker-1": 1}, Failures: []string{"x"}, Issuer: "https://b", MaxUnavailable: 1,
		Apps: map[AppKind]AppFigures{AppCaching: {Pods: 3, Requests: 90, AuthFailures: 40, ErrorSeconds: 61.5, FailingAtEnd: 3, OtherErrors: 2}}}
	path := filepath.Join(t.TempDir(), "s.json")
	if err := s.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"actionsPerNode", "apps", "gateClosedSeconds", "kubelet", "leaderChanges", "maxConcurrentDisrupted", "nodeReboots", "nodeSecondsOutOfService", "nodes", "nodesLeftCordoned",
		"ok", "overheadPerNodeSeconds", "podsRestarted", "rolloutSeconds", "strategy", "tokensAfter", "tokensBefore"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("summary keys %v, want %v", keys, want)
	}
	if got, want := string(m["apps"]), `{
    "caching": {
      "pods": 3,
      "requests": 90,
      "authFailures": 40,
      "errorSeconds": 61.5,
      "errorSecondsAfterGate": 0,
      "failingAtEnd": 3
    }
  }`; got != want {
		t.Errorf("apps = %s, want %s", got, want)
	}
	if string(m["kubelet"]) != `"real"` {
		t.Errorf("kubelet = %s, want \"real\"", m["kubelet"])
	}
	if string(m["overheadPerNodeSeconds"]) != `{
    "median": 0,
    "max": 0
  }` {
		t.Errorf("overheadPerNodeSeconds = %s", m["overheadPerNodeSeconds"])
	}
}

// A child is started again after it ends or is killed, stays down while
// held, and is stopped (SIGTERM) when its context ends.
func TestChildRestartsHoldsAndStops(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "starts")
	script := `echo x >> ` + count + `; trap 'exit 0' TERM; while :; do sleep 0.05; done`
	var mu sync.Mutex
	var exits []string
	c := newChild("test", "", func(string) []string { return []string{"/bin/sh", "-c", script} }, filepath.Join(dir, "log"))
	c.exited = func(c *child, err error) {
		mu.Lock()
		exits = append(exits, waitStatus(err))
		mu.Unlock()
	}
	starts := func() int {
		data, _ := os.ReadFile(count)
		return strings.Count(string(data), "x")
	}
	waitStarts := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for starts() < n || c.pid() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d starts, want %d", starts(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if err := startChildren(ctx, &wg, []*child{c}); err != nil {
		t.Fatal(err)
	}
	waitStarts(1)
	c.kill()
	waitStarts(2)
	c.hold()
	time.Sleep(2 * restartDelay)
	if n := starts(); n != 2 || c.pid() != 0 {
		t.Fatalf("held: %d starts, pid %d; want it kept down", n, c.pid())
	}
	c.release()
	waitStarts(3)
	pid := c.pid()
	cancel()
	wg.Wait()
	if pid == 0 || c.pid() != 0 {
		t.Errorf("still running after its context ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(exits) != 0 {
		t.Errorf("kills and stops reported as exits by itself: %v", exits)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	if strings.Count(string(log), "--- sandbox: starting test") != 3 {
		t.Errorf("log:\n%s", log)
	}
}

// A child whose metrics port another process took starts on a new one.
func TestChildMovesOffATakenPort(t *testing.T) {
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if low := ephemeralLow(); low > 12000 {
		_, port, _ := net.SplitHostPort(addr)
		if p, _ := strconv.Atoi(port); p >= low {
			t.Errorf("port %d is in the ephemeral range (from %d)", p, low)
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var got []string
	c := newChild("test", addr, func(a string) []string { got = append(got, a); return []string{"/bin/true"} }, filepath.Join(t.TempDir(), "log"))
	var moved string
	c.moved = func(_ *child, old, now string) { moved = old + " -> " + now }
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] == addr || c.metricsAddr() != got[0] || moved != addr+" -> "+got[0] {
		t.Errorf("started with %v, metrics at %s, moved %q; want a new port instead of %s", got, c.metricsAddr(), moved, addr)
	}
}

func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	log := "--- sandbox: starting x (start 1)\nold line\n--- sandbox: starting x (start 2)\nline 1\npanic: boom\n\ngoroutine 1 [running]:\nmain.f()\n\tf.go:1\nmore\n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := logTail(path, 4), "panic: boom\n\ngoroutine 1 [running]:\nmain.f()"; got != want {
		t.Errorf("panic: got %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("a\nb\nc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := logTail(path, 2); got != "b\nc" {
		t.Errorf("tail: got %q", got)
	}
}
