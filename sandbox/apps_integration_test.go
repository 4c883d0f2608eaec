package sandbox

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/internal/logging/logtest"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
)

// The apps against a real API server, on one simulated node: each sends
// from its pod's IP; once the old issuer is dropped every app gets 401s;
// after a kubelet restart rewrites the files the reloading apps
// authenticate again while the caching app keeps failing, and the
// judgement says so; a reboot starts a fresh caching app that reads the
// new file. No token reaches the sandbox's log.
func TestAppsAfterAnIssuerChange(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a control plane")
	}
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const oldIssuer, newIssuer = "https://old.test", "https://new.test"
	var logs logtest.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logs), zap.DebugLevel))
	sb, err := Start(ctx, Config{Dir: t.TempDir(), Nodes: 2, APIServers: 1, Issuer: oldIssuer, Kubelet: KubeletSim,
		Apps: []AppKind{AppReloading, AppCaching}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop()
	kinds := []AppKind{AppReloading, AppCaching}
	running := func() map[string]AppReport {
		out := map[string]AppReport{}
		for _, r := range sb.AppReports() {
			if r.Running {
				out[r.Namespace+"/"+r.Pod] = r
			}
		}
		return out
	}
	waitApps := func(what string, ok func(map[string]AppReport) bool) map[string]AppReport {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			apps := running()
			if ok(apps) {
				return apps
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: apps %+v", what, apps)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var tokens [][]byte
	readTokens := func() {
		paths, _ := filepath.Glob(filepath.Join(sb.Dir(), "nodes", "*", "pods", "*", "volumes", "kubernetes.io~projected", "*", "*token"))
		for _, p := range paths {
			if data, err := os.ReadFile(p); err == nil && len(data) > 0 {
				tokens = append(tokens, bytes.TrimSpace(data))
			}
		}
	}

	// Every pod's app authenticates, each from its own pod's IP.
	apps := waitApps("every app to authenticate twice", func(apps map[string]AppReport) bool {
		if len(apps) != PodsPerNode*2 {
			return false
		}
		for _, a := range apps {
			if a.Requests-a.AuthFailures-a.OtherErrors < 2 || a.LastFailed {
				return false
			}
		}
		return true
	})
	readTokens()
	pods, err := sb.Admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: AppLabel})
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	for _, p := range pods.Items {
		a, ok := apps[p.Namespace+"/"+p.Name]
		if !ok {
			t.Fatalf("pod %s/%s runs no app", p.Namespace, p.Name)
		}
		if a.IP.String() != p.Status.PodIP || a.SourceIP != a.IP {
			t.Errorf("app of %s/%s sends from %s, pod IP %q, app IP %s", p.Namespace, p.Name, a.SourceIP, p.Status.PodIP, a.IP)
		}
		if other, dup := ips[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s/%s share IP %s", other, p.Namespace, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Namespace + "/" + p.Name
		if want := map[string]AppKind{"nginx": AppReloading, "web": AppReloading, "legacy": AppCaching}[p.Labels["app"]]; a.Kind != want {
			t.Errorf("pod %s/%s runs a %s app, want %s", p.Namespace, p.Name, a.Kind, want)
		}
	}

	// The old issuer is dropped at once: every app's token is refused.
	if err := openshiftsim.SetIssuer(ctx, sb.Dynamic, newIssuer); err != nil {
		t.Fatal(err)
	}
	for {
		if iss, err := issuer.Discover(ctx, sb.Admin.Discovery().RESTClient()); err == nil && iss == newIssuer {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the API server never signed with the new issuer")
		case <-time.After(300 * time.Millisecond):
		}
	}
	waitApps("every app to fail", func(apps map[string]AppReport) bool {
		for _, a := range apps {
			if !a.LastFailed || a.AuthFailures == 0 {
				return false
			}
		}
		return len(apps) == PodsPerNode*2
	})

	// The kubelets restart: the files hold new tokens; the reloading apps
	// read them after their next 401, the caching apps never do.
	for _, n := range sb.Nodes {
		n.(*kubeletsim.Node).RestartKubelet()
	}
	apps = waitApps("the reloading apps to authenticate again", func(apps map[string]AppReport) bool {
		for _, a := range apps {
			if a.Kind == AppReloading && a.LastFailed {
				return false
			}
		}
		return true
	})
	failures := map[string]int{}
	for k, a := range apps {
		failures[k] = a.AuthFailures
	}
	time.Sleep(5 * time.Second) // a few more requests of every app
	readTokens()
	figs, failing := judgeApps(sb.AppReports(), kinds)
	for k, a := range running() {
		if a.Kind == AppCaching && (!a.LastFailed || a.AuthFailures < failures[k]+2 || a.ErrorTime < 5*time.Second) {
			t.Errorf("caching app %s: %+v; want it still refused, at least twice since the kubelet restart", k, a)
		}
		if a.Kind == AppReloading && (a.LastFailed || a.AuthFailures != failures[k]) {
			t.Errorf("reloading app %s: %+v; want it authenticating since the kubelet restart", k, a)
		}
	}
	if figs[AppCaching].FailingAtEnd != 2 || figs[AppReloading].FailingAtEnd != 0 || figs[AppReloading].Pods != 4 || figs[AppCaching].Pods != 2 ||
		figs[AppCaching].ErrorSeconds < 10 || figs[AppReloading].ErrorSeconds <= 0 || figs[AppReloading].AuthFailures < 4 {
		t.Errorf("figures %+v", figs)
	}
	if len(failing) != 1 || !strings.Contains(failing[0], "caching apps/legacy-") || !strings.Contains(failing[0], "worker-1") ||
		!strings.Contains(failing[0], "401 Unauthorized") || strings.Contains(failing[0], "reloading") {
		t.Errorf("failures %q", failing)
	}

	// worker-1 reboots: its caching app stops with it and a fresh one
	// reads the file the kubelet writes after the boot.
	node := sb.Nodes[0].(*kubeletsim.Node)
	if err := node.Reboot(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	waitApps("a fresh caching app on worker-1 to authenticate", func(apps map[string]AppReport) bool {
		for _, a := range apps {
			if a.Kind == AppCaching && a.Node == node.Name() {
				return !a.LastFailed && a.Requests > 0 && a.AuthFailures == 0
			}
		}
		return false
	})
	readTokens()
	if _, failing := judgeApps(sb.AppReports(), kinds); len(failing) != 1 || strings.Contains(failing[0], "worker-1 ") || !strings.Contains(failing[0], "1 app(s)") {
		t.Errorf("after worker-1's reboot: %q; want worker-2's caching app alone", failing)
	}

	out := logs.String()
	if !strings.Contains(out, "app fails to authenticate") || !strings.Contains(out, "app authenticates again") {
		t.Errorf("the apps' log lacks their state changes:\n%s", out)
	}
	if len(tokens) < 3*TokensPerNode {
		t.Fatalf("read %d tokens; the check below would prove nothing", len(tokens))
	}
	for i, tok := range tokens {
		parts := bytes.Split(tok, []byte("."))
		for _, p := range append(parts, tok) {
			if len(p) > 16 && strings.Contains(out, string(p)) {
				t.Fatalf("token %d (or a part of it) is in the sandbox's log", i)
			}
		}
	}
	t.Logf("figures at the end: %+v", figs)
}
