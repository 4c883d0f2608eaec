package sandbox

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

func TestParseApps(t *testing.T) {
	for _, c := range []struct {
		in      []string
		want    []AppKind
		wantErr string
	}{
		{[]string{"reloading", "caching"}, []AppKind{AppReloading, AppCaching}, ""},
		{[]string{"caching", "caching"}, []AppKind{AppCaching}, ""},
		{nil, nil, ""},
		{[]string{"none"}, nil, ""},
		{[]string{"none", "caching"}, nil, `"none" runs no app, so it stands alone`},
		{[]string{"reloading", "lazy", "x"}, nil, `unknown kind "lazy"`},
	} {
		got, err := ParseApps(c.in)
		switch {
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "--apps")):
			t.Errorf("ParseApps(%q) error %v, want one naming --apps and saying %q", c.in, err, c.wantErr)
		case c.wantErr == "" && (err != nil || !reflect.DeepEqual(got, c.want)):
			t.Errorf("ParseApps(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	if _, err := ParseApps([]string{"lazy", "x"}); err == nil || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("every bad kind is named: %v", err)
	}
}

// With --strategy kubelet-restart the caching apps' failures are what the
// strategy does, and the failure says so and what to run instead; a
// reloading app failing, or another strategy, gets no such excuse.
func TestExplainAppFailures(t *testing.T) {
	failing := []string{"2 app(s) still fail at the end, their last request refused: caching apps/legacy-1 on worker-1 (401 Unauthorized)"}
	caching := map[AppKind]AppFigures{AppReloading: {Pods: 4}, AppCaching: {Pods: 2, FailingAtEnd: 2}}
	got := explainAppFailures("kubelet-restart", caching, failing)
	if len(got) != 1 || !strings.HasPrefix(got[0], failing[0]+"; as expected of --strategy=kubelet-restart, which restarts no pod") ||
		!strings.Contains(got[0], "--strategy=auto or pod-restart") || !strings.HasSuffix(got[0], "run with --apps=reloading") {
		t.Errorf("kubelet-restart with caching apps failing: %q", got)
	}
	if failing[0] != "2 app(s) still fail at the end, their last request refused: caching apps/legacy-1 on worker-1 (401 Unauthorized)" {
		t.Errorf("the caller's failures were changed: %q", failing)
	}
	both := map[AppKind]AppFigures{AppReloading: {Pods: 4, FailingAtEnd: 1}, AppCaching: {Pods: 2, FailingAtEnd: 2}}
	for _, c := range []struct {
		strategy string
		figs     map[AppKind]AppFigures
		failures []string
	}{
		{"reboot", caching, failing},
		{"auto", caching, failing},
		{"kubelet-restart", both, failing},
		{"kubelet-restart", caching, nil},
	} {
		if got := explainAppFailures(c.strategy, c.figs, c.failures); !slices.Equal(got, c.failures) {
			t.Errorf("%s with apps %+v: %q, want the failures as they are", c.strategy, c.figs, got)
		}
	}
}

// The run is OK only if no running app's last request failed; a pod whose
// app restarted counts once, by the app that runs; the failure names the
// failing apps.
func TestJudgeApps(t *testing.T) {
	rep := func(kind AppKind, pod, node string, running bool, last bool, errTime time.Duration, reqs, auth int) AppReport {
		r := AppReport{Kind: kind, Namespace: "apps", Pod: pod, UID: k8stypes.UID("uid-" + pod), Node: node, Running: running}
		r.Requests, r.AuthFailures, r.ErrorTime, r.LastFailed = reqs, auth, errTime, last
		if last {
			r.LastError = "401 Unauthorized"
		}
		return r
	}
	reports := []AppReport{
		rep(AppReloading, "web-1", "worker-1", false, true, 3*time.Second, 10, 3), // the app before a restart
		rep(AppReloading, "web-1", "worker-1", true, false, 0, 20, 0),             // the same pod, after it
		rep(AppReloading, "web-2", "worker-2", true, false, 1500*time.Millisecond, 30, 1),
		rep(AppCaching, "legacy-2", "worker-10", true, true, 30*time.Second, 40, 30),
		rep(AppCaching, "legacy-1", "worker-2", true, true, 20*time.Second, 40, 20),
		rep(AppCaching, "legacy-3", "worker-3", false, true, 5*time.Second, 5, 5), // its pod is gone
	}
	figs, failing := judgeApps(reports, []AppKind{AppReloading, AppCaching})
	want := map[AppKind]AppFigures{
		AppReloading: {Pods: 2, Requests: 60, AuthFailures: 4, ErrorSeconds: 4.5, FailingAtEnd: 0},
		AppCaching:   {Pods: 3, Requests: 85, AuthFailures: 55, ErrorSeconds: 55, FailingAtEnd: 2},
	}
	if !reflect.DeepEqual(figs, want) {
		t.Errorf("figures %+v, want %+v", figs, want)
	}
	if len(failing) != 1 || !strings.Contains(failing[0], "2 app(s) still fail") ||
		!strings.Contains(failing[0], "caching apps/legacy-1 on worker-2 (401 Unauthorized), caching apps/legacy-2 on worker-10") ||
		strings.Contains(failing[0], "legacy-3") || strings.Contains(failing[0], "web") {
		t.Errorf("failures %q", failing)
	}

	// Every app recovered: no failure; a kind not asked for is left out and
	// one asked for with no app shows zeros.
	figs, failing = judgeApps(reports[:3], []AppKind{AppReloading, AppCaching})
	if len(failing) != 0 || figs[AppCaching] != (AppFigures{}) || figs[AppReloading].Pods != 2 {
		t.Errorf("reloading apps only: %+v, %q", figs, failing)
	}
	figs, failing = judgeApps(reports, []AppKind{AppReloading})
	if len(failing) != 0 || len(figs) != 1 {
		t.Errorf("--apps reloading: %+v, %q; caching apps judged", figs, failing)
	}
	figs, failing = judgeApps(reports, nil)
	if len(failing) != 0 || len(figs) != 0 {
		t.Errorf("--apps none: %+v, %q", figs, failing)
	}

	many := make([]AppReport, 0, maxFailingApps+3)
	for i := range maxFailingApps + 3 {
		many = append(many, rep(AppCaching, "legacy-"+string(rune('a'+i)), "worker-1", true, true, 0, 1, 1))
	}
	if _, failing := judgeApps(many, []AppKind{AppCaching}); len(failing) != 1 || !strings.HasSuffix(failing[0], "and 3 more") {
		t.Errorf("a long list is cut: %q", failing)
	}
}

// Each node's pods get addresses of their own on loopback, apart from the
// control plane's 127.0.0.1 and from every other node's.
func TestPodIPRange(t *testing.T) {
	seen := map[netip.Prefix]int{}
	for i := 1; i <= 500; i++ {
		r := podIPRange(i)
		if !r.Addr().IsLoopback() || r.Contains(netip.MustParseAddr("127.0.0.1")) || r.Bits() != 24 {
			t.Fatalf("node %d: range %s", i, r)
		}
		if j, ok := seen[r]; ok {
			t.Fatalf("nodes %d and %d share %s", j, i, r)
		}
		seen[r] = i
	}
	if got := podIPRange(1).String(); got != "127.1.1.0/24" {
		t.Errorf("worker-1: %s", got)
	}
}

// The token an app presents is the one for the API server, not another
// audience's.
func TestAPITokenPath(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "u1"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", VolumeMounts: []corev1.VolumeMount{{Name: "vault-token"}, {Name: "kube-api-access-x"}}},
			{Name: "none", VolumeMounts: []corev1.VolumeMount{{Name: "vault-token"}}}},
		Volumes: []corev1.Volume{
			{Name: "vault-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", Audience: "vault"}}}}}},
			{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ConfigMap: &corev1.ConfigMapProjection{}}, {ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}},
		}}}
	if got, want := apiTokenPath(pod, pod.Spec.Containers[0], "/r"), "/r/pods/u1/volumes/kubernetes.io~projected/kube-api-access-x/token"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := apiTokenPath(pod, pod.Spec.Containers[1], "/r"); got != "" {
		t.Errorf("a container with only a vault token: %q, want none", got)
	}
}

// A fake-runtime built before pods got IPs of their own is refused with
// the remedy, before any node starts.
func TestOldFakeRuntimeIsRefused(t *testing.T) {
	dir := t.TempDir()
	old, current := filepath.Join(dir, "old"), filepath.Join(dir, "current")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho '      --endpoint string   Unix socket' >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(current, []byte("#!/bin/sh\necho '      --pod-ip-range string   CIDR' >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkRuntimeGivesPodIPs(context.Background(), old); err == nil || !strings.Contains(err.Error(), "make kubelet") {
		t.Errorf("old fake-runtime: %v; want a refusal saying to run make kubelet", err)
	}
	if err := checkRuntimeGivesPodIPs(context.Background(), current); err != nil {
		t.Errorf("current fake-runtime: %v", err)
	}
}

// A --kubelet=sim node restarts as the real kubelet does: refused, then
// initializing, before its tokens are rewritten. The conformance test
// checks that kubeletsim's gap is the real one; this, that the sandbox's
// simulated nodes have it.
func TestSimNodesHaveTheRealRestartGap(t *testing.T) {
	cfg := simNodeConfig("worker-2", t.TempDir(), &rest.Config{Host: "https://127.0.0.1:1"}, 2, zap.NewNop(), nil)
	if cfg.RestartGap != kubeletsim.RealRestartGap || cfg.RestartGap.Refused <= 0 {
		t.Errorf("restart gap %+v, want the real kubelet's %+v", cfg.RestartGap, kubeletsim.RealRestartGap)
	}
	if cfg.PodIPs != podIPRange(2) || cfg.Name != "worker-2" {
		t.Errorf("node %s with pod IPs %s, want worker-2 with %s", cfg.Name, cfg.PodIPs, podIPRange(2))
	}
}
