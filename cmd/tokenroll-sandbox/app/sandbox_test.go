package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return clitest.Run(t, NewCommand, args...)
}

// built is where this test binary built the programs the sandbox runs.
var built struct {
	once sync.Once
	dir  string
	err  error
}

// compared is the one --compare run that TestSandboxCompare and
// TestSandboxAuto (its auto run) judge: the same cluster, issuer change and
// apps each would start, run once.
var compared struct {
	once sync.Once
	// dir holds the run's sandbox directories (sb/STRATEGY) and summaries;
	// it outlives the test that ran it, for the other.
	dir                 string
	code                int
	out, stderr, errMsg string
	took                time.Duration
}

// TestMain removes what programDir built and the --compare run's
// directory.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{built.dir, compared.dir} {
		if d != "" {
			_ = os.RemoveAll(d)
		}
	}
	os.Exit(code)
}

// compareRun runs `tokenroll-sandbox --compare` on two nodes once for this
// test binary (see TestSandboxCompare) and returns its directory, exit
// code and output; the summaries are in DIR/compare.json, each run's
// sandbox in DIR/sb/STRATEGY.
func compareRun(t *testing.T) (dir string, code int, out, stderr string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: starts a control plane, simulated nodes and tokenroll processes, once per remediation")
	}
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	bin := programDir(t)
	compared.once.Do(func() {
		var err error
		if compared.dir, err = os.MkdirTemp("", "tokenroll-compare-"); err != nil {
			compared.errMsg = err.Error()
			return
		}
		start := time.Now()
		compared.code, compared.out, compared.stderr = run(t, "--compare", "--nodes=2", "--apiservers=1", "--kubelet=sim", "--reboot-downtime=2s", "--compare-parallel=5", "--tokenroll-bin-dir="+bin,
			"--dir="+filepath.Join(compared.dir, "sb"), "--summary-json="+filepath.Join(compared.dir, "compare.json"), "--log-format=json")
		compared.took = time.Since(start)
	})
	if compared.errMsg != "" {
		t.Fatal(compared.errMsg)
	}
	t.Logf("--compare took %s", compared.took.Round(time.Second))
	return compared.dir, compared.code, compared.out, compared.stderr
}

// compareSection is what run STRATEGY of the --compare output printed,
// from its "=== --compare" line to the next run's.
func compareSection(out, strategy string) string {
	start := strings.Index(out, ", --strategy "+strategy+", on a fresh cluster\n")
	if start < 0 {
		return ""
	}
	rest := out[start:]
	if end := strings.Index(rest, "\n=== --compare: run "); end >= 0 {
		return rest[:end]
	}
	return rest
}

// programDir builds tokenroll-agent, tokenroll-coordinator and
// tokenroll-sandbox (the agents' node commands) once for this test binary,
// as make build would, and returns their directory: tests run the real
// binaries, not a stand-in.
func programDir(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "tokenroll-programs-"); built.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		built.err = programs.Build(ctx, built.dir, false, programs.Agent, programs.Coordinator, programs.Sandbox, programs.CLI)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

func TestValidateReportsEveryBadFlag(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand,
		clitest.Usage{Args: []string{"--nodes=0", "--apiservers=9", "--issuer="}, Want: []string{"--nodes=0", "--apiservers=9", "--issuer must not be empty"}},
		clitest.Usage{Args: []string{"--apps=reloading,lazy"}, Want: []string{`--apps: unknown kind "lazy"`, "reloading and caching, or none"}},
		clitest.Usage{Args: []string{"--apps=none,caching"}, Want: []string{`"none" runs no app, so it stands alone`}},
		clitest.Usage{Args: []string{"--compare", "--strategy=reboot", "--keep"}, Want: []string{"--compare runs every remediation; drop --strategy", "--compare and --keep"}},
		clitest.Usage{Args: []string{"--compare-parallel=2"}, Want: []string{"--compare-parallel=2 without --compare"}},
		clitest.Usage{Args: []string{"--compare", "--compare-parallel=-1"}, Want: []string{"--compare-parallel=-1: must not be negative"}},
		clitest.Usage{Args: []string{"--compare", "--compare-parallel=9"}, Want: []string{"--compare-parallel=9: --compare has 5 runs; give at most 5"}},
		clitest.Usage{Args: []string{"--strategy=delete-some-pods"}, Want: []string{`--strategy="delete-some-pods": must be one of reboot, delete-all-pods, `}},
		clitest.Usage{Args: []string{"sandbox", "--nodes=1"}, Want: []string{"takes no arguments", "Run 'tokenroll-sandbox --help'"}})
}

// Without its agent and coordinator binaries the sandbox says where it
// looked and how to build them, before it starts anything.
func TestMissingProgramsSaySo(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := run(t, "--tokenroll-bin-dir="+dir, "--dir="+filepath.Join(dir, "sb"))
	if code != cli.ExitFailure || !strings.Contains(stderr, "tokenroll-agent, tokenroll-coordinator, tokenroll-sandbox not found in "+dir) || !strings.Contains(stderr, "make build") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "sb")); err == nil {
		t.Error("the sandbox made its directory before finding its programs")
	}
}

func TestSandboxOnce(t *testing.T) {
	t.Parallel() // see TestSandboxScenario
	if testing.Short() {
		t.Skip("integration test: starts a control plane")
	}
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	code, out, stderr := run(t, "--once", "--kubelet=sim", "--nodes=2", "--apiservers=1", "--dir="+dir, "--log-format=json", "--tokenroll-bin-dir="+programDir(t))
	if code != 0 {
		t.Fatalf("sandbox --once: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"kubeconfig", filepath.Join(dir, "kubeconfig"), "worker-1", "worker-2", "pods-api.sock",
		filepath.Join(programDir(t), "tokenroll") + " status --kubeconfig"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not mention %q:\n%s", want, out)
		}
	}
	// Each node's build-robot pod left its vault token on disk.
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

// The whole scenario, through the command's entry point, on three nodes:
// the issuer changes with no trust window, the coordinators (real
// processes) wait out the revision rollout, then restart each node's kubelet
// through its agent (a real process running `tokenroll-sandbox node
// restart-kubelet`), one node at a time, while --chaos kills the leader as
// the rollout starts (and agents later); the summary is what an outside
// observer saw. Every token is fresh at the end and every invariant held,
// but the run is not OK: a kubelet restart restarts no pod, so each node's
// caching app still presents its old token, and the run names them.
//
// The sandbox runs overlap (t.Parallel): each has its own directory,
// control plane and ports, and spends most of its time waiting on the
// apps' and the coordinators' timers.
func TestSandboxScenario(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test: starts a control plane, simulated nodes and tokenroll processes")
	}
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	summaryPath := filepath.Join(dir, "summary.json")
	prometheus := prometheusBin(t)
	start := time.Now()
	code, out, stderr := run(t, "--nodes=3", "--kubelet=sim", "--strategy=kubelet-restart", "--chaos", "--tokenroll-bin-dir="+programDir(t), "--dir="+filepath.Join(dir, "sb"), "--summary-json="+summaryPath, "--log-format=json",
		"--prometheus", "--prometheus-bin="+prometheus, "--prometheus-rules="+repoPath("deploy/prometheus/tokenroll.rules.yaml"))
	end := time.Now()
	t.Logf("the scenario took %s", end.Sub(start).Round(time.Second))
	if code != cli.ExitFailure {
		t.Fatalf("sandbox: exit %d, want %d (the caching apps still fail)\nstdout:\n%s\nstderr:\n%s", code, cli.ExitFailure, out, stderr)
	}
	data, err := os.ReadFile(summaryPath)
	if err != nil {
		t.Fatal(err)
	}
	type appFigures struct {
		Pods         int     `json:"pods"`
		Requests     int     `json:"requests"`
		AuthFailures int     `json:"authFailures"`
		ErrorSeconds float64 `json:"errorSeconds"`
		// ErrorSecondsAfterGate is the part of ErrorSeconds after the
		// revision gate opened.
		ErrorSecondsAfterGate float64 `json:"errorSecondsAfterGate"`
		FailingAtEnd          int     `json:"failingAtEnd"`
	}
	var sum struct {
		Nodes                  int            `json:"nodes"`
		Kubelet                string         `json:"kubelet"`
		Strategy               string         `json:"strategy"`
		TokensBefore           map[string]int `json:"tokensBefore"`
		TokensAfter            map[string]int `json:"tokensAfter"`
		MaxConcurrentDisrupted int            `json:"maxConcurrentDisrupted"`
		NodesLeftCordoned      int            `json:"nodesLeftCordoned"`
		ActionsPerNode         map[string]int `json:"actionsPerNode"`
		GateClosedSeconds      float64        `json:"gateClosedSeconds"`
		RolloutSeconds         float64        `json:"rolloutSeconds"`
		OverheadPerNodeSeconds struct {
			Median, Max float64
		} `json:"overheadPerNodeSeconds"`
		LeaderChanges *int                  `json:"leaderChanges"`
		Apps          map[string]appFigures `json:"apps"`
		Alerts        *struct {
			Fired       []string `json:"fired"`
			FiringAtEnd []string `json:"firingAtEnd"`
		} `json:"alerts"`
		OK bool `json:"ok"`

		PodsRestarted           *int    `json:"podsRestarted"`
		NodeReboots             *int    `json:"nodeReboots"`
		NodeSecondsOutOfService float64 `json:"nodeSecondsOutOfService"`

		AppDetection *struct {
			TruePositives   int `json:"truePositives"`
			FalsePositives  int `json:"falsePositives"`
			FalseNegatives  int `json:"falseNegatives"`
			SecondsToDetect struct {
				Median, Max float64
			} `json:"secondsToDetect"`
		} `json:"appDetection"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sum); err != nil {
		t.Fatalf("summary %s: %v", data, err)
	}
	if sum.OK || sum.Nodes != 3 || sum.Kubelet != "sim" || sum.Strategy != "kubelet-restart" || sum.LeaderChanges == nil {
		t.Errorf("summary %s", data)
	}
	// Two reloading pods (nginx, web) and one caching pod (legacy) per
	// node; every app lost its issuer, the reloading ones recovered.
	rel, cach := sum.Apps["reloading"], sum.Apps["caching"]
	if len(sum.Apps) != 2 || rel.Pods < 6 || rel.FailingAtEnd != 0 || rel.AuthFailures == 0 || rel.ErrorSeconds <= 0 || rel.Requests <= rel.AuthFailures ||
		cach.Pods != 3 || cach.FailingAtEnd != 3 || cach.AuthFailures == 0 || cach.ErrorSeconds < rel.ErrorSeconds/2 {
		t.Errorf("apps %+v", sum.Apps)
	}
	// App detection found the three caching pods, and nothing else.
	if d := sum.AppDetection; d == nil || d.TruePositives != 3 || d.FalsePositives != 0 || d.FalseNegatives != 0 || d.SecondsToDetect.Max < d.SecondsToDetect.Median {
		t.Errorf("appDetection %+v, want the 3 caching pods found and no other", d)
	}
	if !strings.Contains(stderr, "3 app(s) still fail at the end") || !strings.Contains(stderr, "caching apps/legacy-") || strings.Contains(stderr, "reloading ") {
		t.Errorf("the error does not name the three caching apps alone:\n%s", stderr)
	}
	// The leader was killed as the rollout started; the other replica took
	// over and finished it.
	if !strings.Contains(out, "chaos: SIGKILL coordinator-") || sum.LeaderChanges == nil || *sum.LeaderChanges < 1 {
		t.Errorf("no leader killed and replaced: leaderChanges %v", sum.LeaderChanges)
	}
	// Every token held the old issuer after the change, and every one is
	// fresh under the new issuer at the end: 4 per node.
	if len(sum.TokensBefore) != 1 || sum.TokensBefore["issuer-mismatch"] != 12 {
		t.Errorf("tokensBefore %v, want 12 issuer-mismatch", sum.TokensBefore)
	}
	if len(sum.TokensAfter) != 1 || sum.TokensAfter["fresh"] != 12 {
		t.Errorf("tokensAfter %v, want 12 fresh", sum.TokensAfter)
	}
	// A kubelet restart restarts no pod and reboots no node; each node was
	// cordoned for its restart.
	if sum.PodsRestarted == nil || *sum.PodsRestarted != 0 || sum.NodeReboots == nil || *sum.NodeReboots != 0 || sum.NodeSecondsOutOfService <= 0 {
		t.Errorf("podsRestarted %v, nodeReboots %v, nodeSecondsOutOfService %v; want 0, 0 and more than 0", sum.PodsRestarted, sum.NodeReboots, sum.NodeSecondsOutOfService)
	}
	if sum.MaxConcurrentDisrupted != 1 || sum.NodesLeftCordoned != 0 {
		t.Errorf("maxConcurrentDisrupted %d, nodesLeftCordoned %d; want 1 and 0", sum.MaxConcurrentDisrupted, sum.NodesLeftCordoned)
	}
	for _, n := range []string{"worker-1", "worker-2", "worker-3"} {
		if sum.ActionsPerNode[n] != 1 {
			t.Errorf("node %s: %d actions, want 1 (actionsPerNode %v)", n, sum.ActionsPerNode[n], sum.ActionsPerNode)
		}
	}
	// Three API servers restarted one after the other: the gate was closed
	// for seconds, and the rollout came after it.
	if sum.GateClosedSeconds < 1 || sum.RolloutSeconds <= 0 || sum.OverheadPerNodeSeconds.Max < sum.OverheadPerNodeSeconds.Median {
		t.Errorf("gateClosedSeconds %v, rolloutSeconds %v, overhead %+v", sum.GateClosedSeconds, sum.RolloutSeconds, sum.OverheadPerNodeSeconds)
	}
	// What a person follows: the gate with OpenShift's messages, each
	// node's steps, and where to reach the sandbox from.
	for _, want := range []string{
		"3 nodes are at revision 11; 0 nodes have achieved new revision 12",
		"AllNodesAtLatestRevision: 3 nodes are at revision 12",
		"worker-2: acting (kubelet-restart)", "worker-2: done",
		"status --kubeconfig " + filepath.Join(dir, "sb", "kubeconfig") + " -n tokenroll",
		"/metrics", "apps caching", "FAILED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not show %q:\n%s", want, out)
		}
	}
	// At the end only the caching apps' failures still fire, as they
	// should. The old issuer's rejected tokens fire
	// TokenrollUntrustedIssuerTokens only when they outlast its shortened
	// for: (5 s) under a leader that stays: with no trust window the nodes
	// start as the gate opens, and --chaos kills the leader every few
	// seconds, so it need not fire here; the rule's own unit tests
	// (deploy/prometheus/tokenroll.rules.test.yaml) cover it. If it fired,
	// it resolved.
	if sum.Alerts == nil || !slices.Equal(sum.Alerts.FiringAtEnd, []string{"TokenrollAppFailingPods"}) {
		t.Errorf("alerts %+v: want only TokenrollAppFailingPods firing at the end", sum.Alerts)
	}
	if strings.Contains(out, "alert firing: TokenrollUntrustedIssuerTokens node=worker-") && !strings.Contains(out, "alert resolved: TokenrollUntrustedIssuerTokens node=worker-") {
		t.Errorf("output shows TokenrollUntrustedIssuerTokens firing and never resolved")
	}
	if !strings.Contains(out, "each alert's for: 60 times shorter") {
		t.Errorf("output does not show the shortened for:")
	}
	// Every panel of the dashboard has data from that run.
	checkDashboard(t, prometheus, filepath.Join(dir, "sb", "prometheus", "data"), start, end)
	// Each agent ran as a process of its own and logged there.
	for _, n := range []string{"worker-1", "worker-2", "worker-3"} {
		log, err := os.ReadFile(filepath.Join(dir, "sb", "logs", "agent-"+n+".log"))
		if err != nil || !strings.Contains(string(log), "agent starting") {
			t.Errorf("agent log of %s: %v\n%s", n, err, log)
		}
	}
}

func TestSandboxNodeCommand(t *testing.T) {
	root := t.TempDir()
	code, _, stderr := run(t, "node", "restart-kubelet", "--root", root)
	if code != cli.ExitFailure || !strings.Contains(stderr, "no simulated node serves") {
		t.Errorf("restart-kubelet without a node: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = run(t, "node", "reboot", "--down=-1s")
	if code != cli.ExitUsage || !strings.Contains(stderr, "--root is required") || !strings.Contains(stderr, "--down=-1s") {
		t.Errorf("reboot with bad flags: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := run(t, "node", "restart-kubelet", "--root", root, "--down=1s"); code != cli.ExitUsage {
		t.Errorf("restart-kubelet --down: exit %d, want %d (no such flag)", code, cli.ExitUsage)
	}
}

// --compare on two nodes: one run per remediation, each on a fresh
// cluster, and the sandbox's own counts of what each cost. The rolling
// reboot reboots both nodes and moves every pod twice over (worker-1's 3
// pods to worker-2, then worker-2's 6 to worker-1); deleting every pod
// restarts each of the 6 once and takes no node out of service; a kubelet
// restart restarts nothing and leaves the caching apps failing, an outcome
// compared, not a failure of the comparison.
func TestSandboxCompare(t *testing.T) {
	t.Parallel() // waits on timers and its own clusters (see TestSandboxScenario)
	dir, code, out, stderr := compareRun(t)
	summaryPath := filepath.Join(dir, "compare.json")
	if code != 0 {
		t.Fatalf("sandbox --compare: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	data, err := os.ReadFile(summaryPath)
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		Strategy                string         `json:"strategy"`
		OK                      bool           `json:"ok"`
		PodsRestarted           int            `json:"podsRestarted"`
		NodeReboots             int            `json:"nodeReboots"`
		NodeSecondsOutOfService float64        `json:"nodeSecondsOutOfService"`
		ActionsPerNode          map[string]int `json:"actionsPerNode"`
		Apps                    map[string]struct {
			FailingAtEnd int `json:"failingAtEnd"`
		} `json:"apps"`
	}
	var cmp struct {
		Runs []run `json:"runs"`
	}
	if err := json.Unmarshal(data, &cmp); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	runs := map[string]run{}
	var order []string
	for _, r := range cmp.Runs {
		runs[r.Strategy] = r
		order = append(order, r.Strategy)
	}
	want := append([]string{"reboot", "delete-all-pods"}, slices.DeleteFunc(slices.Clone(coordinator.StrategyNames()), func(s string) bool { return s == "reboot" })...)
	if !slices.Equal(order, want) {
		t.Fatalf("runs %v, want %v", order, want)
	}
	if r := runs["reboot"]; !r.OK || r.NodeReboots != 2 || r.PodsRestarted != 9 || r.NodeSecondsOutOfService < 2*2 {
		t.Errorf("reboot: %+v; want OK, 2 reboots, 9 pods restarted, each node out of service longer than its 2 s downtime", r)
	}
	if r := runs["delete-all-pods"]; !r.OK || r.PodsRestarted != 2*3 || r.NodeReboots != 0 || r.NodeSecondsOutOfService != 0 || r.ActionsPerNode["worker-1"]+r.ActionsPerNode["worker-2"] != 0 {
		t.Errorf("delete-all-pods: %+v; want OK, the 6 pods restarted, no reboot, no node out of service, no tokenroll action", r)
	}
	if r := runs["pod-restart"]; !r.OK || r.PodsRestarted != 2*3 || r.NodeReboots != 0 {
		t.Errorf("pod-restart: %+v; want OK, the 6 pods with stale tokens restarted, no reboot", r)
	}
	if r := runs["kubelet-restart"]; r.OK || r.PodsRestarted != 0 || r.NodeReboots != 0 || r.NodeSecondsOutOfService <= 0 || r.Apps["caching"].FailingAtEnd != 2 {
		t.Errorf("kubelet-restart: %+v; want not OK with the 2 caching apps failing, nothing restarted or rebooted, each node cordoned a moment", r)
	}
	// The runs overlap (--compare-parallel), and each one's output is
	// whole and in the runs' order.
	at := 0
	for i, s := range want {
		head := fmt.Sprintf("=== --compare: run %d of %d, --strategy %s, on a fresh cluster\n", i+1, len(want), s)
		j := strings.Index(out[at:], head)
		if j < 0 {
			t.Errorf("output lacks %q after the run before it", head)
			break
		}
		at += j + len(head)
		if sec := compareSection(out, s); !strings.Contains(sec, "stopped: every process ended") || strings.Count(sec, "step 1: ") != 1 {
			t.Errorf("the %s run's output is not whole, or holds another run's:\n%s", s, sec)
		}
	}
	for _, want := range []string{"=== --compare: run 1 of ", "--strategy delete-all-pods", "the administrator deleted 4 pod(s) in namespace apps",
		"Comparison: the same issuer change on 2 nodes (kubelet: sim), trust window 0s", "node-seconds out of service", "apps caching: errorSeconds",
		"gate open to done (s)", "the runs' summaries written to " + summaryPath} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not show %q", want)
		}
	}
	if i := strings.Index(out, "Comparison:"); i >= 0 {
		t.Logf("%s", out[i:])
	}
}
