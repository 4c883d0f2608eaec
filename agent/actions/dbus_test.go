package actions

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/tokenroll/tokenroll/internal/dbustest"
)

// fakeHost owns org.freedesktop.login1 and org.freedesktop.systemd1 on the
// bus and records every call the agent makes. Each behaves as told: succeed,
// fail, or hang until the test ends.
type fakeHost struct {
	conn *dbus.Conn

	mu         sync.Mutex
	calls      []string
	rebootErr  *dbus.Error
	jobResult  string // "done", "failed"...; "" hangs: no JobRemoved is sent
	restartErr *dbus.Error
	nextJob    uint32
	released   chan struct{}
	hangReboot bool
}

type login1Manager struct{ h *fakeHost }

func (m login1Manager) Reboot(interactive bool) *dbus.Error {
	m.h.record(fmt.Sprintf("login1.Manager.Reboot(%v)", interactive))
	m.h.mu.Lock()
	err, hang := m.h.rebootErr, m.h.hangReboot
	m.h.mu.Unlock()
	if hang {
		<-m.h.released
	}
	return err
}

type systemdManager struct{ h *fakeHost }

func (m systemdManager) RestartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	m.h.record(fmt.Sprintf("systemd1.Manager.RestartUnit(%q, %q)", name, mode))
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	if m.h.restartErr != nil {
		return "", m.h.restartErr
	}
	m.h.nextJob++
	id := m.h.nextJob
	job := dbus.ObjectPath("/org/freedesktop/systemd1/job/" + strconv.Itoa(int(id)))
	if result := m.h.jobResult; result != "" {
		// systemd announces the job's end as a signal, after the reply.
		go func() {
			_ = m.h.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, result)
		}()
	}
	return job, nil
}

func (h *fakeHost) record(call string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, call)
}

func (h *fakeHost) Calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}

func startFakeHost(t *testing.T, address string) *fakeHost {
	t.Helper()
	conn, err := dbus.Dial(address)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Hello(); err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{conn: conn, jobResult: "done", released: make(chan struct{})}
	t.Cleanup(func() { close(h.released); conn.Close() })
	if err := conn.Export(login1Manager{h}, "/org/freedesktop/login1", "org.freedesktop.login1.Manager"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Export(systemdManager{h}, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"org.freedesktop.login1", "org.freedesktop.systemd1"} {
		reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue)
		if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("owning %s: %v (%v)", name, reply, err)
		}
	}
	return h
}

func TestSystemdExecutorOverARealBus(t *testing.T) {
	addr := dbustest.Start(t)
	host := startFakeHost(t, addr)
	sd, err := NewSystemd(addr, KubeletUnit)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	if err := sd.RestartKubelet(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if err := sd.Reboot(ctx); err != nil {
		t.Fatalf("reboot: %v", err)
	}
	want := []string{`systemd1.Manager.RestartUnit("kubelet.service", "replace")`, "login1.Manager.Reboot(false)"}
	if got := host.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("D-Bus calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The job fails: its result is the error.
	host.mu.Lock()
	host.jobResult = "failed"
	host.mu.Unlock()
	if err := sd.RestartKubelet(ctx); err == nil || !strings.Contains(err.Error(), `ended "failed"`) {
		t.Errorf("failed job: %v", err)
	}
	// systemd refuses the call.
	host.mu.Lock()
	host.restartErr = dbus.NewError("org.freedesktop.systemd1.NoSuchUnit", []any{"Unit kubelet.service not found."})
	host.mu.Unlock()
	if err := sd.RestartKubelet(ctx); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("refused restart: %v", err)
	}
	// The job never ends: the caller's deadline ends the wait.
	host.mu.Lock()
	host.restartErr, host.jobResult = nil, ""
	host.mu.Unlock()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := sd.RestartKubelet(short); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("hanging job: %v", err)
	}
	// logind refuses (an inhibitor): go-systemd's login1.Conn.Reboot would
	// have hidden this.
	host.mu.Lock()
	host.rebootErr = dbus.NewError("org.freedesktop.login1.BlockedByInhibitorLock", []any{"Operation inhibited"})
	host.mu.Unlock()
	if err := sd.Reboot(ctx); err == nil || !strings.Contains(err.Error(), "inhibited") {
		t.Errorf("inhibited reboot: %v", err)
	}
	// logind hangs: the deadline ends it.
	host.mu.Lock()
	host.rebootErr, host.hangReboot = nil, true
	host.mu.Unlock()
	short2, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if err := sd.Reboot(short2); err == nil {
		t.Error("a hanging logind did not time out")
	}
}

func TestSystemdExecutorWithNoBus(t *testing.T) {
	sd, err := NewSystemd("unix:path="+filepath.Join(t.TempDir(), "nobus"), KubeletUnit)
	if err != nil {
		t.Fatal(err)
	}
	if err := sd.Reboot(context.Background()); err == nil || !strings.Contains(err.Error(), "connecting to the system bus") {
		t.Errorf("no bus: %v", err)
	}
	if _, err := NewSystemd("tcp:host=x", "kubelet"); err == nil || !strings.Contains(err.Error(), "unix:path") || !strings.Contains(err.Error(), ".service") {
		t.Errorf("bad config: %v", err)
	}
}

func TestCommandExecutor(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "rebooted")
	c, err := NewCommand([]string{"sh", "-c", "echo rebooting > " + marker}, []string{"sh", "-c", "echo boom >&2; exit 3"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reboot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(marker); string(b) != "rebooting\n" {
		t.Errorf("reboot command did not run: %q", b)
	}
	if err := c.RestartKubelet(context.Background()); err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "boom") {
		t.Errorf("failing command: %v", err)
	}
	slow, _ := NewCommand([]string{"sleep", "30"}, nil, 200*time.Millisecond)
	if err := slow.Reboot(context.Background()); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("slow command: %v", err)
	}
	if err := slow.RestartKubelet(context.Background()); err == nil || !strings.Contains(err.Error(), "no command configured") {
		t.Errorf("unconfigured action: %v", err)
	}
	if _, err := NewCommand(nil, nil, 0); err == nil || !strings.Contains(err.Error(), "--reboot-command") || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("empty config: %v", err)
	}
}
