package sandbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// restartDelay is how long a process that ended stays down before it is
// started again, as a kubelet restarts a crashed container.
const restartDelay = time.Second

// stopGrace is how long a process may take to stop after SIGTERM.
const stopGrace = 10 * time.Second

// child is one tokenroll process the sandbox runs (an agent or a
// coordinator replica), restarted whenever it ends, as its DaemonSet or
// Deployment would. It runs in its own process group, so that Ctrl-C in the
// terminal reaches the sandbox alone and the sandbox stops its children in
// order, and dies with the sandbox (PR_SET_PDEATHSIG), so nothing is left
// behind.
type child struct {
	name string
	// args is the command line for a metrics address.
	args    func(addr string) []string
	logPath string
	// exited is told when the process ends on its own (not killed or
	// stopped by the sandbox), with how.
	exited func(c *child, err error)
	// moved is told when the metrics address changed (another process
	// took the port).
	moved func(c *child, old, addr string)

	mu       sync.Mutex
	addr     string
	cmd      *exec.Cmd
	done     chan struct{}
	starts   int
	expected bool // the sandbox ended this run on purpose
	held     bool // kept down until release
	wake     chan struct{}
}

// newChild describes a process; addr is its metrics address ("" for none).
func newChild(name, addr string, args func(addr string) []string, logPath string) *child {
	return &child{name: name, addr: addr, args: args, logPath: logPath, wake: make(chan struct{}, 1)}
}

// metricsAddr is where the process serves /metrics.
func (c *child) metricsAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// start runs the process once; the caller holds no lock. A metrics port
// that another process took since (loopback ports are shared with every
// outgoing connection) is replaced first.
func (c *child) start() error {
	c.mu.Lock()
	old := c.addr
	c.mu.Unlock()
	addr := old
	if addr != "" && !portFree(addr) {
		var err error
		if addr, err = freeAddr(); err != nil {
			return err
		}
		c.mu.Lock()
		c.addr = addr
		c.mu.Unlock()
		if c.moved != nil {
			c.moved(c, old, addr)
		}
	}
	argv := c.args(addr)
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening the log of %s: %w", c.name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.mu.Lock()
	c.starts++
	fmt.Fprintf(logFile, "--- sandbox: starting %s (start %d) at %s\n", c.name, c.starts, time.Now().Format(time.RFC3339Nano))
	err = cmd.Start()
	if err != nil {
		c.mu.Unlock()
		logFile.Close()
		return fmt.Errorf("starting %s (%s): %w", c.name, argv[0], err)
	}
	done := make(chan struct{})
	c.cmd, c.done, c.expected = cmd, done, false
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "--- sandbox: %s ended (%v) at %s\n", c.name, waitStatus(err), time.Now().Format(time.RFC3339Nano))
		logFile.Close()
		c.mu.Lock()
		expected := c.expected
		c.mu.Unlock()
		if !expected && c.exited != nil {
			c.exited(c, err)
		}
		close(done)
	}()
	return nil
}

func waitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// run keeps the process running until ctx ends, then stops it (SIGTERM,
// then SIGKILL after stopGrace). The first start's error is returned on
// first; later ones are reported through exited and retried.
func (c *child) run(ctx context.Context, first chan<- error) {
	err := c.start()
	first <- err
	if err != nil {
		return
	}
	for {
		c.mu.Lock()
		done := c.done
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			c.signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(stopGrace):
				c.signal(syscall.SIGKILL)
				<-done
			}
			return
		case <-done:
		}
		if !c.waitDown(ctx) {
			return
		}
		if err := c.start(); err != nil && c.exited != nil {
			c.exited(c, err)
		}
	}
}

// waitDown waits while the process is held, then restartDelay, as a kubelet
// would before starting a container again; false when ctx ended.
func (c *child) waitDown(ctx context.Context) bool {
	for {
		c.mu.Lock()
		held := c.held
		c.mu.Unlock()
		wait := time.After(restartDelay)
		if held {
			wait = nil
		}
		select {
		case <-ctx.Done():
			return false
		case <-c.wake:
		case <-wait:
			c.mu.Lock()
			held = c.held
			c.mu.Unlock()
			if !held {
				return true
			}
		}
	}
}

// signal sends sig to the process group of the current run, marking the
// end as the sandbox's doing.
func (c *child) signal(sig syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	c.expected = true
	_ = syscall.Kill(-c.cmd.Process.Pid, sig)
}

// kill ends the process at once (SIGKILL, as a crash or an OOM kill would);
// run starts it again after restartDelay.
func (c *child) kill() { c.signal(syscall.SIGKILL) }

// hold kills the process and keeps it down until release, as a node going
// down takes its pods with it.
func (c *child) hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
	c.kill()
}

// stop ends the process with sig (SIGKILL after stopGrace), as systemd
// stops a unit, and keeps it down until release; it returns once the
// process has ended.
func (c *child) stop(sig syscall.Signal) {
	c.mu.Lock()
	c.held = true
	done := c.done
	c.mu.Unlock()
	c.signal(sig)
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(stopGrace):
		c.signal(syscall.SIGKILL)
		<-done
	}
}

// startCount is how many times the process was started.
func (c *child) startCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts
}

// release lets a held process start again.
func (c *child) release() {
	c.mu.Lock()
	c.held = false
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// pid is the current run's process ID (0 when none).
func (c *child) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	select {
	case <-c.done:
		return 0
	default:
		return c.cmd.Process.Pid
	}
}

// freeAddr returns a loopback address nobody listens on at the moment. It
// prefers a port below the kernel's ephemeral range, which outgoing
// connections (thousands of them here: watches, probes, tests running
// beside the sandbox) never take, so that the port stays free for a process
// that restarts on it.
func freeAddr() (string, error) {
	if low := ephemeralLow(); low > 12000 {
		for range 50 {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(low-10000)))
			if portFree(addr) {
				return addr, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (0 when
// unknown).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0
	}
	low, _ := strconv.Atoi(fields[0])
	return low
}

// portFree reports whether nobody listens on addr and it can be bound.
func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// startChildren starts every child and returns once each has started once;
// on error the ones started are stopped by cancelling ctx.
func startChildren(ctx context.Context, wg *sync.WaitGroup, children []*child) error {
	var errs []error
	for _, c := range children {
		first := make(chan error, 1)
		wg.Add(1)
		go func() { defer wg.Done(); c.run(ctx, first) }()
		if err := <-first; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logTail is the end of the last run in the log at path: its last n
// lines, or, when it panicked, the panic and the first frames.
func logTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	text := string(data)
	if i := strings.LastIndex(text, "--- sandbox: starting"); i >= 0 {
		text = text[i:]
	}
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "panic: ") {
			return strings.Join(lines[i:min(len(lines), i+n)], "\n")
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
