package kubeletsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Actions the control socket takes, as Control's action argument and as the
// path of the POST (/reboot, /restart-kubelet).
const (
	// ActionReboot takes the node down and brings it back with a new boot
	// ID, as `systemctl reboot` would; the reply comes once the reboot has
	// begun, before the node is down.
	ActionReboot = "reboot"
	// ActionRestartKubelet empties the token cache and rewrites every
	// projected volume, as `systemctl restart kubelet` would; the reply comes
	// once the restart is done.
	ActionRestartKubelet = "restart-kubelet"
)

// DefaultRebootDowntime is how long a reboot asked for through the control
// socket keeps the node down when the request names no duration.
const DefaultRebootDowntime = 10 * time.Second

// maxRebootDowntime bounds ?down=: a longer outage is a typo, not a test.
const maxRebootDowntime = time.Hour

// maxUnixPath is the longest path a unix socket can be bound to on Linux
// (sun_path holds 108 bytes with the terminating NUL).
const maxUnixPath = 107

// ControlSocketPath is the socket through which other processes reboot the
// node rooted at root or restart its kubelet (see Control).
func ControlSocketPath(root string) string { return filepath.Join(root, "control.sock") }

// BootIDPath is the file holding the current boot ID of the node rooted at
// root, one line as in /proc/sys/kernel/random/boot_id; give it to the agent
// as --boot-id-file. It is replaced atomically on every boot.
func BootIDPath(root string) string { return filepath.Join(root, "boot_id") }

// controlReply is the body of every control socket answer.
type controlReply struct {
	Node   string `json:"node,omitempty"`
	Action string `json:"action,omitempty"`
	// BootID is the boot the action was taken in.
	BootID string `json:"bootID,omitempty"`
	Down   string `json:"down,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Controllable is a node the control socket acts on: a simulated node, or
// a sandbox node that runs the real kubelet code as processes.
type Controllable interface {
	Name() string
	// BootID is the boot the node is in now.
	BootID() string
	// Reboot begins a reboot that keeps the node down for down and lasts as
	// long as ctx; it returns once the reboot has begun.
	Reboot(ctx context.Context, down time.Duration) error
	// RestartKubelet restarts the kubelet and returns once it is restarted.
	RestartKubelet() error
	// Down reports whether the node is rebooting.
	Down() bool
}

// controlServer serves ControlSocketPath for one node. It lives as long as
// Run: a simulated reboot does not stop it, as the process goes on.
type controlServer struct {
	srv    *http.Server
	socket string
	served chan error
}

// ControlServer serves the control socket of a node until Stop.
type ControlServer struct{ s *controlServer }

// ServeControl serves ControlSocketPath(root) for n until Stop; reboots it
// starts last as long as runCtx.
func ServeControl(runCtx context.Context, root string, n Controllable, log *zap.Logger) (*ControlServer, error) {
	s, err := serveControl(runCtx, root, n, log)
	if err != nil {
		return nil, err
	}
	return &ControlServer{s: s}, nil
}

// Stop shuts the server down and removes the socket.
func (c *ControlServer) Stop(log *zap.Logger) { c.s.stop(log) }

// simControl is a simulated node as the control socket sees it.
type simControl struct{ *Node }

func (n simControl) RestartKubelet() error { n.Node.RestartKubelet(); return nil }
func (n simControl) Down() bool            { return n.isDown() }

// startControl serves the control API until stopControl. Reboots it starts
// last as long as runCtx.
func (n *Node) startControl(runCtx context.Context) (*controlServer, error) {
	return serveControl(runCtx, n.cfg.Root, simControl{n}, n.log)
}

func serveControl(runCtx context.Context, root string, n Controllable, log *zap.Logger) (*controlServer, error) {
	socket := ControlSocketPath(root)
	ln, err := listenPrivate(socket)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /"+ActionReboot, func(w http.ResponseWriter, r *http.Request) { serveReboot(runCtx, n, log, w, r) })
	mux.HandleFunc("POST /"+ActionRestartKubelet, func(w http.ResponseWriter, r *http.Request) { serveRestartKubelet(n, log, w, r) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeReply(w, http.StatusNotFound, controlReply{Node: n.Name(),
			Error: fmt.Sprintf("%s %s: no such action; POST /%s?down=10s or POST /%s", r.Method, r.URL.Path, ActionReboot, ActionRestartKubelet)})
	})
	s := &controlServer{
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		socket: socket,
		served: make(chan error, 1),
	}
	go func() { s.served <- s.srv.Serve(ln) }()
	return s, nil
}

// stop shuts the server down with a fresh timeout (Run's context is over by
// then) and removes the socket.
func (s *controlServer) stop(log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		log.Warn("stopping the control socket", zap.String("socket", s.socket), zap.Error(err))
	}
	if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("control socket stopped serving", zap.String("socket", s.socket), zap.Error(err))
	}
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the control socket", zap.String("socket", s.socket), zap.Error(err))
	}
}

// listenPrivate binds a unix socket at path that only its owner can
// connect to. It binds under a temporary name, sets mode 0600 and renames
// it into place, so the socket is never reachable with a wider mode.
func listenPrivate(path string) (*net.UnixListener, error) {
	if len(path) > maxUnixPath {
		return nil, fmt.Errorf("control socket %s: the path is %d bytes, longer than the %d a unix socket allows; use a shorter node root", path, len(path), maxUnixPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another process serves it; is another simulated node using root %s?", path, filepath.Dir(path))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale control socket %s: %w", path, err)
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// The bound name moves; stop removes the final one.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

func writeReply(w http.ResponseWriter, code int, r controlReply) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(r)
}

func serveReboot(runCtx context.Context, n Controllable, log *zap.Logger, w http.ResponseWriter, r *http.Request) {
	reply := controlReply{Node: n.Name(), Action: ActionReboot}
	down := DefaultRebootDowntime
	if s := r.URL.Query().Get("down"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > maxRebootDowntime {
			reply.Error = fmt.Sprintf("down=%q: want a duration above 0 and at most %s, such as 10s", s, maxRebootDowntime)
			writeReply(w, http.StatusBadRequest, reply)
			return
		}
		down = d
	}
	reply.BootID, reply.Down = n.BootID(), down.String()
	// The reboot outlives this request, as a machine's shutdown outlives the
	// systemctl that asked for it; it ends only with Run.
	if err := n.Reboot(runCtx, down); err != nil {
		reply.Error = err.Error()
		writeReply(w, http.StatusConflict, reply)
		return
	}
	log.Info("reboot requested through the control socket", zap.Duration("down", down), zap.String("bootID", reply.BootID))
	writeReply(w, http.StatusOK, reply)
}

func serveRestartKubelet(n Controllable, log *zap.Logger, w http.ResponseWriter, _ *http.Request) {
	reply := controlReply{Node: n.Name(), Action: ActionRestartKubelet, BootID: n.BootID()}
	if n.Down() {
		reply.Error = fmt.Sprintf("node %s is rebooting; restart the kubelet once it is up", n.Name())
		writeReply(w, http.StatusConflict, reply)
		return
	}
	if err := n.RestartKubelet(); err != nil {
		reply.Error = err.Error()
		writeReply(w, http.StatusInternalServerError, reply)
		return
	}
	log.Info("kubelet restarted through the control socket")
	writeReply(w, http.StatusOK, reply)
}

// Control asks the simulated node rooted at root, in this or another
// process, to take action: ActionReboot (the node is down for down, or
// DefaultRebootDowntime when down is 0; Control returns once the reboot has
// begun, and the node goes NotReady just after and comes back with a new
// boot ID in BootIDPath(root)) or ActionRestartKubelet (Control returns
// once the kubelet has restarted). It is what the agent's command executor
// runs in the sandbox, e.g. --reboot-command "tokenroll,sandbox,node,reboot,--root,DIR",
// and its error says why the node refused or could not be reached.
func Control(ctx context.Context, root, action string, down time.Duration) error {
	if action != ActionReboot && action != ActionRestartKubelet {
		return fmt.Errorf("kubeletsim: unknown action %q; want %q or %q", action, ActionReboot, ActionRestartKubelet)
	}
	if down < 0 {
		return fmt.Errorf("kubeletsim: reboot downtime %s is negative", down)
	}
	socket := ControlSocketPath(root)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	u := url.URL{Scheme: "http", Host: "kubeletsim", Path: "/" + action}
	if action == ActionReboot && down > 0 {
		u.RawQuery = url.Values{"down": {down.String()}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return fmt.Errorf("kubeletsim: %s: %w", action, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("kubeletsim: %s: no simulated node serves %s; is the sandbox running, and is %s a node's root?", action, socket, root)
		}
		return fmt.Errorf("kubeletsim: %s through %s: %w", action, socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("kubeletsim: %s through %s: reading the answer: %w", action, socket, err)
	}
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var reply controlReply
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &reply) == nil && reply.Error != "" {
		msg = reply.Error
	}
	return fmt.Errorf("kubeletsim: %s through %s refused (%s): %s", action, socket, resp.Status, msg)
}

// NewBootID returns a random boot ID, formatted as
// /proc/sys/kernel/random/boot_id is.
func NewBootID() string { return newBootID() }

// WriteBootID replaces BootIDPath(root) with id atomically, as a boot
// does before anything reads it.
func WriteBootID(root, id string) error { return writeBootID(root, id) }
