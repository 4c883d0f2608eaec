package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/internal/dbustest"
)

// agentUID is the dedicated user deploy/polkit/50-tokenroll-agent.rules
// names by number.
const agentUID = 64302

// polkitBinaries are what TestPolkitRule runs: Debian's polkitd and
// dbus-daemon packages.
var polkitBinaries = []string{"/usr/lib/polkit-1/polkitd", "pkcheck", "dbus-daemon", "unshare", "mount"}

// TestPolkitRule runs the real polkitd, with the shipped rule as its only
// rule, on a private system bus, and asks it (pkcheck) what each user may
// do: the agent's user exactly logind's reboot and a restart of the kubelet
// unit; anyone else nothing; root everything, even with a rule refusing it,
// which is why a D-Bus caller that is root is confined by no rule.
func TestPolkitRule(t *testing.T) {
	rule := readFile(t, "deploy/polkit/50-tokenroll-agent.rules")
	if !strings.Contains(string(rule), `action.lookup("unit") === "`+actions.KubeletUnit+`"`) {
		t.Errorf("the rule does not name the agent's unit %s", actions.KubeletUnit)
	}
	if !strings.Contains(string(rule), `subject.user !== "`+strconv.Itoa(agentUID)+`"`) {
		t.Errorf("the rule does not name uid %d", agentUID)
	}
	// A rule refusing root everything, to show polkit does not ask it.
	denyRoot := []byte(`polkit.addRule(function (action, subject) { if (subject.user === "root") { return polkit.Result.NO; } });` + "\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bus, pk, pkLog := startPolkit(ctx, t, "", map[string][]byte{"50-tokenroll-agent.rules": rule, "10-deny-root.rules": denyRoot})

	// Subjects: a process of each user.
	subject := func(uid int) int {
		cmd := exec.Command("sleep", "120")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd.Process.Pid
	}
	agent, other, root := subject(agentUID), subject(agentUID+1), subject(0)

	check := func(pid int, action string, details ...string) (bool, error) {
		args := []string{"--action-id", action, "--process", strconv.Itoa(pid)}
		for i := 0; i+1 < len(details); i += 2 {
			args = append(args, "--detail", details[i], details[i+1])
		}
		cmd := exec.CommandContext(ctx, "pkcheck", args...)
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return true, nil
		// 1: not authorized; 2: authorized only after authenticating, which
		// a daemon cannot.
		case errors.As(err, &exit) && (exit.ExitCode() == 1 || exit.ExitCode() == 2):
			return false, nil
		default:
			return false, fmt.Errorf("pkcheck %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	// polkitd is up once it answers.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := check(agent, "org.freedesktop.login1.reboot")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("polkitd never answered: %v\npolkitd (%v): %s", err, pk.ProcessState, pkLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	restart := []string{"unit", actions.KubeletUnit, "verb", "restart"}
	cases := []struct {
		what    string
		pid     int
		action  string
		details []string
		want    bool
	}{
		{"the agent reboots", agent, "org.freedesktop.login1.reboot", nil, true},
		{"the agent reboots with others logged in", agent, "org.freedesktop.login1.reboot-multiple-sessions", nil, true},
		{"the agent restarts the kubelet", agent, "org.freedesktop.systemd1.manage-units", restart, true},
		{"the agent reboots past an inhibitor", agent, "org.freedesktop.login1.reboot-ignore-inhibit", nil, false},
		{"the agent powers off", agent, "org.freedesktop.login1.power-off", nil, false},
		{"the agent stops the kubelet", agent, "org.freedesktop.systemd1.manage-units", []string{"unit", actions.KubeletUnit, "verb", "stop"}, false},
		{"the agent starts the kubelet", agent, "org.freedesktop.systemd1.manage-units", []string{"unit", actions.KubeletUnit, "verb", "start"}, false},
		{"the agent restarts another unit", agent, "org.freedesktop.systemd1.manage-units", []string{"unit", "sshd.service", "verb", "restart"}, false},
		{"the agent manages units without naming one (a transient unit)", agent, "org.freedesktop.systemd1.manage-units", nil, false},
		{"the agent manages unit files", agent, "org.freedesktop.systemd1.manage-unit-files", nil, false},
		{"the agent reloads systemd", agent, "org.freedesktop.systemd1.reload-daemon", nil, false},
		{"another user reboots", other, "org.freedesktop.login1.reboot", nil, false},
		{"another user restarts the kubelet", other, "org.freedesktop.systemd1.manage-units", restart, false},
		{"root starts any unit, a rule refusing it notwithstanding", root, "org.freedesktop.systemd1.manage-units", []string{"unit", "anything.service", "verb", "start"}, true},
	}
	for _, c := range cases {
		got, err := check(c.pid, c.action, c.details...)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		if got != c.want {
			t.Errorf("%s (%s %v): authorized %v, want %v", c.what, c.action, c.details, got, c.want)
		}
	}
}

// startPolkit runs the real polkitd, with rules as its only rules, on a
// private system bus, and returns the bus's address, the polkitd process and
// its output. With etc set, the bus and polkitd see its passwd and group
// files instead of the host's.
func startPolkit(ctx context.Context, t *testing.T, etc string, rules map[string][]byte) (string, *exec.Cmd, *strings.Builder) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs polkitd")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: polkitd reads its rules from /etc/polkit-1/rules.d, bind-mounted in a private mount namespace")
	}
	for _, b := range polkitBinaries {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: install the Debian packages polkitd and dbus", b)
		}
	}
	// polkitd runs as its own user: it must reach the bus socket and read
	// the rules.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rulesDir, empty := filepath.Join(dir, "rules.d"), filepath.Join(dir, "empty")
	for _, d := range []string{rulesDir, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, rule := range rules {
		if err := os.WriteFile(filepath.Join(rulesDir, name), rule, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bus := startSystemBus(t, dir, etc)
	// polkitd reads rules from fixed paths: in a mount namespace of its own,
	// ours replace the host's, and the distribution's directory is empty.
	pk := exec.CommandContext(ctx, "unshare", "-m", "--propagation", "private", "sh", "-c",
		bindEtc(etc)+`mount --bind "$1" /etc/polkit-1/rules.d && mount --bind "$2" /usr/share/polkit-1/rules.d && exec /usr/lib/polkit-1/polkitd --no-debug`,
		"sh", rulesDir, empty)
	pk.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus)
	pk.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pkLog := &strings.Builder{}
	pk.Stdout, pk.Stderr = pkLog, pkLog
	if err := pk.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pk.Process.Kill(); _ = pk.Wait() })
	return bus, pk, pkLog
}

// bindEtc is the shell that puts etc's passwd and group files in place of
// the host's, in a mount namespace of their own; nothing when etc is empty.
func bindEtc(etc string) string {
	if etc == "" {
		return ""
	}
	return fmt.Sprintf("mount --bind %[1]s/passwd /etc/passwd && mount --bind %[1]s/group /etc/group && ", etc)
}

// startSystemBus runs a dbus-daemon of type system on a socket in dir and
// returns its address. With etc set, it sees etc's passwd and group files.
func startSystemBus(t *testing.T, dir, etc string) string {
	t.Helper()
	config := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(config, []byte(dbustest.Config("system", filepath.Join(dir, "bus"))), 0o644); err != nil {
		t.Fatal(err)
	}
	return dbustest.Run(t, exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		bindEtc(etc)+`exec dbus-daemon --config-file="$1" --nofork --nopidfile --print-address=1`, "sh", config))
}
