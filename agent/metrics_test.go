package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	restfake "k8s.io/client-go/rest/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

// oidcDiscovery is a REST client of an API server that answers OIDC
// discovery with issuer.
func oidcDiscovery(issuer string) rest.Interface {
	return &restfake.RESTClient{
		NegotiatedSerializer: scheme.Codecs.WithoutConversion(),
		Client: restfake.CreateHTTPClient(func(req *http.Request) (*http.Response, error) {
			if req.URL.Path != "/.well-known/openid-configuration" {
				return &http.Response{StatusCode: http.StatusNotFound, Body: io.NopCloser(strings.NewReader(""))}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(fmt.Sprintf(`{"issuer":%q}`, issuer)))}, nil
		}),
	}
}

// writeVolume lays out a projected volume as the kubelet's AtomicWriter
// does: the files in a timestamped directory, ..data linked to it, and each
// visible name linked through ..data.
func writeVolume(t *testing.T, root, uid, vol string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~projected", vol)
	ts := "..2026_11_27_11_59_00.000000001"
	if err := os.MkdirAll(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(ts, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// boundToken is a token of pod ns/pod issued by iss at iat for ttl seconds.
func boundToken(iss, ns, pod, uid string, iat, ttl int64) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(map[string]any{
		"iss": iss, "aud": []string{iss}, "iat": iat, "nbf": iat, "exp": iat + ttl,
		"sub": "system:serviceaccount:" + ns + ":default",
		"kubernetes.io": map[string]any{
			"namespace": ns, "pod": map[string]any{"name": pod, "uid": uid},
			"serviceaccount": map[string]any{"name": "default", "uid": "sa-uid"},
			"node":           map[string]any{"name": "node-1", "uid": "node-uid"},
		},
	})
	return enc.EncodeToString([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte("signature"))
}

// TestMetricsExposition scans a node with one token in each of four states
// and compares the agent's whole exposition with the exact text expected.
func TestMetricsExposition(t *testing.T) {
	const oldIss, newIss = "https://kubernetes.default.svc", "https://test.default.svc"
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC) // 1795780800
	at := func(offset int64) int64 { return now.Unix() + offset }
	root := t.TempDir()
	const robot, web = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
	// Every token lives 4000 s: the kubelet refreshes it 3200 s after iat.
	writeVolume(t, root, robot, "kube-api-access-abcde", map[string]string{
		"token":     boundToken(newIss, "build", "robot", robot, at(-400), 4000), // fresh, refreshAt now+2800
		"ca.crt":    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		"namespace": "build",
	})
	writeVolume(t, root, robot, "vault-token", map[string]string{
		"token": boundToken(oldIss, "build", "robot", robot, at(-1000), 4000), // issuer-mismatch, refreshAt now+2200
	})
	writeVolume(t, root, web, "kube-api-access-fghij", map[string]string{
		"token":  boundToken(newIss, "web", "web-0", web, at(-3600), 4000), // overdue, refreshAt now-400
		"broken": strings.Repeat("x", 70<<10),                              // invalid: too large to be a token
	})

	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	reg := prometheus.NewRegistry()
	a, err := New(Config{
		NodeName: "node-1", KubeletRoot: root, Client: client.CoreV1().Nodes(), Discovery: oidcDiscovery(newIss),
		Interval: 30 * time.Second, Grace: 5 * time.Minute, IssuerRefresh: time.Minute, MaxTokenSeries: 2,
		Registry: reg, Clock: clocktesting.NewFakeClock(now),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a.readIssuer(ctx, readStart)
	r := a.ScanOnce(ctx)
	if r == nil || len(r.Tokens) != 4 {
		t.Fatalf("scan: %+v", r)
	}

	// The scan's gauges: three stale series would pass the cap of two, so
	// the least severe (overdue) is left out.
	wantScan := `
# HELP tokenroll_tokens Projected service-account tokens on this node by state and namespace, from the last scan.
# TYPE tokenroll_tokens gauge
tokenroll_tokens{namespace="",state="invalid"} 1
tokenroll_tokens{namespace="build",state="fresh"} 1
tokenroll_tokens{namespace="build",state="issuer-mismatch"} 1
tokenroll_tokens{namespace="web",state="overdue"} 1
# HELP tokenroll_token_oldest_age_ratio Age of the oldest live token as a fraction of its lifetime (the kubelet refreshes at 0.8).
# TYPE tokenroll_token_oldest_age_ratio gauge
tokenroll_token_oldest_age_ratio 0.9
# HELP tokenroll_token_next_refresh_timestamp_seconds Earliest refreshAt among live tokens (Unix time); absent when there are none.
# TYPE tokenroll_token_next_refresh_timestamp_seconds gauge
tokenroll_token_next_refresh_timestamp_seconds 1795780400
# HELP tokenroll_token_latest_overdue_refresh_timestamp_seconds Latest refreshAt among overdue tokens (Unix time); absent when none is overdue.
# TYPE tokenroll_token_latest_overdue_refresh_timestamp_seconds gauge
tokenroll_token_latest_overdue_refresh_timestamp_seconds 1795780400
# HELP tokenroll_stale_token_refresh_timestamp_seconds One series per token that is not fresh (capped by --max-token-series and --max-token-series-per-namespace): its refreshAt (Unix time), 0 when unknown.
# TYPE tokenroll_stale_token_refresh_timestamp_seconds gauge
tokenroll_stale_token_refresh_timestamp_seconds{namespace="",path="broken",pod="",state="invalid",volume="kube-api-access-fghij"} 0
tokenroll_stale_token_refresh_timestamp_seconds{namespace="build",path="token",pod="robot",state="issuer-mismatch",volume="vault-token"} 1795783000
`
	if err := testutil.CollectAndCompare(a.metrics, strings.NewReader(wantScan)); err != nil {
		t.Error(err)
	}

	// The whole registry: the scan's gauges, the counters and the scan's duration (zero on the fake clock): one
	// condition and one report written, no error. Nothing else.
	wantRest := `
# HELP tokenroll_expected_issuer_known 1 when the API server's issuer is known (tokens are checked against it), 0 when neither OIDC discovery nor the coordinator's published issuer has given it yet.
# TYPE tokenroll_expected_issuer_known gauge
tokenroll_expected_issuer_known 1
# HELP tokenroll_expected_issuer_source 1 for where the expected issuer in force came from: published (the coordinator's ConfigMap, watched) or discovery (OIDC discovery, read); 0 for the other.
# TYPE tokenroll_expected_issuer_source gauge
tokenroll_expected_issuer_source{source="discovery"} 1
tokenroll_expected_issuer_source{source="published"} 0
# HELP tokenroll_issuer_discovery_reads_total Reads of the API server's OIDC discovery document by reason: start, interval (no issuer published), rescan (after a request, no issuer published), unexpected_issuer (a new token of another issuer than the published one).
# TYPE tokenroll_issuer_discovery_reads_total counter
tokenroll_issuer_discovery_reads_total{reason="interval"} 0
tokenroll_issuer_discovery_reads_total{reason="rescan"} 0
tokenroll_issuer_discovery_reads_total{reason="start"} 1
tokenroll_issuer_discovery_reads_total{reason="unexpected_issuer"} 0
# HELP tokenroll_last_scan_timestamp_seconds When the last successful scan finished (Unix time).
# TYPE tokenroll_last_scan_timestamp_seconds gauge
tokenroll_last_scan_timestamp_seconds 1795780800
# HELP tokenroll_node_condition_updates_total Writes of the ServiceAccountTokensStale condition to the Node (only on change).
# TYPE tokenroll_node_condition_updates_total counter
tokenroll_node_condition_updates_total 1
# HELP tokenroll_node_report_updates_total Writes of the tokenroll.io/tokens annotation (the coordinator's summary) to the Node (only on change).
# TYPE tokenroll_node_report_updates_total counter
tokenroll_node_report_updates_total 1
# HELP tokenroll_scan_duration_seconds Time one scan of the kubelet root takes.
# TYPE tokenroll_scan_duration_seconds histogram
tokenroll_scan_duration_seconds_bucket{le="0.005"} 1
tokenroll_scan_duration_seconds_bucket{le="0.01"} 1
tokenroll_scan_duration_seconds_bucket{le="0.02"} 1
tokenroll_scan_duration_seconds_bucket{le="0.04"} 1
tokenroll_scan_duration_seconds_bucket{le="0.08"} 1
tokenroll_scan_duration_seconds_bucket{le="0.16"} 1
tokenroll_scan_duration_seconds_bucket{le="0.32"} 1
tokenroll_scan_duration_seconds_bucket{le="0.64"} 1
tokenroll_scan_duration_seconds_bucket{le="1.28"} 1
tokenroll_scan_duration_seconds_bucket{le="2.56"} 1
tokenroll_scan_duration_seconds_bucket{le="5.12"} 1
tokenroll_scan_duration_seconds_bucket{le="10.24"} 1
tokenroll_scan_duration_seconds_bucket{le="+Inf"} 1
tokenroll_scan_duration_seconds_sum 0
tokenroll_scan_duration_seconds_count 1
# HELP tokenroll_scan_errors_total Scan problems by kind: root (the scan failed), directory (part of the root unreadable), pods_api, issuer_discovery, issuer_published (the coordinator's published issuer invalid, or not allowed to watch it), node_condition, node_annotation.
# TYPE tokenroll_scan_errors_total counter
tokenroll_scan_errors_total{kind="directory"} 0
tokenroll_scan_errors_total{kind="issuer_discovery"} 0
tokenroll_scan_errors_total{kind="issuer_published"} 0
tokenroll_scan_errors_total{kind="node_annotation"} 0
tokenroll_scan_errors_total{kind="node_condition"} 0
tokenroll_scan_errors_total{kind="pods_api"} 0
tokenroll_scan_errors_total{kind="root"} 0
# HELP tokenroll_stale_token_series_dropped_total Per-token series left out, summed over scans, by the cap that left them out: max_token_series or max_token_series_per_namespace.
# TYPE tokenroll_stale_token_series_dropped_total counter
tokenroll_stale_token_series_dropped_total{reason="max_token_series"} 1
tokenroll_stale_token_series_dropped_total{reason="max_token_series_per_namespace"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantScan+wantRest)); err != nil {
		t.Error(err)
	}

	// The tokens disappear (the pods are gone): their series go with them.
	if err := os.RemoveAll(filepath.Join(root, "pods")); err != nil {
		t.Fatal(err)
	}
	a.ScanOnce(ctx)
	want := `
# HELP tokenroll_token_oldest_age_ratio Age of the oldest live token as a fraction of its lifetime (the kubelet refreshes at 0.8).
# TYPE tokenroll_token_oldest_age_ratio gauge
tokenroll_token_oldest_age_ratio 0
`
	if err := testutil.CollectAndCompare(a.metrics, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// One tenant namespace full of stale tokens (here worse than every other
// namespace's, so first in line) gets at most its share of the per-token
// series; the other namespaces keep theirs, and what was left out is
// counted by the cap that left it out.
func TestPerTokenSeriesPerNamespaceCap(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	r := &scan.Report{Now: now}
	for i := range 50 {
		r.Tokens = append(r.Tokens, scan.Token{Namespace: "noisy", Pod: fmt.Sprintf("p%d", i), Volume: "v", Path: "token", State: protocol.StateExpired, RefreshAt: now})
	}
	for _, ns := range []string{"a", "b", "c"} {
		for i := range 2 {
			r.Tokens = append(r.Tokens, scan.Token{Namespace: ns, Pod: fmt.Sprintf("p%d", i), Volume: "v", Path: "token", State: protocol.StateOverdue, RefreshAt: now})
		}
	}
	perNamespace := func(m *agentMetrics) map[string]int {
		out := map[string]int{}
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, s := range m.last.stale {
			out[s.ns]++
		}
		return out
	}
	cases := []struct {
		max, perNS           int
		want                 map[string]int
		droppedTotal, perCap float64
	}{
		// Without a cap of its own the tenant takes the whole budget.
		{20, 0, map[string]int{"noisy": 20}, 36, 0},
		{20, 10, map[string]int{"noisy": 10, "a": 2, "b": 2, "c": 2}, 0, 40},
		{14, 10, map[string]int{"noisy": 10, "a": 2, "b": 2}, 2, 40},
	}
	for _, c := range cases {
		m := newAgentMetrics(prometheus.NewRegistry(), c.max, c.perNS)
		m.observe(r)
		if got := perNamespace(m); !reflect.DeepEqual(got, c.want) {
			t.Errorf("max %d, per namespace %d: series %v, want %v", c.max, c.perNS, got, c.want)
		}
		if n := testutil.CollectAndCount(m, "tokenroll_stale_token_refresh_timestamp_seconds"); n > c.max {
			t.Errorf("max %d: %d series", c.max, n)
		}
		if got := testutil.ToFloat64(m.seriesDropped.WithLabelValues(droppedTotal)); got != c.droppedTotal {
			t.Errorf("max %d, per namespace %d: %v dropped by the total cap, want %v", c.max, c.perNS, got, c.droppedTotal)
		}
		if got := testutil.ToFloat64(m.seriesDropped.WithLabelValues(droppedPerNamespace)); got != c.perCap {
			t.Errorf("max %d, per namespace %d: %v dropped by the namespace cap, want %v", c.max, c.perNS, got, c.perCap)
		}
	}
}
