package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/agent/scan"
	cliapp "github.com/tokenroll/tokenroll/cmd/tokenroll/app"
)

// The agent's scanner container runs as root with every capability dropped
// but CAP_DAC_READ_SEARCH (deploy/kustomize/base/agent-daemonset.yaml). The
// tests run as root with all of them, so scanAsAgent runs `tokenroll scan`
// in a child of the test binary that gives up the rest first: a capability
// set belongs to one thread, so the child drops the bounding set on a locked
// thread and execs itself again, and every thread of the new image starts
// from that thread's set, as a container's first process does.
const (
	capsStageEnv = "TOKENROLL_TEST_CAPS_STAGE"
	capsKeepEnv  = "TOKENROLL_TEST_CAPS_KEEP"
	capsArgsEnv  = "TOKENROLL_TEST_CAPS_ARGS"
	capsOutEnv   = "TOKENROLL_TEST_CAPS_OUT"
)

func init() {
	switch os.Getenv(capsStageEnv) {
	case "drop":
		os.Exit(dropCapsAndExec())
	case "scan":
		os.Exit(scanInChild())
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
	env = append(env, capsStageEnv+"=scan")
	err = syscall.Exec("/proc/self/exe", os.Args[:1], env)
	fmt.Fprintln(os.Stderr, "exec:", err)
	return 3
}

// scanInChild writes its effective capabilities to $TOKENROLL_TEST_CAPS_OUT
// (so the parent checks what it ran with) and runs the tokenroll command
// with the arguments in $TOKENROLL_TEST_CAPS_ARGS (JSON).
func scanInChild() int {
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
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(capsArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	cmd := cliapp.NewCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		return 1
	}
	return 0
}

// scanAsAgent runs `tokenroll scan --output json` on root as the agent's
// scanner container runs, as root with only the capabilities in keep, and
// returns its report.
func scanAsAgent(t *testing.T, root, node, issuer string, keep ...int) *scan.Report {
	t.Helper()
	args, _ := json.Marshal([]string{"scan", "--kubelet-root", root, "--node-name", node, "--issuer", issuer, "--output", "json"})
	var ks []string
	for _, k := range keep {
		ks = append(ks, strconv.Itoa(k))
	}
	capsOut := t.TempDir() + "/capeff"
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), capsStageEnv+"=drop", capsKeepEnv+"="+strings.Join(ks, ","), capsArgsEnv+"="+string(args), capsOutEnv+"="+capsOut)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tokenroll scan with capabilities %v: %v; its stderr:\n%s", keep, err, stderr.String())
	}
	raw, err := os.ReadFile(capsOut)
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, k := range keep {
		want |= 1 << k
	}
	if got, err := strconv.ParseUint(string(raw), 16, 64); err != nil || got != want {
		t.Fatalf("the scan ran with effective capabilities %s; want %016x", raw, want)
	}
	var rep scan.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("tokenroll scan wrote no JSON report: %v; its stderr:\n%s", err, stderr.String())
	}
	return &rep
}
