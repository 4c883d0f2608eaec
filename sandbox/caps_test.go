package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/agent/scan"
	agentapp "github.com/tokenroll/tokenroll/cmd/tokenroll-agent/app"
	cliapp "github.com/tokenroll/tokenroll/cmd/tokenroll/app"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

// The agent's scanner container runs as root with every capability dropped
// but CAP_DAC_READ_SEARCH (deploy/kustomize/base/agent-daemonset.yaml). The
// tests run as root with all of them, so scanAsAgent and startAgent run
// `tokenroll scan` and `tokenroll-agent --run=scan` in a child of the test
// binary that gives up the rest first: a capability set belongs to one
// thread, so the child drops the bounding set on a locked thread and execs
// itself again, and every thread of the new image starts from that thread's
// set, as a container's first process does.
const (
	capsStageEnv   = "TOKENROLL_TEST_CAPS_STAGE"
	capsKeepEnv    = "TOKENROLL_TEST_CAPS_KEEP"
	capsProgramEnv = "TOKENROLL_TEST_CAPS_PROGRAM"
	capsArgsEnv    = "TOKENROLL_TEST_CAPS_ARGS"
	capsOutEnv     = "TOKENROLL_TEST_CAPS_OUT"
)

// capsPrograms are the commands the child runs, by $TOKENROLL_TEST_CAPS_PROGRAM.
var capsPrograms = map[string]cli.NewCommand{programs.CLI: cliapp.NewCommand, programs.Agent: agentapp.NewCommand}

func init() {
	switch os.Getenv(capsStageEnv) {
	case "drop":
		os.Exit(dropCapsAndExec())
	case "run":
		os.Exit(runInChild())
	}
}

// dropCapsAndExec keeps only the capabilities in $TOKENROLL_TEST_CAPS_KEEP
// (numbers, comma-separated) in the bounding set, sets no_new_privs as
// allowPrivilegeEscalation: false does, and execs the scan stage. Root's
// exec takes its permitted set from the bounding set.
func dropCapsAndExec() int {
	runtime.LockOSThread()
	keep := map[int]bool{}
	for _, s := range strings.Split(os.Getenv(capsKeepEnv), ",") {
		if n, err := strconv.Atoi(s); err == nil {
			keep[n] = true
		}
	}
	last, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading cap_last_cap:", err)
		return 3
	}
	lastCap, err := strconv.Atoi(strings.TrimSpace(string(last)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "parsing cap_last_cap:", err)
		return 3
	}
	for c := 0; c <= lastCap; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "dropping capability %d from the bounding set: %v\n", c, err)
			return 3
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "setting no_new_privs:", err)
		return 3
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, capsStageEnv+"=") })
	env = append(env, capsStageEnv+"=run")
	err = syscall.Exec("/proc/self/exe", os.Args[:1], env)
	fmt.Fprintln(os.Stderr, "exec:", err)
	return 3
}

// runInChild writes its effective capabilities to $TOKENROLL_TEST_CAPS_OUT
// (so the parent checks what it ran with) and runs the program named by
// $TOKENROLL_TEST_CAPS_PROGRAM with the arguments in
// $TOKENROLL_TEST_CAPS_ARGS (JSON), until it ends or SIGTERM.
func runInChild() int {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	var eff string
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff = strings.TrimSpace(v)
		}
	}
	if err := os.WriteFile(os.Getenv(capsOutEnv), []byte(eff), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	newCommand, ok := capsPrograms[os.Getenv(capsProgramEnv)]
	if !ok {
		fmt.Fprintf(os.Stderr, "$%s=%q: no such program\n", capsProgramEnv, os.Getenv(capsProgramEnv))
		return 3
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(capsArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return cli.Execute(ctx, newCommand(os.Stdout, os.Stderr), args)
}

// withCaps is program run with args as root with only the capabilities in
// keep, and the file where it writes the capabilities it ran with.
func withCaps(t *testing.T, program string, args []string, keep []int) (*exec.Cmd, string) {
	t.Helper()
	rawArgs, _ := json.Marshal(args)
	var ks []string
	for _, k := range keep {
		ks = append(ks, strconv.Itoa(k))
	}
	capsOut := filepath.Join(t.TempDir(), "capeff")
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), capsStageEnv+"=drop", capsKeepEnv+"="+strings.Join(ks, ","), capsProgramEnv+"="+program,
		capsArgsEnv+"="+string(rawArgs), capsOutEnv+"="+capsOut)
	return cmd, capsOut
}

// checkCaps fails the test unless the child ran with exactly keep, as it
// wrote in capsOut.
func checkCaps(t *testing.T, program, capsOut string, keep []int) {
	t.Helper()
	raw, err := os.ReadFile(capsOut)
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, k := range keep {
		want |= 1 << k
	}
	if got, err := strconv.ParseUint(string(raw), 16, 64); err != nil || got != want {
		t.Fatalf("%s ran with effective capabilities %s; want %016x", program, raw, want)
	}
}

// scanAsAgent runs `tokenroll scan --output json` on root as the agent's
// scanner container runs, as root with only the capabilities in keep, and
// returns its report.
func scanAsAgent(t *testing.T, root, node, issuer string, keep ...int) *scan.Report {
	t.Helper()
	cmd, capsOut := withCaps(t, programs.CLI, []string{"scan", "--kubelet-root", root, "--node-name", node, "--issuer", issuer, "--output", "json"}, keep)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tokenroll scan with capabilities %v: %v; its stderr:\n%s", keep, err, stderr.String())
	}
	checkCaps(t, "tokenroll scan", capsOut, keep)
	var rep scan.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("tokenroll scan wrote no JSON report: %v; its stderr:\n%s", err, stderr.String())
	}
	return &rep
}

// startAgent starts `tokenroll-agent --run=scan` with args, the DaemonSet's
// scanner container, as root with only the capabilities in keep, and
// returns what stops it (SIGTERM, as the kubelet stops a container) and
// fails the test unless it ran with those capabilities and stopped cleanly.
func startAgent(t *testing.T, ctx context.Context, args []string, keep ...int) (stop func()) {
	t.Helper()
	cmd, capsOut := withCaps(t, programs.Agent, append([]string{"--run=scan"}, args...), keep)
	logPath := filepath.Join(t.TempDir(), "agent.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); log.Close() }()
	var once sync.Once
	stop = func() {
		t.Helper()
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					logged, _ := os.ReadFile(logPath)
					t.Errorf("tokenroll-agent with capabilities %v ended with %v; its log:\n%s", keep, err, logged)
				}
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				err := <-exited
				t.Errorf("tokenroll-agent did not stop within 15s of SIGTERM; killed: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	// The child creates the file, then writes it: an empty file is one
	// being written.
	poll(t, ctx, "tokenroll-agent starting with capabilities "+fmt.Sprint(keep), 10*time.Second, 20*time.Millisecond, func() (bool, string) {
		raw, err := os.ReadFile(capsOut)
		return err == nil && len(raw) > 0, fmt.Sprintf("%q, %v", raw, err)
	})
	checkCaps(t, "tokenroll-agent", capsOut, keep)
	return stop
}
