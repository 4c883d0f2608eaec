package app

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return clitest.Run(t, NewCommand, args...)
}

func TestValidateReportsEveryBadFlag(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand,
		clitest.Usage{Args: []string{"rollout", "start", "--strategy=nuke", "--nodes=a=(b"}, Want: []string{"--strategy", "--nodes"}},
		clitest.Usage{Args: []string{"rollout", "plan", "--gate=sometimes", "-o", "yaml"}, Want: []string{"--gate", "--output"}},
		clitest.Usage{Args: []string{"status", "--namespace="}, Want: []string{"--namespace is required"}},
		clitest.Usage{Args: []string{"scan", "--kubelet-root=/nonexistent", "--issuer=https://a", "--kubeconfig=/nonexistent", "--now=yesterday", "-o", "yaml", "--fail-on=overdue,stale"},
			Want: []string{"--kubelet-root=\"/nonexistent\"", "--issuer and --kubeconfig both set", "--kubeconfig=\"/nonexistent\"", "--now=\"yesterday\"", "--output=\"yaml\"", "unknown state \"stale\""}},
		clitest.Usage{Args: []string{"version", "-o", "xml", "--log-format=fancy"}, Want: []string{"--output=\"xml\"", "--log-format=\"fancy\""}},
		clitest.Usage{Args: []string{"rollout", "retry"}, Want: []string{"name at least one node"}},
		clitest.Usage{Args: []string{"rollout", "retry", "worker-1", "Bad_Node", "--namespace="}, Want: []string{"node \"Bad_Node\"", "--namespace is required"}})
}

// The node agent, the coordinator and the sandbox are programs of their
// own: this command does not know them.
func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"version", "--nope"}, {"version", "extra"}, {"agent"}, {"coordinator"}, {"sandbox"}} {
		if code, _, stderr := run(t, args...); code != cli.ExitUsage || !strings.Contains(stderr, "Run 'tokenroll --help'") {
			t.Errorf("%v: exit %d, stderr %q; want %d and a pointer to the help", args, code, stderr, cli.ExitUsage)
		}
	}
}

func TestClusterCommandsWithoutAClusterSaySo(t *testing.T) {
	t.Setenv("KUBECONFIG", t.TempDir()+"/none")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, args := range [][]string{{"status"}, {"rollout", "pause"}, {"rollout", "plan"}} {
		code, _, stderr := run(t, args...)
		if code != cli.ExitFailure || !strings.Contains(stderr, "kubeconfig") {
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
