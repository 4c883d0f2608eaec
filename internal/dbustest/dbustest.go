// Package dbustest runs a real dbus-daemon for tests. Only tests import it.
package dbustest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Config is a bus configuration of type busType ("custom", "system")
// listening on the unix socket path socket, letting every user connect, own
// any name, send and receive.
func Config(busType, socket string) string {
	return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>` + busType + `</type>
  <listen>unix:path=` + socket + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`
}

// Run starts cmd, a dbus-daemon told --nofork --print-address=1 (directly
// or through a wrapper that execs it), kills it when the test ends, and
// returns the address it printed.
func Run(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	return strings.TrimSpace(line)
}

// Start runs a private dbus-daemon (a custom bus on a socket in a temporary
// directory) for the test and returns its address. It skips the test under
// -short.
func Start(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs dbus-daemon")
	}
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatal("dbus-daemon not found: install the Debian package dbus (make dbus does)")
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(config, []byte(Config("custom", filepath.Join(dir, "bus"))), 0o600); err != nil {
		t.Fatal(err)
	}
	return Run(t, exec.Command(daemon, "--config-file="+config, "--nofork", "--nopidfile", "--print-address=1"))
}
