package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/internal/logging/logtest"
)

// The shipped rules, rewritten for the sandbox, differ from the original
// in the for: of each alert alone, each ForDivisor times shorter.
func TestShortenRulesChangesOnlyFor(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", DefaultPrometheusRules))
	if err != nil {
		t.Fatal(err)
	}
	short, err := ShortenRules(src)
	if err != nil {
		t.Fatal(err)
	}
	var orig, got map[string]any
	if err := yaml.Unmarshal(src, &orig); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(short, &got); err != nil {
		t.Fatal(err)
	}
	rules := func(doc map[string]any) []map[string]any {
		var out []map[string]any
		for _, g := range doc["groups"].([]any) {
			for _, r := range g.(map[string]any)["rules"].([]any) {
				out = append(out, r.(map[string]any))
			}
		}
		return out
	}
	origRules, gotRules := rules(orig), rules(got)
	if len(origRules) == 0 || len(origRules) != len(gotRules) {
		t.Fatalf("%d rules, %d after shortening", len(origRules), len(gotRules))
	}
	shortened := 0
	for i, o := range origRules {
		g := gotRules[i]
		if f, ok := o["for"]; ok {
			of, err1 := model.ParseDuration(f.(string))
			gf, err2 := model.ParseDuration(fmt.Sprint(g["for"]))
			if err1 != nil || err2 != nil || time.Duration(gf)*ForDivisor != time.Duration(of) {
				t.Errorf("%v: for %v became %v, want %d times shorter", o["alert"], f, g["for"], ForDivisor)
			}
			shortened++
			delete(o, "for")
			delete(g, "for")
		} else if _, ok := g["for"]; ok {
			t.Errorf("%v: gained a for: %v", o["alert"], g["for"])
		}
	}
	if shortened == 0 {
		t.Fatal("no rule has a for:; the test proves nothing")
	}
	if !reflect.DeepEqual(orig, got) {
		t.Errorf("the rules changed beyond for:\n%s", short)
	}
}

func TestShortenRulesRefusesBadDuration(t *testing.T) {
	_, err := ShortenRules([]byte("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    for: soon\n"))
	if err == nil || !strings.Contains(err.Error(), `rule "A": for:`) {
		t.Errorf("err = %v", err)
	}
}

// The target files list every agent with its node and both coordinators,
// with the addresses they have now.
func TestWriteTargets(t *testing.T) {
	dir := t.TempDir()
	p := &promServer{dir: dir}
	agents := map[string]*child{"worker-10": {addr: "127.0.0.1:3"}, "worker-2": {addr: "127.0.0.1:2"}}
	coords := []*child{{addr: "127.0.0.1:4"}, {addr: "127.0.0.1:5"}}
	if err := p.writeTargets(agents, coords); err != nil {
		t.Fatal(err)
	}
	agents["worker-2"].addr = "127.0.0.1:9"
	if err := p.writeTargets(agents, coords); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []fileSDGroup {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var g []fileSDGroup
		if err := json.Unmarshal(data, &g); err != nil {
			t.Fatal(err)
		}
		return g
	}
	wantAgents := []fileSDGroup{{Targets: []string{"127.0.0.1:9"}, Labels: map[string]string{"node": "worker-2"}},
		{Targets: []string{"127.0.0.1:3"}, Labels: map[string]string{"node": "worker-10"}}}
	if got := read(agentTargetsFile); !reflect.DeepEqual(got, wantAgents) {
		t.Errorf("agents: %+v, want %+v", got, wantAgents)
	}
	if got := read(coordinatorTargetsFile); !reflect.DeepEqual(got, []fileSDGroup{{Targets: []string{"127.0.0.1:4", "127.0.0.1:5"}}}) {
		t.Errorf("coordinators: %+v", got)
	}
}

// fakeAlerts serves /api/v1/alerts as Prometheus does, with the alerts a
// test sets, and counts the requests.
type fakeAlerts struct {
	mu     sync.Mutex
	alerts []promAlert
	hits   chan struct{}
}

func (f *fakeAlerts) set(alerts ...promAlert) {
	f.mu.Lock()
	f.alerts = alerts
	f.mu.Unlock()
}

func (f *fakeAlerts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/alerts" {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	body, _ := json.Marshal(map[string]any{"status": "success", "data": map[string]any{"alerts": f.alerts}})
	f.mu.Unlock()
	_, _ = w.Write(body)
	select {
	case f.hits <- struct{}{}:
	default:
	}
}

func alert(name, state string, labels ...string) promAlert {
	l := map[string]string{"alertname": name, "severity": "critical"}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return promAlert{Labels: l, State: state, Annotations: map[string]string{"summary": name + " summary"}}
}

// The watcher prints an alert when it fires (not while pending), once
// per node, and when it resolves; the summary names what fired and what
// fires now.
func TestAlertWatcher(t *testing.T) {
	f := &fakeAlerts{hits: make(chan struct{}, 1)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var out logtest.Buffer
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	a := newAlertWatcher(clk, func() string { return srv.URL }, &printer{w: &out, start: time.Now()})
	ctx := context.Background()
	if _, err := a.summary(); err == nil {
		t.Error("a summary before any answer")
	}

	f.set(alert("TokenrollUntrustedIssuerTokens", "pending", "node", "worker-1"))
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if out.String() != "" {
		t.Errorf("printed a pending alert: %q", out.String())
	}
	f.set(alert("TokenrollUntrustedIssuerTokens", "firing", "node", "worker-1"), alert("TokenrollUntrustedIssuerTokens", "firing", "node", "worker-2"),
		alert("TokenrollNoLeader", "firing"))
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Step(12 * time.Second)
	f.set(alert("TokenrollUntrustedIssuerTokens", "firing", "node", "worker-2"))
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"alert firing: TokenrollUntrustedIssuerTokens node=worker-1 (critical): TokenrollUntrustedIssuerTokens summary",
		"alert firing: TokenrollUntrustedIssuerTokens node=worker-2 (critical)",
		"alert firing: TokenrollNoLeader (critical)",
		"alert resolved: TokenrollUntrustedIssuerTokens node=worker-1 (firing for 12s)",
		"alert resolved: TokenrollNoLeader (firing for 12s)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "alert firing: TokenrollUntrustedIssuerTokens node=worker-2"); n != 1 {
		t.Errorf("worker-2's alert printed %d times", n)
	}
	s, err := a.summary()
	if err != nil {
		t.Fatal(err)
	}
	want := AlertSummary{Fired: []string{"TokenrollNoLeader", "TokenrollUntrustedIssuerTokens"}, FiringAtEnd: []string{"TokenrollUntrustedIssuerTokens"}}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("summary %+v, want %+v", s, want)
	}
	f.set()
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := a.summary(); len(s.FiringAtEnd) != 0 || s.FiringAtEnd == nil || len(s.Fired) != 2 {
		t.Errorf("after every alert resolved: %+v", s)
	}
}

// run polls at once and then on each tick of its clock.
func TestAlertWatcherPollsOnTicks(t *testing.T) {
	f := &fakeAlerts{hits: make(chan struct{}, 1)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	clk := clocktesting.NewFakeClock(time.Now())
	a := newAlertWatcher(clk, func() string { return srv.URL }, &printer{w: &logtest.Buffer{}, start: time.Now()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.run(ctx) }()
	defer func() { cancel(); <-done }()
	wait := func(what string) {
		t.Helper()
		select {
		case <-f.hits:
		case <-time.After(10 * time.Second):
			t.Fatalf("no poll %s", what)
		}
	}
	wait("at the start")
	for i := range 3 {
		// The ticker exists from the start and keeps one tick.
		clk.Step(promInterval)
		wait(fmt.Sprintf("after tick %d", i+1))
	}
}

// Without a prometheus binary or the rule file, --prometheus says how to
// get them, both at once.
func TestFindPrometheusSaysHow(t *testing.T) {
	t.Setenv(PrometheusBinEnv, "")
	dir := t.TempDir()
	_, _, err := findPrometheus("", filepath.Join(dir, "none.yaml"))
	if err == nil || !strings.Contains(err.Error(), "make sandbox ARGS='--prometheus") || !strings.Contains(err.Error(), "--prometheus-rules") {
		t.Errorf("err = %v", err)
	}
	notExec := filepath.Join(dir, "prometheus")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(PrometheusBinEnv, notExec)
	if _, _, err := findPrometheus("", filepath.Join("..", DefaultPrometheusRules)); err == nil || !strings.Contains(err.Error(), "not an executable file") {
		t.Errorf("err = %v", err)
	}
	if err := os.Chmod(notExec, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, rules, err := findPrometheus("", filepath.Join("..", DefaultPrometheusRules))
	if err != nil || bin != notExec || !filepath.IsAbs(rules) {
		t.Errorf("findPrometheus = %q, %q, %v", bin, rules, err)
	}
}
