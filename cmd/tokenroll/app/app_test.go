package app

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestValidateReportsEveryBadFlag(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"agent", "--node-name=", "--kubelet-root=rel", "--interval=0s", "--metrics-bind-address=nope", "--max-token-series=-1"},
			[]string{"--node-name is required", "--kubelet-root=\"rel\"", "--interval=0s", "--metrics-bind-address=\"nope\"", "--max-token-series=-1"}},
		{[]string{"agent", "--node-name=n", "--executor=magic", "--command-timeout=0s", "--max-request-age=1s", "--state-dir=rel"},
			[]string{"--executor=\"magic\"", "--command-timeout=0s", "--max-request-age=1s", "--state-dir=\"rel\""}},
		{[]string{"agent", "--node-name=n", "--executor=command"}, []string{"--executor=command needs --reboot-command"}},
		{[]string{"agent", "--node-name=n", "--system-bus=tcp:host=x", "--kubelet-unit=kubelet"}, []string{"unix:path", ".service"}},
		{[]string{"coordinator", "--lease-duration=5s", "--renew-deadline=10s", "--gate=maybe", "--strategy=pray", "--max-unavailable=0", "--namespace="},
			[]string{"--lease-duration=5s", "--gate=\"maybe\"", "--strategy=\"pray\"", "--max-unavailable=\"0\"", "--namespace is required"}},
		{[]string{"coordinator", "--max-unavailable=150%"}, []string{"at most 100%"}},
		{[]string{"coordinator", "--drain-timeout=0", "--kube-api-qps=0"}, []string{"--drain-timeout=0s", "--kube-api-qps=0"}},
		{[]string{"rollout", "start", "--strategy=nuke", "--nodes=a=(b"}, []string{"--strategy", "--nodes"}},
		{[]string{"rollout", "plan", "--gate=sometimes", "-o", "yaml"}, []string{"--gate", "--output"}},
		{[]string{"status", "--namespace="}, []string{"--namespace is required"}},
		{[]string{"scan", "--kubelet-root=/nonexistent", "--issuer=https://a", "--kubeconfig=/nonexistent", "--now=yesterday", "-o", "yaml", "--fail-on=overdue,stale"},
			[]string{"--kubelet-root=\"/nonexistent\"", "--issuer and --kubeconfig both set", "--kubeconfig=\"/nonexistent\"", "--now=\"yesterday\"", "--output=\"yaml\"", "unknown state \"stale\""}},
		{[]string{"sandbox", "--nodes=0", "--apiservers=9", "--issuer="}, []string{"--nodes=0", "--apiservers=9", "--issuer must not be empty"}},
		{[]string{"version", "-o", "xml", "--log-format=fancy"}, []string{"--output=\"xml\"", "--log-format=\"fancy\""}},
	}
	for _, c := range cases {
		code, _, stderr := run(t, c.args...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", c.args, code, ExitUsage)
		}
		for _, w := range c.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr does not name %q:\n%s", c.args, w, stderr)
			}
		}
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"version", "--nope"}, {"version", "extra"}} {
		if code, _, _ := run(t, args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, ExitUsage)
		}
	}
}

func TestClusterCommandsWithoutAClusterSaySo(t *testing.T) {
	t.Setenv("KUBECONFIG", t.TempDir()+"/none")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, args := range [][]string{{"coordinator"}, {"status"}, {"rollout", "pause"}, {"rollout", "plan"}} {
		code, _, stderr := run(t, args...)
		if code != ExitFailure || !strings.Contains(stderr, "kubeconfig") {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 naming the kubeconfig", args, code, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(out), &v); err != nil || v["version"] == "" || !strings.HasPrefix(v["goVersion"], "go") {
		t.Errorf("version -o json: %q (%v)", out, err)
	}
}

func TestSandboxOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts a control plane")
	}
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	code, out, stderr := run(t, "sandbox", "--once", "--nodes=2", "--apiservers=1", "--dir="+dir, "--log-format=json")
	if code != 0 {
		t.Fatalf("sandbox --once: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"kubeconfig", filepath.Join(dir, "kubeconfig"), "worker-1", "worker-2", "pods-api.sock"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not mention %q:\n%s", want, out)
		}
	}
	// Each node's seed pod left its vault token on disk.
	matches, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "pods", "*", "volumes", "kubernetes.io~projected", "vault-token", "vault-token"))
	if len(matches) != 2 {
		t.Errorf("found %d vault tokens on disk, want 2", len(matches))
	}
	for _, m := range matches {
		if st, err := os.Stat(m); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", m, err)
		}
	}
}
