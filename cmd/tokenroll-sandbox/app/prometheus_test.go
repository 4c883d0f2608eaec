package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// repoPath is rel in the repository.
func repoPath(rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", filepath.FromSlash(rel))
}

// prometheusBin is the Prometheus server test/deploy/tools/build.sh builds
// (make deploy-tools), building it when missing.
func prometheusBin(t *testing.T) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("bash", repoPath("test/deploy/tools/build.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building prometheus (test/deploy/tools/build.sh): %v\n%s", err, stderr.String())
	}
	return filepath.Join(strings.TrimSpace(string(out)), "prometheus")
}

// dashboardExempt are the dashboard's queries ("panel title/refId") that
// have no data in TestSandboxScenario's run (3 nodes, --chaos), and why.
var dashboardExempt = map[string]string{
	"Previous issuer trusted for/A": "the run drops the previous issuer at once (trust window 0): no trust window is known",
	"Waiting for/A":                 "tokenroll_rollout_waiting stays 0: the coordinator never waits with no node of its rollout in progress",
	"Waiting since/A":               "tokenroll_rollout_waiting_since_timestamp_seconds stays 0, as above",
	"Node step duration (p90)/A": "--chaos kills the leader as the rollout starts and every few seconds, so each replica's step histogram sees about one node; " +
		"a series' first observation is no increase to rate()",
	"Agent action steps (p90)/A": "each agent acts once and --chaos kills agents whose node is done: each series has one observation, no increase to rate()",
	"Coordinator overhead (p90)/A": "--chaos kills the leader every few seconds, so a leader seldom sees one node end and the next start, which is what it measures; " +
		"a series' first observation is no increase to rate()",
	"Coordinator overhead (p90)/B":                  "as query A",
	"App-stale and app-failing pods by namespace/A": "the caching apps fail authentication from the issuer change on, before their token is refreshed: app detection finds them app-failing (query B), and no pod is app-stale",
	"Rollout end vs trust deadline/B":               "as Previous issuer trusted for/A: no trust window is known",
}

// checkDashboard runs every query of the shipped dashboard against what
// the sandbox's Prometheus stored in dataDir from from to to, and fails t
// for each panel (not exempt) with no value in that time.
func checkDashboard(t *testing.T, prometheus, dataDir string, from, to time.Time) {
	t.Helper()
	var d struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile(repoPath("deploy/grafana/tokenroll-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	base := servePrometheusData(t, prometheus, dataDir)
	// Grafana's variables: every node and namespace, and a rate interval
	// of four scrapes (the sandbox scrapes every second).
	vars := strings.NewReplacer("$node", ".*", "$namespace", ".*", "$__rate_interval", "4s")
	checked := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		for _, tg := range p.Targets {
			if reason, ok := dashboardExempt[p.Title+"/"+tg.RefID]; ok {
				t.Logf("panel %q query %s: exempt: %s", p.Title, tg.RefID, reason)
				continue
			}
			expr := vars.Replace(tg.Expr)
			n, err := rangeValues(base, expr, from, to)
			switch {
			case err != nil:
				t.Errorf("panel %q query %s: %v", p.Title, tg.RefID, err)
			case n == 0:
				t.Errorf("panel %q query %s has no data in the sandbox's run: %s", p.Title, tg.RefID, expr)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Error("no dashboard query checked")
	}
}

// servePrometheusData starts prometheus over dataDir with nothing to scrape
// or evaluate, and returns its URL; it stops with the test.
func servePrometheusData(t *testing.T, prometheus, dataDir string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(prometheus, "--config.file="+cfg, "--storage.tsdb.path="+dataDir, "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus over %s not ready: %v\n%s", dataDir, err, log.String())
		}
		time.Sleep(200 * time.Millisecond) // a process starting: nothing to watch
	}
}

// rangeValues counts the values (not NaN) expr has from from to to, a
// second apart.
func rangeValues(base, expr string, from, to time.Time) (int, error) {
	q := url.Values{"query": {expr}, "start": {strconv.FormatInt(from.Unix(), 10)}, "end": {strconv.FormatInt(to.Unix()+1, 10)}, "step": {"1"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/query_range?"+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Values [][2]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("%s: %w", resp.Status, err)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s: %s", resp.Status, r.Error)
	}
	n := 0
	for _, s := range r.Data.Result {
		for _, v := range s.Values {
			if f, err := strconv.ParseFloat(fmt.Sprint(v[1]), 64); err == nil && !math.IsNaN(f) {
				n++
			}
		}
	}
	return n, nil
}
