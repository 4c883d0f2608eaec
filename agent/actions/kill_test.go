package actions

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/protocol"
)

// The child half of TestRealProcessKilledAtEveryStep: an agent process that
// handles one request with the command executor and SIGKILLs itself after
// the step named in TOKENROLL_KILL_AFTER.
func TestHelperAgentProcess(t *testing.T) {
	dir := os.Getenv("TOKENROLL_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestRealProcessKilledAtEveryStep")
	}
	host, err := NewCommand(nil, []string{"sh", "-c", "echo restart >> " + filepath.Join(dir, "host.log")}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	node := &fileNode{path: filepath.Join(dir, "status.json")}
	h, err := NewHandler(HandlerConfig{NodeName: "node-a", Executor: host, StateDir: filepath.Join(dir, "state"),
		BootIDFile: filepath.Join(dir, "boot_id"), MaxRequestAge: time.Hour, Reporter: node})
	if err != nil {
		t.Fatal(err)
	}
	step := os.Getenv("TOKENROLL_KILL_AFTER")
	h.afterStep = func(s string) {
		if s == step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal ends the process here
		}
	}
	req, _ := os.ReadFile(filepath.Join(dir, "request.json"))
	status, _ := os.ReadFile(node.path)
	if err := h.Handle(context.Background(), string(req), string(status)); err != nil {
		t.Fatal(err)
	}
}

// fileNode keeps the status annotation in a file, so it survives the child.
type fileNode struct{ path string }

func (n *fileNode) Report(_ context.Context, s protocol.Status) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(n.path, b, 0o600)
}

// TestRealProcessKilledAtEveryStep SIGKILLs a real agent process after each
// durable step and starts a new one: the kubelet restart command runs at
// most once, and a final status is reported.
func TestRealProcessKilledAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, step := range []string{"reported-accepted", "recorded-running", "reported-running", "called", "recorded-result", "reported-result"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(os.WriteFile(filepath.Join(dir, "boot_id"), []byte("boot-1\n"), 0o644))
			must(os.WriteFile(filepath.Join(dir, "request.json"),
				[]byte(fmt.Sprintf(`{"id":"r1","action":"kubelet-restart","node":"node-a","createdAt":%q}`, time.Now().UTC().Format(time.RFC3339))), 0o644))
			run := func(killAfter string) error {
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$", "-test.count=1")
				cmd.Env = append(os.Environ(), "TOKENROLL_HELPER_DIR="+dir, "TOKENROLL_KILL_AFTER="+killAfter)
				out, err := cmd.CombinedOutput()
				if err != nil && killAfter == "" {
					return fmt.Errorf("%w: %s", err, out)
				}
				return nil
			}
			must(run(step))
			for range 2 {
				must(run(""))
			}
			log, _ := os.ReadFile(filepath.Join(dir, "host.log"))
			restarts := strings.Count(string(log), "restart")
			status, err := os.ReadFile(filepath.Join(dir, "status.json"))
			must(err)
			s, err := protocol.ParseStatus(string(status))
			must(err)
			switch step {
			case "reported-accepted":
				if restarts != 1 || s.Phase != protocol.PhaseDone {
					t.Errorf("%d restarts, status %+v", restarts, s)
				}
			case "recorded-running", "reported-running":
				if restarts != 0 || s.Phase != protocol.PhaseFailed {
					t.Errorf("%d restarts, status %+v; want none and failed", restarts, s)
				}
			case "called":
				if restarts != 1 || s.Phase != protocol.PhaseFailed {
					t.Errorf("%d restarts, status %+v; want one and failed (outcome unknown)", restarts, s)
				}
			default:
				if restarts != 1 || s.Phase != protocol.PhaseDone {
					t.Errorf("%d restarts, status %+v; want one and done", restarts, s)
				}
			}
		})
	}
}
