// Package actions carries out the coordinator's requests on the agent's own
// node: reboot through logind, restart kubelet.service through systemd's
// manager, or run a configured command, each at most once per request
// (a fsynced state file is the record), reporting each step on the Node.
package actions

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/protocol"
)

// Executor performs actions on the host. Reboot returns once the reboot is
// under way (the process may not outlive it); RestartKubelet returns when
// the restart job has finished, with its result.
type Executor interface {
	Reboot(ctx context.Context) error
	RestartKubelet(ctx context.Context) error
}

// DefaultSystemBus is the host's D-Bus system bus socket, mounted into the
// agent's pod.
const DefaultSystemBus = "unix:path=/run/dbus/system_bus_socket"

// KubeletUnit is the unit a kubelet restart restarts.
const KubeletUnit = "kubelet.service"

// Systemd acts through D-Bus: logind's Manager.Reboot and systemd's
// Manager.RestartUnit, on the bus at Address.
type Systemd struct {
	// Address is the system bus address (DefaultSystemBus).
	Address string
	// Unit is the kubelet's unit (KubeletUnit).
	Unit string
}

// NewSystemd checks its input and returns a systemd executor.
func NewSystemd(address, unit string) (*Systemd, error) {
	var errs []error
	if !strings.HasPrefix(address, "unix:") {
		errs = append(errs, fmt.Errorf("system bus address %q: want a unix:path= address", address))
	}
	if !strings.HasSuffix(unit, ".service") {
		errs = append(errs, fmt.Errorf("kubelet unit %q: want a .service unit", unit))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Systemd{Address: address, Unit: unit}, nil
}

// dial opens an authenticated connection to the bus, as go-systemd does
// (EXTERNAL auth with the numeric uid, then Hello).
func (s *Systemd) dial(ctx context.Context) (*dbus.Conn, error) {
	conn, err := dbus.Dial(s.Address, dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("connecting to the system bus at %s: %w", s.Address, err)
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticating to the system bus at %s: %w", s.Address, err)
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting the system bus at %s: %w", s.Address, err)
	}
	return conn, nil
}

// Reboot calls org.freedesktop.login1.Manager.Reboot(false). It calls the
// method itself rather than go-systemd's login1.Conn.Reboot, which drops the
// reply and so any refusal (an inhibitor, a polkit denial).
func (s *Systemd) Reboot(ctx context.Context) error {
	conn, err := s.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	call := conn.Object("org.freedesktop.login1", "/org/freedesktop/login1").
		CallWithContext(ctx, "org.freedesktop.login1.Manager.Reboot", 0, false)
	if call.Err != nil {
		return fmt.Errorf("logind refused the reboot: %w", call.Err)
	}
	return nil
}

// RestartKubelet restarts the kubelet unit (mode "replace") through
// go-systemd and waits for the job's result.
func (s *Systemd) RestartKubelet(ctx context.Context) error {
	conn, err := sddbus.NewConnection(func() (*dbus.Conn, error) { return s.dial(ctx) })
	if err != nil {
		return err
	}
	defer conn.Close()
	result := make(chan string, 1)
	if _, err := conn.RestartUnitContext(ctx, s.Unit, "replace", result); err != nil {
		return fmt.Errorf("asking systemd to restart %s: %w", s.Unit, err)
	}
	select {
	case r := <-result:
		if r != "done" {
			return fmt.Errorf("systemd job restarting %s ended %q", s.Unit, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for systemd to restart %s: %w", s.Unit, ctx.Err())
	}
}

// Command runs a configured command per action, for hosts without systemd
// and for the sandbox (like kured's --reboot-command).
type Command struct {
	RebootCommand, KubeletRestartCommand []string
	Timeout                              time.Duration
}

// NewCommand checks its input.
func NewCommand(reboot, kubeletRestart []string, timeout time.Duration) (*Command, error) {
	var errs []error
	if len(reboot) == 0 && len(kubeletRestart) == 0 {
		errs = append(errs, errors.New("the command executor needs --reboot-command or --kubelet-restart-command"))
	}
	if timeout <= 0 {
		errs = append(errs, fmt.Errorf("command timeout %s must be positive", timeout))
	}
	return &Command{RebootCommand: reboot, KubeletRestartCommand: kubeletRestart, Timeout: timeout}, errors.Join(errs...)
}

// maxOutput bounds the command output kept for a failure message.
const maxOutput = 512

func (c *Command) run(ctx context.Context, action protocol.Action, argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("no command configured for %s", action)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	text := strings.TrimSpace(out.String())
	if len(text) > maxOutput {
		text = text[len(text)-maxOutput:]
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s command %q timed out after %s; output: %s", action, argv[0], c.Timeout, text)
	}
	return fmt.Errorf("%s command %q: %w; output: %s", action, argv[0], err, text)
}

// Reboot runs the reboot command.
func (c *Command) Reboot(ctx context.Context) error {
	return c.run(ctx, protocol.ActionReboot, c.RebootCommand)
}

// RestartKubelet runs the kubelet-restart command.
func (c *Command) RestartKubelet(ctx context.Context) error {
	return c.run(ctx, protocol.ActionKubeletRestart, c.KubeletRestartCommand)
}

// DryRun logs what it would do and does nothing. The handler reports its
// requests done with protocol.Status.DryRun set, so the coordinator knows
// nothing happened.
type DryRun struct{ Log *zap.Logger }

// dryRunner is an Executor that does not act.
type dryRunner interface{ dryRun() }

func (DryRun) dryRun() {}

// Reboot logs.
func (d DryRun) Reboot(context.Context) error {
	d.Log.Info("dry run: would reboot the node through logind")
	return nil
}

// RestartKubelet logs.
func (d DryRun) RestartKubelet(context.Context) error {
	d.Log.Info("dry run: would restart kubelet.service through systemd")
	return nil
}
