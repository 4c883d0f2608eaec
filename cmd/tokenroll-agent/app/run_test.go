package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
	"github.com/tokenroll/tokenroll/internal/dbustest"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/simtest"
)

func TestRunFlag(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand,
		clitest.Usage{Args: []string{"--node-name=n", "--run=scan,exec"}, Want: []string{`--run=scan,exec: unknown part "exec"; want scan, act or scan,act`}},
		clitest.Usage{Args: []string{"--node-name=n", "--run=act,act"}, Want: []string{`--run=act,act: "act" given twice`}},
		clitest.Usage{Args: []string{"--node-name=n", "--run="}, Want: []string{"--run is empty"}})

	// Each part checks only its own flags: the other part's are not its
	// business, and its paths are not mounted in the part's container.
	for _, c := range []struct {
		run       []string
		args      []string
		wantError []string
	}{
		{run: []string{runAct}, args: []string{"--kubelet-root=rel", "--interval=0s"}},
		{run: []string{runScan}, args: []string{"--state-dir=rel", "--executor=magic", "--system-bus=tcp:host=x"}},
		{run: []string{runScan, runAct}, args: []string{"--kubelet-root=rel", "--state-dir=rel"}, wantError: []string{"--kubelet-root", "--state-dir"}},
	} {
		o := newAgentOptions()
		fs := pflag.NewFlagSet("tokenroll-agent", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(append([]string{"--node-name=n", "--run=" + strings.Join(c.run, ",")}, c.args...)); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if len(c.wantError) == 0 && err != nil {
			t.Errorf("--run=%v %v: %v", c.run, c.args, err)
		}
		for _, w := range c.wantError {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("--run=%v %v: error %v, want it to name %s", c.run, c.args, err, w)
			}
		}
	}
}

// TestScannerAndExecutorRunApart runs the agent as the DaemonSet's two
// containers do: --run=scan with the kubelet root and a "bus" that only
// counts connections, --run=act with a real dbus-daemon (a fake systemd on
// it) and no kubelet root at all. The executor carries out a kubelet
// restart and reports it; the scanner reports the tokens and never dials
// the bus; neither touches the other's paths.
func TestScannerAndExecutorRunApart(t *testing.T) {
	bus := dbustest.Start(t)
	host := startFakeSystemd(t, bus)
	c := simtest.Start(t, controlplane.DefaultIssuer, "node-1")
	c.PrepareBuildNamespace(t, "build")
	mark := c.Events.Mark()
	c.CreatePod(t, simtest.BuildRobotPod("nginx", "build", "node-1"))
	c.Events.Wait(t, mark, "nginx synced", simtest.Is(kubeletsim.EventPodSynced, "node-1", "nginx", ""))
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, c.CP.AdminConfig()); err != nil {
		t.Fatal(err)
	}

	// The scanner's --system-bus names a socket that counts who connects.
	trap := filepath.Join(dir, "trap-bus")
	l, err := net.Listen("unix", trap)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var dialed atomic.Int32
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			conn.Close()
		}
	}()
	noKubelet, noState := filepath.Join(dir, "no-kubelet"), filepath.Join(dir, "no-state")
	stateDir := t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type proc struct {
		name, addr string
		stderr     bytes.Buffer
		exit       chan int
	}
	start := func(name string, args ...string) *proc {
		p := &proc{name: name, addr: freeAddr(t), exit: make(chan int, 1)}
		args = append([]string{"--node-name=node-1", "--kubeconfig=" + kubeconfig, "--metrics-bind-address=" + p.addr,
			"--log-format=json", "--reboot-sentinel="}, args...)
		go func() { p.exit <- cli.Execute(ctx, NewCommand(io.Discard, &p.stderr), args) }()
		return p
	}
	scanner := start("scanner", "--run=scan", "--kubelet-root="+c.Nodes["node-1"].Root(), "--system-bus=unix:path="+trap, "--state-dir="+noState)
	executor := start("executor", "--run=act", "--kubelet-root="+noKubelet, "--system-bus="+bus, "--state-dir="+stateDir)
	metricsOf := func(p *proc, path string) (int, string) {
		resp, err := http.Get("http://" + p.addr + path)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []*proc{scanner, executor} {
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			code, _ := metricsOf(p, "/readyz")
			return code == http.StatusOK, nil
		})
		if err != nil {
			t.Fatalf("the %s never became ready: %v\n%s", p.name, err, p.stderr.String())
		}
	}

	req, err := json.Marshal(protocol.Request{ID: "restart-1", Action: protocol.ActionKubeletRestart, Node: "node-1", CreatedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{protocol.AnnotationRequest: string(req)}}})
	if _, err := c.Admin.CoreV1().Nodes().Patch(ctx, "node-1", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	node := c.WaitNode(t, "node-1", "the request done and the tokens reported", func(n *corev1.Node) bool {
		st, err := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus])
		return err == nil && st.ID == "restart-1" && st.Phase.Final() && n.Annotations[protocol.AnnotationTokens] != ""
	})
	if st, _ := protocol.ParseStatus(node.Annotations[protocol.AnnotationStatus]); st.Phase != protocol.PhaseDone {
		t.Errorf("request status %s: %s; want done\nexecutor:\n%s", st.Phase, st.Message, executor.stderr.String())
	}
	if got, want := strings.Join(host.Calls(), "\n"), `RestartUnit("kubelet.service", "replace")`; got != want {
		t.Errorf("calls on the bus:\n%s\nwant:\n%s", got, want)
	}
	stale := false
	for _, cond := range node.Status.Conditions {
		stale = stale || cond.Type == protocol.ConditionTokensStale
	}
	if !stale {
		t.Errorf("the scanner wrote no %s condition: %+v", protocol.ConditionTokensStale, node.Status.Conditions)
	}

	// Each serves its own part's metrics.
	_, scanMetrics := metricsOf(scanner, "/metrics")
	_, execMetrics := metricsOf(executor, "/metrics")
	for _, c := range []struct {
		who, body, metric string
		want              bool
	}{
		{"scanner", scanMetrics, `tokenroll_tokens{namespace="build",state="fresh"} 2`, true},
		{"scanner", scanMetrics, "tokenroll_actions_total", false},
		{"executor", execMetrics, `tokenroll_actions_total{action="kubelet-restart",result="done"} 1`, true},
		{"executor", execMetrics, "tokenroll_tokens", false},
		{"executor", execMetrics, "tokenroll_scan_duration_seconds", false},
	} {
		if strings.Contains(c.body, c.metric) != c.want {
			t.Errorf("the %s's /metrics has %s: %v, want %v", c.who, c.metric, !c.want, c.want)
		}
	}

	cancel()
	for _, p := range []*proc{scanner, executor} {
		select {
		case code := <-p.exit:
			if code != 0 {
				t.Errorf("the %s exited %d\n%s", p.name, code, p.stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the %s did not stop", p.name)
		}
	}
	if n := dialed.Load(); n != 0 {
		t.Errorf("the scanner connected to its --system-bus %d times; want never", n)
	}
	for _, p := range []string{noKubelet, noState} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v): a part touched the other part's path", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "actions.json")); err != nil {
		t.Errorf("the executor kept no record: %v", err)
	}
}

// fakeSystemd owns org.freedesktop.systemd1 and org.freedesktop.login1 on
// the bus, records each call and finishes every job.
type fakeSystemd struct {
	conn *dbus.Conn

	mu    sync.Mutex
	calls []string
	jobs  uint32
}

func (f *fakeSystemd) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeSystemd) record(call string) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	f.jobs++
	return f.jobs
}

type systemdManager struct{ f *fakeSystemd }

func (m systemdManager) RestartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	id := m.f.record("RestartUnit(" + strconv.Quote(name) + ", " + strconv.Quote(mode) + ")")
	job := dbus.ObjectPath("/org/freedesktop/systemd1/job/" + strconv.Itoa(int(id)))
	// systemd announces the job's end as a signal, after the reply.
	go func() {
		_ = m.f.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, "done")
	}()
	return job, nil
}

type login1Manager struct{ f *fakeSystemd }

func (m login1Manager) Reboot(interactive bool) *dbus.Error {
	m.f.record("Reboot(" + strconv.FormatBool(interactive) + ")")
	return nil
}

func startFakeSystemd(t *testing.T, address string) *fakeSystemd {
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
	f := &fakeSystemd{conn: conn}
	if err := conn.Export(systemdManager{f}, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Export(login1Manager{f}, "/org/freedesktop/login1", "org.freedesktop.login1.Manager"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"org.freedesktop.systemd1", "org.freedesktop.login1"} {
		if reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("owning %s: %v (%v)", name, reply, err)
		}
	}
	return f
}
