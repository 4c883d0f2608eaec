package app

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

func TestValidateReportsEveryBadFlag(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand,
		clitest.Usage{Args: []string{"--node-name=", "--kubelet-root=rel", "--interval=0s", "--metrics-bind-address=nope", "--max-token-series=-1", "--max-token-series-per-namespace=-2", "--coordinator-namespace=Token_Roll"},
			Want: []string{"--node-name is required", "--kubelet-root=\"rel\"", "--interval=0s", "--metrics-bind-address=\"nope\"", "--max-token-series=-1", "--max-token-series-per-namespace=-2", "--coordinator-namespace=\"Token_Roll\""}},
		clitest.Usage{Args: []string{"--node-name=n", "--executor=magic", "--command-timeout=0s", "--max-request-age=1s", "--state-dir=rel", "--log-level=loud"},
			Want: []string{"--executor=\"magic\"", "--command-timeout=0s", "--max-request-age=1s", "--state-dir=\"rel\"", "--log-level=\"loud\""}},
		clitest.Usage{Args: []string{"--node-name=n", "--executor=command"}, Want: []string{"--executor=command needs --reboot-command"}},
		clitest.Usage{Args: []string{"--node-name=n", "--system-bus=tcp:host=x", "--kubelet-unit=kubelet"}, Want: []string{"unix:path", ".service"}},
		// The subcommand of the program tokenroll was.
		clitest.Usage{Args: []string{"agent", "--node-name=n"}, Want: []string{"takes no arguments", "Run 'tokenroll-agent --help'"}})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// TestAgentCommandServesLintCleanMetrics runs tokenroll-agent as a cluster
// would (flags, kubeconfig, metrics port) against a simulated node, lints
// its live /metrics and stops it as Ctrl-C would.
func TestAgentCommandServesLintCleanMetrics(t *testing.T) {
	c := simtest.Start(t, controlplane.DefaultIssuer, "node-1")
	c.PrepareBuildNamespace(t, "build")
	mark := c.Events.Mark()
	c.CreatePod(t, simtest.BuildRobotPod("nginx", "build", "node-1"))
	c.Events.Wait(t, mark, "nginx synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "nginx", ""))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, c.CP.AdminConfig()); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- cli.Execute(ctx, NewCommand(&stdout, &stderr), []string{"--node-name=node-1", "--kubelet-root=" + c.Nodes["node-1"].Root(),
			"--kubeconfig=" + kubeconfig, "--metrics-bind-address=" + addr, "--log-format=json",
			"--state-dir=" + t.TempDir(), "--reboot-sentinel=", "--dry-run", "--profiling"})
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Polling a process's readiness endpoint is how anything learns it is up.
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		code, _ := get("/readyz")
		return code == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("agent never became ready: %v\n%s", err, stderr.String())
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`tokenroll_tokens{namespace="build",state="fresh"} 2`,
		`tokenroll_expected_issuer_known 1`,
		`tokenroll_build_info{`,
		`tokenroll_scan_duration_seconds_count`,
		`tokenroll_token_next_refresh_timestamp_seconds`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "tokenroll_") {
			t.Errorf("metric lint: %s: %s", p.Metric, p.Text)
		}
	}
	if code, body := get("/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "agent.(*Agent)") {
		t.Errorf("--profiling: /debug/pprof/goroutine?debug=1 answered %d without the agent's goroutines:\n%.2000s", code, body)
	}
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, cond := range node.Status.Conditions {
		if cond.Type == "ServiceAccountTokensStale" && cond.Status == corev1.ConditionFalse {
			found = true
		}
	}
	if !found {
		t.Errorf("no ServiceAccountTokensStale=False on the node: %+v", node.Status.Conditions)
	}

	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("agent exited %d after Ctrl-C\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop")
	}
	if code, _ := get("/healthz"); code != 0 {
		t.Error("metrics server still answers after the agent stopped")
	}
	// Token contents never reach the log: no JWT-shaped string in it.
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(line, "eyJ") {
			t.Errorf("log line with token-like content: %.120s", line)
		}
	}
}

// A Node deleted and registered again under the same name gets the agent's
// condition and report back without waiting for the tokens to change: the
// agent compares the Node its watch sees with what it wrote. (Its scans
// would not write them: nothing changed on the node.)
func TestAgentCommandRewritesARegisteredAgainNode(t *testing.T) {
	c := simtest.Start(t, controlplane.DefaultIssuer, "node-1")
	c.PrepareBuildNamespace(t, "build")
	mark := c.Events.Mark()
	c.CreatePod(t, simtest.BuildRobotPod("nginx", "build", "node-1"))
	c.Events.Wait(t, mark, "nginx synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "nginx", ""))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, c.CP.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- cli.Execute(ctx, NewCommand(io.Discard, &stderr), []string{"--node-name=node-1", "--kubelet-root=" + c.Nodes["node-1"].Root(),
			"--kubeconfig=" + kubeconfig, "--metrics-bind-address=" + freeAddr(t), "--log-format=json",
			"--state-dir=" + t.TempDir(), "--reboot-sentinel=", "--dry-run"})
	}()
	defer func() {
		cancel()
		<-exit
	}()
	reported := func(n *corev1.Node) bool {
		_, ok := n.Annotations[protocol.AnnotationTokens]
		for _, cond := range n.Status.Conditions {
			if string(cond.Type) == protocol.ConditionTokensStale {
				return ok
			}
		}
		return false
	}
	first := c.WaitNode(t, "node-1", "the agent's first report", reported)

	// Registered again: a new Node of the same name, without either.
	if err := c.Admin.CoreV1().Nodes().Delete(ctx, "node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: first.Labels}}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := c.WaitNode(t, "node-1", "the report on the Node registered again", reported)
	if n.UID == first.UID {
		t.Fatalf("the Node was not replaced")
	}

}

// --profiling is off unless asked for: the profiles show stack traces and
// the command line.
func TestProfilingOffByDefault(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{{nil, false}, {[]string{"--profiling"}, true}} {
		o := newAgentOptions()
		fs := pflag.NewFlagSet("tokenroll-agent", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if o.Profiling != c.want {
			t.Errorf("%q: Profiling %v, want %v", c.args, o.Profiling, c.want)
		}
	}
}
