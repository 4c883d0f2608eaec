package actions

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/protocol"
)

// loseState empties the state directory, as a node reprovisioned under the
// same name or a wiped directory would.
func (e *env) loseState(t *testing.T) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(e.dir, "state")); err != nil {
		t.Fatal(err)
	}
}

// With its state directory lost, the agent takes the Node's status of the
// same request as the record: a request is never carried out twice.
func TestLostStateDirTheNodeStatusIsTheRecord(t *testing.T) {
	cases := []struct {
		name   string
		action protocol.Action
		// killAt stops the first agent after that step ("" runs it through).
		killAt string
		fail   error
		// newBoot: the host rebooted before the second agent starts.
		newBoot bool
		want    protocol.RequestPhase
		says    string
		// calls is how many times the action is carried out in all.
		calls int
	}{
		{name: "kubelet restart done", action: protocol.ActionKubeletRestart, want: protocol.PhaseDone, says: "kubelet restarted", calls: 1},
		{name: "kubelet restart failed", action: protocol.ActionKubeletRestart, fail: errors.New("job failed"), want: protocol.PhaseFailed, says: "job failed", calls: 1},
		{name: "kubelet restart in flight, same boot", action: protocol.ActionKubeletRestart, killAt: "called", want: protocol.PhaseFailed,
			says: "not repeated", calls: 1},
		{name: "kubelet restart in flight, then a reboot", action: protocol.ActionKubeletRestart, killAt: "called", newBoot: true, want: protocol.PhaseDone,
			says: "restarted the kubelet", calls: 1},
		{name: "reboot that happened", action: protocol.ActionReboot, newBoot: true, want: protocol.PhaseDone, says: "rebooted: boot ID boot-2, was boot-1", calls: 1},
		{name: "reboot in flight, agent restarted in the same boot", action: protocol.ActionReboot, want: protocol.PhaseFailed, says: "not repeated", calls: 1},
		// Accepted is reported before the call can happen: acting is safe.
		{name: "only accepted", action: protocol.ActionKubeletRestart, killAt: "recorded-running", want: protocol.PhaseDone, says: "kubelet restarted", calls: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.exec.err = c.fail
			req := request("req-1", c.action, "node-a", e.clock.Now())
			if _, err := handleUntilKilled(e.agent(t), c.killAt, req, ""); err != nil {
				t.Fatal(err)
			}
			e.loseState(t)
			if c.newBoot {
				e.setBoot(t, "boot-2")
			}
			for range 3 {
				if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			if calls := e.exec.restart + e.exec.reboots; calls != c.calls {
				t.Errorf("carried out %d times, want %d", calls, c.calls)
			}
			s := e.node.get(t)
			if s.ID != "req-1" || s.Phase != c.want || !strings.Contains(s.Message, c.says) {
				t.Errorf("status %+v, want %s saying %q", s, c.want, c.says)
			}
			// The record is back: a later agent answers from it.
			if rec, err := e.agent(t).state.find("req-1"); err != nil || rec == nil || rec.Phase != c.want {
				t.Errorf("record %+v (%v), want %s", rec, err, c.want)
			}
		})
	}
}

// A final status found on the Node is not written again by an agent that
// lost its record.
func TestLostStateDirFinalStatusNotRewritten(t *testing.T) {
	e := newEnv(t)
	req := request("req-1", protocol.ActionReboot, "node-a", e.clock.Now())
	if err := e.agent(t).Handle(context.Background(), req, ""); err != nil {
		t.Fatal(err)
	}
	e.setBoot(t, "boot-2")
	if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
		t.Fatal(err)
	}
	if s := e.node.get(t); s.Phase != protocol.PhaseDone {
		t.Fatalf("status %+v, want done", s)
	}
	e.loseState(t)
	e.setBoot(t, "boot-3")
	writes := e.node.writes
	if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
		t.Fatal(err)
	}
	if e.exec.reboots != 1 || e.node.writes != writes {
		t.Errorf("%d reboots, status writes %d -> %d; want one reboot and no write", e.exec.reboots, writes, e.node.writes)
	}
}

// A reboot that happened is never reported failed because a boot ID could
// not be read: before the reboot or after it.
func TestRebootWithUnreadableBootIDIsNotFailed(t *testing.T) {
	for _, unreadable := range []string{"after the reboot", "when requested", "empty after the reboot"} {
		t.Run(unreadable, func(t *testing.T) {
			e := newEnv(t)
			bootFile := filepath.Join(e.dir, "boot_id")
			if unreadable == "when requested" {
				if err := os.Remove(bootFile); err != nil {
					t.Fatal(err)
				}
			}
			req := request("req-r", protocol.ActionReboot, "node-a", e.clock.Now())
			if err := e.agent(t).Handle(context.Background(), req, ""); err != nil {
				t.Fatal(err)
			}
			switch unreadable {
			case "after the reboot":
				if err := os.Remove(bootFile); err != nil {
					t.Fatal(err)
				}
			case "empty after the reboot":
				if err := os.WriteFile(bootFile, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			default:
				e.setBoot(t, "boot-2")
			}
			for range 2 {
				if err := e.agent(t).Handle(context.Background(), req, e.node.status); err != nil {
					t.Fatal(err)
				}
			}
			s := e.node.get(t)
			if e.exec.reboots != 1 || s.Phase != protocol.PhaseDone || !strings.Contains(s.Message, "boot ID could not be read") {
				t.Errorf("%d reboots, status %+v; want done once, saying the boot ID could not be read", e.exec.reboots, s)
			}
		})
	}
}

// A state directory in memory is refused at start, with what to mount.
func TestStateDirOnTmpfsIsRefused(t *testing.T) {
	newHandler := func(dir string, allow bool) error {
		_, err := NewHandler(HandlerConfig{NodeName: "node-a", Executor: &countingExecutor{}, StateDir: dir, MaxRequestAge: time.Hour,
			Reporter: &nodeAnnotations{}, AllowVolatileStateDir: allow})
		return err
	}
	t.Run("statfs says tmpfs", func(t *testing.T) {
		saved := statfsType
		t.Cleanup(func() { statfsType = saved })
		statfsType = func(string) (int64, error) { return unix.TMPFS_MAGIC, nil }
		dir := filepath.Join(t.TempDir(), "state")
		err := newHandler(dir, false)
		if err == nil {
			t.Fatal("a state directory on tmpfs was accepted")
		}
		for _, want := range []string{dir, "on tmpfs", "hostPath", "persistent disk"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if err := newHandler(dir, true); err != nil {
			t.Errorf("with AllowVolatileStateDir: %v", err)
		}
	})
	t.Run("a real tmpfs", func(t *testing.T) {
		var st unix.Statfs_t
		if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
			t.Skip("no tmpfs at /dev/shm")
		}
		dir, err := os.MkdirTemp("/dev/shm", "tokenroll-state-")
		if err != nil {
			t.Skip(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := newHandler(dir, false); err == nil || !strings.Contains(err.Error(), "tmpfs") {
			t.Errorf("got %v, want tmpfs refused", err)
		}
	})
	t.Run("a disk", func(t *testing.T) {
		dir := t.TempDir()
		if fsType, err := statfsType(dir); err != nil || volatileFilesystems[fsType] != "" {
			t.Skip("the test's temporary directory is not on a disk")
		}
		if err := newHandler(dir, false); err != nil {
			t.Error(err)
		}
	})
}
