package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// TestExecutorUnderPolkit runs tokenroll-agent --run=act as the DaemonSet's
// executor does, uid 64302, against the real polkitd with the shipped rule
// and a systemd stand-in that asks polkit exactly as systemd does (the
// caller's bus name as subject, manage-units with the unit and the verb).
// Its kubelet restart is authorized; the same executor told to restart
// another unit is refused and reports the request failed; as root, the same
// call is authorized, which is why the executor is not root. Its user and
// state directory are made by the shipped sysusers.d and tmpfiles.d
// files.
func TestExecutorUnderPolkit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs polkitd, dbus-daemon and a control plane")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the executor as uid 64302, and polkitd with its rules bind-mounted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, b := range []string{"systemd-sysusers", "systemd-tmpfiles"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: install the Debian package systemd (make dbus does)", b)
		}
	}
	// The node, as deploy/polkit prepares it: the executor's user (the bus
	// refuses a uid without a passwd entry) and its state directory.
	hostRoot := t.TempDir()
	if err := os.Chmod(hostRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(hostRoot, "etc")
	if err := os.Mkdir(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"passwd", "group"} {
		if err := os.WriteFile(filepath.Join(etc, f), readHostFile(t, "/etc/"+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range [][]string{
		{"systemd-sysusers", "--root=" + hostRoot, repoPath("deploy/polkit/tokenroll-agent.sysusers.conf")},
		{"systemd-tmpfiles", "--root=" + hostRoot, "--create", repoPath("deploy/polkit/tokenroll-agent.tmpfiles.conf")},
	} {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	stateDir := filepath.Join(hostRoot, "var/lib/tokenroll")
	bus, _, pkLog := startPolkit(ctx, t, etc, map[string][]byte{"50-tokenroll-agent.rules": readFile(t, "deploy/polkit/50-tokenroll-agent.rules")})
	systemd := startPolkitSystemd(t, bus)
	if err := systemd.waitForPolkit(ctx); err != nil {
		t.Fatalf("polkitd never took its name: %v\n%s", err, pkLog.String())
	}

	cp := controlplane.StartForTest(t, controlplane.Config{})
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Everything the executor reads is reachable by uid 64302.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kubeconfig, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tokenroll-agent")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tokenroll-agent")
	build.Dir = repoPath("")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building tokenroll-agent: %v\n%s", err, out)
	}

	requests := 0
	act := func(uid int, unit string) protocol.Status {
		t.Helper()
		requests++
		cmd := exec.CommandContext(ctx, bin, "--run=act", "--node-name=node-1", "--kubeconfig="+kubeconfig, "--system-bus="+bus,
			"--state-dir="+stateDir, "--kubelet-unit="+unit, "--metrics-bind-address=127.0.0.1:0", "--log-format=json")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}, Pdeathsig: syscall.SIGKILL}
		var log strings.Builder
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		id := "request-" + strconv.Itoa(requests)
		req, _ := json.Marshal(protocol.Request{ID: id, Action: protocol.ActionKubeletRestart, Node: "node-1", CreatedAt: time.Now().UTC()})
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{protocol.AnnotationRequest: string(req)}}})
		if _, err := admin.CoreV1().Nodes().Patch(ctx, "node-1", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		var st protocol.Status
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			n, err := admin.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			st, err = protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus])
			return err == nil && st.ID == id && st.Phase.Final(), nil
		})
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("uid %d, unit %s: no final status for %s: %v\nagent:\n%s", uid, unit, id, err, log.String())
		}
		return st
	}

	if st := act(agentUID, actions.KubeletUnit); st.Phase != protocol.PhaseDone {
		t.Errorf("the executor's kubelet restart: %s (%s), want done", st.Phase, st.Message)
	}
	if st := act(agentUID, "sshd.service"); st.Phase != protocol.PhaseFailed || !strings.Contains(st.Message, "Access denied") {
		t.Errorf("the executor restarting sshd.service: %s (%s), want failed with polkit's denial", st.Phase, st.Message)
	}
	// The executor's record is its own: written by uid 64302 in the
	// directory the tmpfiles.d file made.
	var fi syscall.Stat_t
	if err := syscall.Stat(filepath.Join(stateDir, actions.StateFileName), &fi); err != nil || fi.Uid != agentUID {
		t.Errorf("the record in %s: owner %d (%v), want the executor's uid %d", stateDir, fi.Uid, err, agentUID)
	}
	if st := act(0, "sshd.service"); st.Phase != protocol.PhaseDone {
		t.Errorf("root restarting sshd.service: %s (%s), want done: polkit authorizes root for everything", st.Phase, st.Message)
	}
	want := []string{
		fmt.Sprintf("uid %d restart kubelet.service: authorized", agentUID),
		fmt.Sprintf("uid %d restart sshd.service: refused", agentUID),
		"uid 0 restart sshd.service: authorized",
	}
	if got := systemd.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("systemd saw:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// polkitSystemd stands in for systemd's manager on the bus: RestartUnit asks
// polkit, as systemd does, whether the caller may manage that unit with the
// verb restart, and runs the job only if so.
type polkitSystemd struct {
	conn, polkit *dbus.Conn

	mu    sync.Mutex
	calls []string
	jobs  uint32
}

func dialBus(t *testing.T, address string) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Dial(address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Hello(); err != nil {
		t.Fatal(err)
	}
	return conn
}

func startPolkitSystemd(t *testing.T, address string) *polkitSystemd {
	t.Helper()
	// A connection of its own for asking polkit, so that a call in flight
	// never waits on the connection serving it.
	s := &polkitSystemd{conn: dialBus(t, address), polkit: dialBus(t, address)}
	if err := s.conn.Export(s, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	if reply, err := s.conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("owning org.freedesktop.systemd1: %v (%v)", reply, err)
	}
	return s
}

func (s *polkitSystemd) waitForPolkit(ctx context.Context) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var has bool
		err := s.polkit.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.freedesktop.PolicyKit1").Store(&has)
		return err == nil && has, nil
	})
}

func (s *polkitSystemd) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// RestartUnit is org.freedesktop.systemd1.Manager.RestartUnit.
func (s *polkitSystemd) RestartUnit(sender dbus.Sender, name, mode string) (dbus.ObjectPath, *dbus.Error) {
	var uid uint32
	if err := s.polkit.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid); err != nil {
		return "", dbus.MakeFailedError(err)
	}
	subject := struct {
		Kind    string
		Details map[string]dbus.Variant
	}{"system-bus-name", map[string]dbus.Variant{"name": dbus.MakeVariant(string(sender))}}
	var result struct {
		Authorized, Challenge bool
		Details               map[string]string
	}
	err := s.polkit.Object("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority").Call(
		"org.freedesktop.PolicyKit1.Authority.CheckAuthorization", 0, subject, "org.freedesktop.systemd1.manage-units",
		map[string]string{"unit": name, "verb": "restart"}, uint32(0), "").Store(&result)
	if err != nil {
		return "", dbus.MakeFailedError(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, fmt.Sprintf("uid %d restart %s: %s", uid, name, map[bool]string{true: "authorized", false: "refused"}[result.Authorized]))
	if !result.Authorized {
		return "", &dbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied", Body: []any{"Access denied"}}
	}
	s.jobs++
	id := s.jobs
	job := dbus.ObjectPath("/org/freedesktop/systemd1/job/" + strconv.Itoa(int(id)))
	// systemd announces the job's end as a signal, after the reply.
	go func() {
		_ = s.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, "done")
	}()
	return job, nil
}

func readHostFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
