package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentapp "github.com/tokenroll/tokenroll/cmd/tokenroll-agent/app"
	coordinatorapp "github.com/tokenroll/tokenroll/cmd/tokenroll-coordinator/app"
	sandboxapp "github.com/tokenroll/tokenroll/cmd/tokenroll-sandbox/app"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/logging/logtest"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

// programEnv makes this test binary run one of tokenroll's programs
// instead of its tests: the sandbox runs tokenroll-agent,
// tokenroll-coordinator and tokenroll-sandbox as processes, and each is here
// the very command its main runs (cli.Main of its app.NewCommand), linked
// once into this binary rather than built and linked three times more,
// which on the shared machine took two minutes of the test's three.
const programEnv = "TOKENROLL_E2E_PROGRAM"

var commands = map[string]cli.NewCommand{
	programs.Agent:       agentapp.NewCommand,
	programs.Coordinator: coordinatorapp.NewCommand,
	programs.Sandbox:     sandboxapp.NewCommand,
}

func TestMain(m *testing.M) {
	if name := os.Getenv(programEnv); name != "" {
		newCommand, ok := commands[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "$%s=%q: no such program\n", programEnv, name)
			os.Exit(3)
		}
		os.Exit(cli.Main(newCommand))
	}
	os.Exit(m.Run())
}

// programDir writes, for each program the sandbox runs, an executable of
// that name that runs it from this test binary, and returns their
// directory.
func programDir(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(self, "'") {
		t.Fatalf("the test binary's path %q has a quote, which the programs' scripts cannot carry", self)
	}
	dir := t.TempDir()
	for name := range commands {
		script := fmt.Sprintf("#!/bin/sh\n%s=%s exec '%s' \"$@\"\n", programEnv, name, self)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The OpenShift documentation's procedure on two nodes running the real
// kubelet code, once per strategy the procedure names, each on a cluster of
// its own, side by side: the administrator changes the issuer with no trust
// window (every token on every node goes bad at once), the simulated
// operator rolls the new revision while the coordinators (real processes)
// wait at the gate, and then remediate node by node through the agents
// (real processes running `tokenroll-sandbox node ...` against the real
// nodes). Each pod's app reloads its token file, so the apps' 401s show the
// old issuer dropped and their recovery shows the new tokens accepted.
func TestProcedureOnRealKubelets(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs control planes, the real kubelet code and tokenroll processes")
	}
	// Missing binaries fail the test, so CI cannot pass without running it.
	if _, err := controlplane.FindBinaries(""); err != nil {
		t.Fatal(err)
	}
	if _, err := controlplane.FindKubeletBinaries(""); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the real kubelet runs as root: it gives token files to the pods' users")
	}
	bin := programDir(t)
	// The runs are parallel subtests, which go on after this function
	// returns: the context ends when they do.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	t.Cleanup(cancel)
	const nodes, newIssuer = 2, "https://new.test"
	for _, strategy := range []protocol.Strategy{coordinator.KubeletRestart, coordinator.Reboot} {
		t.Run(string(strategy), func(t *testing.T) {
			t.Parallel()
			// Short: the kubelet's unix sockets live under the node roots.
			dir, err := os.MkdirTemp("", "tr-e2e-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if t.Failed() && os.Getenv("TOKENROLL_KEEP") != "" {
					t.Logf("kept %s", dir)
					return
				}
				_ = os.RemoveAll(dir)
			})
			var out logtest.Buffer
			start := time.Now()
			sum, err := sandbox.Run(ctx, sandbox.Options{
				Dir: dir, Nodes: nodes, APIServers: 1, Issuer: controlplane.DefaultIssuer, NewIssuer: newIssuer,
				Strategy: string(strategy), MaxUnavailable: "1", RebootDowntime: 2 * time.Second,
				Kubelet: sandbox.KubeletReal, Apps: []string{string(sandbox.AppReloading)}, Timeout: 3 * time.Minute, ProgramDir: bin,
			}, &out)
			t.Logf("%s on %d real nodes took %s", strategy, nodes, time.Since(start).Round(100*time.Millisecond))
			if err != nil || sum == nil || !sum.OK {
				t.Fatalf("the procedure with --strategy=%s did not end OK: %v\n%s", strategy, err, out.String())
			}
			checkProcedure(t, strategy, sum, out.String(), nodes, newIssuer)
		})
	}
}

// checkProcedure checks a run's summary and output beyond its OK: what the
// sandbox saw with its own eyes, not the coordinator's account.
func checkProcedure(t *testing.T, strategy protocol.Strategy, sum *sandbox.Summary, out string, nodes int, newIssuer string) {
	t.Helper()
	tokens := nodes * sandbox.TokensPerNode
	if sum.Kubelet != sandbox.KubeletReal || sum.Strategy != string(strategy) || sum.Nodes != nodes {
		t.Errorf("the summary says kubelet %q, strategy %q on %d nodes; want %q, %q on %d", sum.Kubelet, sum.Strategy, sum.Nodes, sandbox.KubeletReal, strategy, nodes)
	}
	// The issuer change reached every token file on every node, and the
	// remediation replaced every one under the new issuer.
	if len(sum.TokensBefore) != 1 || sum.TokensBefore["issuer-mismatch"] != tokens {
		t.Errorf("tokens after the issuer change %v; want all %d issuer-mismatch", sum.TokensBefore, tokens)
	}
	if len(sum.TokensAfter) != 1 || sum.TokensAfter["fresh"] != tokens || sum.Issuer != newIssuer {
		t.Errorf("tokens at the end %v judged against %s; want all %d fresh under %s", sum.TokensAfter, sum.Issuer, tokens, newIssuer)
	}
	// The gate closed while the revision rolled out, and nothing was
	// disrupted before it opened (OK says so: disruption while closed is a
	// failure); then one node at a time, each acted on once, none left
	// cordoned.
	if sum.GateClosedSeconds <= 0 || sum.RolloutSeconds <= 0 {
		t.Errorf("gate closed %.1fs, rollout %.1fs; want both more than 0", sum.GateClosedSeconds, sum.RolloutSeconds)
	}
	for _, want := range []string{
		"1 node is at revision 11; 0 nodes have achieved new revision 12",
		"AllNodesAtLatestRevision: 1 node is at revision 12",
		"node(s) running the real kubelet " + controlplane.KubernetesVersion,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the output does not show %q:\n%s", want, out)
		}
	}
	if sum.MaxConcurrentDisrupted != 1 || sum.NodesLeftCordoned != 0 {
		t.Errorf("most nodes disrupted at once %d, left cordoned %d; want 1 and 0", sum.MaxConcurrentDisrupted, sum.NodesLeftCordoned)
	}
	for _, n := range []string{"worker-1", "worker-2"} {
		if sum.ActionsPerNode[n] != 1 {
			t.Errorf("%s was acted on %d times (%v); want once", n, sum.ActionsPerNode[n], sum.ActionsPerNode)
		}
		// The output shows the steps each view of the watch finds: a
		// cordon the coordinator follows with its request within the same
		// moment shows as acting; the out-of-service time below says each
		// node was cordoned.
		for _, step := range []string{n + ": acting (" + string(strategy) + ")", n + ": done"} {
			if !strings.Contains(out, step) {
				t.Errorf("the output does not show %q:\n%s", step, out)
			}
		}
	}
	// A kubelet restart renews the tokens without restarting a pod; a
	// reboot restarts every pod on the node (and drains them first).
	switch strategy {
	case coordinator.KubeletRestart:
		if sum.PodsRestarted != 0 || sum.NodeReboots != 0 {
			t.Errorf("kubelet-restart restarted %d pods and rebooted %d nodes; want none", sum.PodsRestarted, sum.NodeReboots)
		}
	case coordinator.Reboot:
		if sum.NodeReboots != nodes || sum.PodsRestarted < nodes*sandbox.PodsPerNode {
			t.Errorf("reboot rebooted %d nodes and restarted %d pods; want %d and at least %d", sum.NodeReboots, sum.PodsRestarted, nodes, nodes*sandbox.PodsPerNode)
		}
	}
	if sum.NodeSecondsOutOfService <= 0 {
		t.Errorf("%.1f node-seconds out of service; want more than 0: each node was cordoned for its action", sum.NodeSecondsOutOfService)
	}
	// The old issuer was dropped at once, so every app was refused; each
	// recovered once its node's kubelet wrote the new tokens.
	apps := sum.Apps[sandbox.AppReloading]
	if apps.Pods < nodes*sandbox.PodsPerNode-nodes || apps.AuthFailures == 0 || apps.FailingAtEnd != 0 || apps.Requests <= apps.AuthFailures {
		t.Errorf("reloading apps %+v; want every app refused after the issuer change and none failing at the end", apps)
	}
}
