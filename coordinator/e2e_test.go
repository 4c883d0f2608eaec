package coordinator_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
	"github.com/tokenroll/tokenroll/sandbox/invariants"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

const (
	oldIssuer = "https://old.tokenroll.test"
	newIssuer = "https://new.tokenroll.test"
	ns        = "tokenroll"
	leaseName = "tokenroll-coordinator"
)

// env is a real control plane, simulated nodes with real agents, and an
// invariant checker watching through the API server.
type env struct {
	t     *testing.T
	ctx   context.Context
	cp    *controlplane.ControlPlane
	admin kubernetes.Interface
	// api is the tokenroll.io client (the CRDs are installed).
	api  versioned.Interface
	runs []*coordinatorRun
	// lastProbe is syncRan's last request time.
	lastProbe time.Time
	fleet     *fleet.Fleet
	checker   *invariants.Checker
	log       *zap.Logger
	// gate is the revision gate of the coordinator policyCoordinator
	// started (nil: none started).
	gate *coordinator.FakeGate
	// watchers are the recorders watchConcurrency started.
	watchers []*concurrency
}

func startEnv(t *testing.T, apiservers int, nodes ...string) *env {
	t.Helper()
	return startEnvWith(t, apiservers, nil, nodes...)
}

// startEnvWith is startEnv with the fleet's configuration changed by
// change (when not nil).
func startEnvWith(t *testing.T, apiservers int, change func(*fleet.Config), nodes ...string) *env {
	t.Helper()
	// Each test has a control plane, a fleet and ports of its own, and
	// spends its time waiting on them: the tests overlap (go test -parallel).
	t.Parallel()
	cp := controlplane.StartForTest(t, controlplane.Config{APIServers: apiservers, Issuers: []string{oldIssuer}})
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, ctx: ctx, cp: cp, admin: kubernetes.NewForConfigOrDie(cp.AdminConfig()), api: versioned.NewForConfigOrDie(cp.AdminConfig()), log: testLogger(t)}
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		cancel()
		t.Fatal(err)
	}
	fc := fleet.Config{CP: cp, Dir: t.TempDir(), Nodes: nodes, RebootDown: time.Second, Log: e.log}
	if change != nil {
		change(&fc)
	}
	f, err := fleet.Start(ctx, fc)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); f.Wait() })
	e.fleet = f
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if e.checker, err = invariants.Watch(ctx, e.admin, ns, leaseName); err != nil {
		t.Fatal(err)
	}
	if err := cp.PrepareNamespace(ctx, "build"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CoreV1().ServiceAccounts("build").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "build-robot"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		e.createPod(sandbox.BuildRobotPod("nginx-"+n, "build", n))
		e.createPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-" + n, Namespace: "build", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: n, Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1"}}}})
	}
	e.waitNodes("every agent reports 3 tokens from the old issuer", func(m map[string]*corev1.Node) bool {
		return allNodes(m, nodes, func(n *corev1.Node) bool { return tokensFrom(n, oldIssuer) == 3 })
	})
	return e
}

func (e *env) createPod(p *corev1.Pod) {
	e.t.Helper()
	if _, err := e.admin.CoreV1().Pods(p.Namespace).Create(e.ctx, p, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("creating pod %s: %v", p.Name, err)
	}
}

func allNodes(m map[string]*corev1.Node, names []string, ok func(*corev1.Node) bool) bool {
	for _, name := range names {
		if n := m[name]; n == nil || !ok(n) {
			return false
		}
	}
	return true
}

// tokensFrom counts the tokens the node's agent reports from iss, when all
// its tokens are from iss (else -1).
func tokensFrom(n *corev1.Node, iss string) int {
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil || len(rep.Issuers) != 1 || rep.Issuers[0].Issuer != iss {
		return -1
	}
	return rep.Issuers[0].Tokens
}

func (e *env) waitNodes(what string, cond func(map[string]*corev1.Node) bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	if err := e.checker.WaitFor(ctx, cond); err != nil {
		var reports []string
		_ = e.checker.WaitFor(context.Background(), func(m map[string]*corev1.Node) bool {
			for name, n := range m {
				reports = append(reports, name+": "+n.Annotations[protocol.AnnotationTokens]+" "+n.Annotations[protocol.AnnotationNodeState])
			}
			return true
		})
		e.t.Fatalf("waiting until %s: %v; saw %+v; reports %v", what, err, e.checker.Summary(), reports)
	}
}

// waitState polls the TokenRollouts until the state they hold meets cond.
func (e *env) waitState(what string, cond func(coordinator.State) bool) coordinator.State {
	e.t.Helper()
	var last coordinator.State
	err := wait.PollUntilContextTimeout(e.ctx, 100*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		st, err := coordinator.Store{Client: e.api}.Get(ctx)
		if err != nil {
			return false, nil //nolint:nilerr // read again until the timeout
		}
		last = st
		return cond(st), nil
	})
	if err != nil {
		e.t.Fatalf("waiting until %s: %v; last state %+v, last rollout %+v; nodes %+v", what, err, last, last.Rollout, e.checker.Summary())
	}
	return last
}

// waitObserved waits until a coordinator of this env saw iss with the gate
// open.
func (e *env) waitObserved(iss string) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(e.ctx, 100*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		for _, r := range e.runs {
			if got, _ := r.c.ObservedIssuer(); got == iss {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		e.t.Fatalf("waiting until a coordinator saw issuer %s: %v", iss, err)
	}
}

type coordinatorRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	reg    *prometheus.Registry
	// c takes audit events (Observe), as an audit source would give them.
	c *coordinator.Coordinator
}

func (r *coordinatorRun) stop() { r.cancel(); <-r.done }

// startCoordinator runs a coordinator replica with leader election, as
// `tokenroll coordinator` does.
func (e *env) startCoordinator(name string, gate coordinator.Gate, change func(*coordinator.Config)) *coordinatorRun {
	e.t.Helper()
	client := kubernetes.NewForConfigOrDie(e.cp.AdminConfig())
	if gate == nil {
		gate = mustGate(e.t, e.ctx, coordinator.GateNone, client)
	}
	reg := prometheus.NewRegistry()
	cfg := coordinator.Config{Client: client, Rollouts: versioned.NewForConfigOrDie(e.cp.AdminConfig()), Namespace: ns, Gate: gate, Strategy: coordinator.KubeletRestart,
		MaxUnavailable: intstr.FromInt32(1), DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute,
		TrustMargin: time.Hour, IssuerRefresh: time.Second, Auto: true, Registry: reg, Log: e.log.Named(name)}
	if change != nil {
		change(&cfg)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	r := &coordinatorRun{cancel: cancel, done: make(chan struct{}), reg: reg, c: c}
	e.runs = append(e.runs, r)
	go func() {
		defer close(r.done)
		_ = coordinator.RunElected(ctx, coordinator.LeaderConfig{Client: client, Namespace: ns, LeaseName: leaseName, Identity: name,
			LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond, Log: e.log.Named(name)}, c.Lead)
	}()
	e.t.Cleanup(r.stop)
	return r
}

func mustGate(t *testing.T, ctx context.Context, kind string, client kubernetes.Interface) coordinator.Gate {
	t.Helper()
	g, err := coordinator.NewGate(ctx, kind, client, nil)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// checkInvariants asserts what must hold after any rollout.
func (e *env) checkInvariants(maxUnavailable int) invariants.Summary {
	e.t.Helper()
	s := e.checker.Summary()
	if s.MaxConcurrentDisrupted > maxUnavailable {
		e.t.Errorf("%d nodes out of service at once (%v), more than %d", s.MaxConcurrentDisrupted, s.MaxDisruptedNodes, maxUnavailable)
	}
	if len(s.NodesLeftCordoned) > 0 {
		e.t.Errorf("nodes left cordoned: %v", s.NodesLeftCordoned)
	}
	for name, m := range e.fleet.Members {
		if got := int(m.Reboots.Load() + m.KubeletRestarts.Load()); got > s.ActionsPerNode[name] {
			e.t.Errorf("node %s: the executor acted %d times for %d requests", name, got, s.ActionsPerNode[name])
		}
	}
	return s
}

func (e *env) restartAPIServers(issuers ...string) {
	e.t.Helper()
	for i := range e.cp.APIServers() {
		if err := e.cp.RestartAPIServer(e.ctx, i, issuers); err != nil {
			e.t.Fatal(err)
		}
	}
}

// An issuer change with the least disruptive fix: the issuer changes and
// the old one is not trusted; every node holds old-issuer tokens, so every
// node gets a kubelet restart, one at a time, and ends with every token
// from the new issuer.
func TestIssuerChangeKubeletRestart(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	e := startEnv(t, 1, nodes...)
	run := e.startCoordinator("c1", nil, nil)
	e.waitObserved(oldIssuer)

	e.restartAPIServers(newIssuer)
	st := e.waitState("a rollout finished", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone
	})
	if st.Rollout.Trigger != coordinator.TriggerIssuer || len(st.Rollout.Nodes) != 3 || st.Rollout.Issuer != newIssuer {
		t.Errorf("rollout %+v: want 3 nodes for the issuer", st.Rollout)
	}
	e.waitNodes("every token from the new issuer", func(m map[string]*corev1.Node) bool {
		return allNodes(m, nodes, func(n *corev1.Node) bool { return tokensFrom(n, newIssuer) == 3 })
	})
	rep, err := coordinator.BuildStatus(e.ctx, e.admin, e.api, ns, newIssuer, coordinator.GateState{Provider: "none", Open: true, Message: "no revision gate (--gate=none)"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	if err := coordinator.WriteStatusTable(&table, rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("tokenroll status:\n%s", table.String())
	for _, want := range []string{"ROLLOUT   " + st.Rollout.ID + "  DONE  strategy=kubelet-restart  trigger=issuer  3/3 nodes done", "node-a  yes    yes    3       0      0           -     TokensFresh  done"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, table.String())
		}
	}
	problems, err := testutil.GatherAndLint(run.reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("the coordinator's metrics do not lint: %v %+v", err, problems)
	}
	if got := gatherGauge(t, run, "tokenroll_rollout_phase", "phase", "done"); got != 1 {
		t.Errorf("tokenroll_rollout_phase{phase=done} = %v", got)
	}
	if got := gatherGauge(t, run, "tokenroll_rollout_nodes", "state", "done"); got != 3 {
		t.Errorf("tokenroll_rollout_nodes{state=done} = %v", got)
	}
	s := e.checkInvariants(1)
	for _, name := range nodes {
		if s.ActionsPerNode[name] != 1 || e.fleet.Members[name].KubeletRestarts.Load() != 1 || e.fleet.Members[name].Reboots.Load() != 0 {
			t.Errorf("node %s: %d requests, %d kubelet restarts, %d reboots; want exactly one kubelet restart",
				name, s.ActionsPerNode[name], e.fleet.Members[name].KubeletRestarts.Load(), e.fleet.Members[name].Reboots.Load())
		}
	}
	// Events are written in the background by client-go's broadcaster (a
	// failed write is retried seconds later): watch until one of each per
	// node has arrived, then check there is no more than that.
	// A kubelet restart prepares nothing: no ActionRequested Event after
	// the Cordoned one; the plan's Event is on the rollout state.
	wanted := []string{"Cordoned", "Verified"}
	reasons := e.waitEvents(func(reasons map[string]int) bool {
		return !slices.ContainsFunc(wanted, func(r string) bool { return reasons[r] < 3 })
	})
	for _, want := range wanted {
		if reasons[want] != 3 {
			t.Errorf("%d %s events, want one per node (all: %v)", reasons[want], want, reasons)
		}
	}
	for _, none := range []string{"RolloutPlanned", "ActionRequested"} {
		if reasons[none] != 0 {
			t.Errorf("%d %s events on Nodes, want none (all: %v)", reasons[none], none, reasons)
		}
	}
}

// waitEvents watches the Events about Nodes in namespace default (where the
// Events of every cluster-scoped object go, a TokenRollout's too) until cond
// holds for the count of each reason, and returns the counts.
func (e *env) waitEvents(cond func(reasons map[string]int) bool) map[string]int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	lw := cache.NewListWatchFromClient(e.admin.EventsV1().RESTClient(), "events", metav1.NamespaceDefault, fields.Everything())
	seen := map[types.UID]string{}
	count := func() map[string]int {
		reasons := map[string]int{}
		for _, r := range seen {
			reasons[r]++
		}
		return reasons
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &eventsv1.Event{}, nil, func(ev watch.Event) (bool, error) {
		if o, ok := ev.Object.(*eventsv1.Event); ok && ev.Type != watch.Deleted && o.Regarding.Kind == "Node" {
			seen[o.UID] = o.Reason
		}
		return cond(count()), nil
	})
	if err != nil {
		e.t.Errorf("waiting for the coordinator's Events: %v; saw %v", err, count())
	}
	return count()
}

// The OpenShift documentation's rolling reboot, started by an administrator: drained through
// the eviction API, rebooted, back with a new boot ID, uncordoned, next.
// A node already cordoned by someone else is worked on and left cordoned.
func TestRebootRollout(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	e := startEnv(t, 1, nodes...)
	e.cordon("node-b", true)
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Auto, c.MaxUnavailable = false, intstr.FromInt32(2)
		c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	boot := map[string]string{}
	for _, n := range nodes {
		boot[n] = e.fleet.Members[n].Sim.BootID()
	}
	e.requestStart(coordinator.Reboot, "")
	st := e.waitState("the reboot rollout finished", func(s coordinator.State) bool { return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone })
	if st.Rollout.Strategy != coordinator.Reboot || len(st.Rollout.Nodes) != 3 {
		t.Errorf("rollout %+v", st.Rollout)
	}
	for _, n := range nodes {
		m := e.fleet.Members[n]
		if m.Reboots.Load() != 1 || m.Sim.BootID() == boot[n] {
			t.Errorf("node %s: %d reboots, boot ID %s (was %s)", n, m.Reboots.Load(), m.Sim.BootID(), boot[n])
		}
		// Drained: the bare pods were evicted (Force) and are gone.
		pods, err := e.admin.CoreV1().Pods("build").List(e.ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 0 {
			t.Errorf("node %s still has %d pods after its drain", n, len(pods.Items))
		}
	}
	// node-b was cordoned before and counts against max-unavailable=2: one
	// more node at a time; node-b must stay cordoned.
	s := e.checker.Summary()
	if s.MaxConcurrentDisrupted > 2 {
		t.Errorf("%d nodes out at once (%v)", s.MaxConcurrentDisrupted, s.MaxDisruptedNodes)
	}
	if len(s.NodesLeftCordoned) != 1 || s.NodesLeftCordoned[0] != "node-b" {
		t.Errorf("left cordoned: %v, want node-b only (it was cordoned before tokenroll)", s.NodesLeftCordoned)
	}
}

func (e *env) cordon(node string, on bool) *corev1.Node {
	e.t.Helper()
	n, err := e.admin.CoreV1().Nodes().Patch(e.ctx, node, "application/merge-patch+json", fmt.Appendf(nil, `{"spec":{"unschedulable":%v}}`, on), metav1.PatchOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) requestStart(s protocol.Strategy, selector string) {
	e.t.Helper()
	if _, err := coordinator.RequestStart(e.ctx, e.api, coordinator.StartSpec{Strategy: s, Nodes: selector, By: "test"}, time.Now()); err != nil {
		e.t.Fatal(err)
	}
}

// steer asks for a pause, resume or cancel as `tokenroll rollout` does,
// and waits until the coordinator has applied or refused it; it returns
// the state the coordinator wrote.
func (e *env) steer(verb coordinator.Verb) coordinator.State {
	e.t.Helper()
	id, _, err := coordinator.RequestSteer(e.ctx, e.api, verb, "test", time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return e.waitState("the coordinator applied or refused "+string(verb), func(s coordinator.State) bool {
		return s.Steer == nil && s.Rollout != nil && s.Rollout.ID == id
	})
}

// blockEvictions creates a PodDisruptionBudget that allows no eviction of
// the web pods, so a drain never ends.
func (e *env) blockEvictions() {
	e.t.Helper()
	minAvail := intstr.FromInt32(2)
	if _, err := e.admin.PolicyV1().PodDisruptionBudgets("build").Create(e.ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvail, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// A PodDisruptionBudget that allows no disruption blocks the drain: the
// rollout halts with DrainTimeout, the node is uncordoned, and its pods are
// still there.
func TestPDBBlocksDrainHalts(t *testing.T) {
	nodes := []string{"node-a", "node-b"}
	e := startEnv(t, 1, nodes...)
	e.blockEvictions()
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Auto, c.DrainTimeout = false, 5*time.Second
		c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	e.requestStart(coordinator.Reboot, "")
	st := e.waitState("the rollout halted", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutHalted
	})
	if st.Rollout.HaltReason != coordinator.HaltDrainTimeout || st.Rollout.HaltNode != "node-a" {
		t.Errorf("halted %s on %s (%s); want DrainTimeout on node-a", st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message)
	}
	e.waitNodes("node-a uncordoned and halted", func(m map[string]*corev1.Node) bool {
		n := m["node-a"]
		s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
		return !n.Spec.Unschedulable && err == nil && s.Step == protocol.StepHalted
	})
	if _, err := e.admin.CoreV1().Pods("build").Get(e.ctx, "web-node-a", metav1.GetOptions{}); err != nil {
		t.Errorf("the PDB-protected pod is gone: %v", err)
	}
	for _, n := range nodes {
		if r := e.fleet.Members[n].Reboots.Load(); r != 0 {
			t.Errorf("node %s rebooted %d times behind a blocked drain", n, r)
		}
	}
	e.checkInvariants(1)
	// Nothing more starts while halted: node-b is never touched.
	if s := e.checker.Summary(); s.NodeStates["node-b"] != "" {
		t.Errorf("node-b has state %q while the rollout is halted", s.NodeStates["node-b"])
	}
}

// A node that never comes back from its reboot halts the rollout
// (NodeNotBack) and the coordinator does not move on.
func TestNodeNotBackHalts(t *testing.T) {
	nodes := []string{"node-a", "node-b"}
	e := startEnv(t, 1, nodes...)
	e.fleet.Members["node-a"].NeverBack.Store(true)
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Auto, c.ActionTimeout = false, 8*time.Second
		c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	e.requestStart(coordinator.Reboot, "")
	st := e.waitState("the rollout halted", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutHalted
	})
	if st.Rollout.HaltReason != coordinator.HaltNodeNotBack || st.Rollout.HaltNode != "node-a" {
		t.Errorf("halted %s on %s (%s); want NodeNotBack on node-a", st.Rollout.HaltReason, st.Rollout.HaltNode, st.Rollout.Message)
	}
	e.waitNodes("node-a uncordoned", func(m map[string]*corev1.Node) bool { return !m["node-a"].Spec.Unschedulable })
	if r := e.fleet.Members["node-b"].Reboots.Load(); r != 0 {
		t.Errorf("node-b rebooted while node-a was not back")
	}
	s := e.checkInvariants(1)
	if s.ActionsPerNode["node-a"] != 1 {
		t.Errorf("node-a asked %d times", s.ActionsPerNode["node-a"])
	}
}

// testGate is the state of the tests' revision gate, open or closed.
func testGate(open bool) coordinator.GateState {
	if open {
		return coordinator.GateState{Provider: "test", Open: true, Message: "test gate open"}
	}
	return coordinator.GateState{Provider: "test", Message: "test gate closed"}
}

// A gate that closes mid-rollout pauses it between nodes; when it opens
// the rollout resumes and finishes. Nothing disruptive starts while closed.
func TestGateClosesMidRollout(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	e := startEnv(t, 1, nodes...)
	gate := coordinator.NewFakeGate(testGate(true))
	e.startCoordinator("c1", gate, func(c *coordinator.Config) { c.Auto = false })
	e.requestStart(coordinator.KubeletRestart, "")
	e.waitNodes("the first node done", func(m map[string]*corev1.Node) bool {
		for _, n := range m {
			if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil && s.Step == protocol.StepDone {
				return true
			}
		}
		return false
	})
	gate.Set(testGate(false))
	// Let whatever was in flight finish (a node acting goes on; one only
	// cordoned is released).
	before := e.quiesce()
	actions := e.totalActions()
	// The coordinator re-evaluates on every change; make some.
	for _, n := range nodes {
		e.cordon(n, false)
	}
	if after, inFlight := e.settled(); inFlight || !maps.Equal(after, before) {
		t.Errorf("nodes changed while the gate was closed:\nbefore %v\nafter  %v", before, after)
	}
	if after := e.totalActions(); after != actions {
		t.Errorf("%d actions while the gate was closed", after-actions)
	}
	gate.Set(testGate(true))
	e.waitState("the rollout finished after the gate opened", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone
	})
	s := e.checkInvariants(1)
	for _, n := range nodes {
		if s.ActionsPerNode[n] != 1 {
			t.Errorf("node %s: %d requests", n, s.ActionsPerNode[n])
		}
	}
}

// settled returns each node's state and request once the coordinator has
// finished a sync begun after this call (syncRan), and whether a node is
// in flight. The nodes are read from the API server, not a watch, so every
// write of that sync is in them.
func (e *env) settled() (map[string]string, bool) {
	e.t.Helper()
	e.syncRan()
	list, err := e.admin.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	inFlight := false
	for _, n := range list.Items {
		out[n.Name] = n.Annotations[protocol.AnnotationNodeState] + " " + n.Annotations[protocol.AnnotationRequest]
		if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil && s.Step.InProgress() {
			inFlight = true
		}
	}
	return out, inFlight
}

// syncRan returns once the coordinator has finished a sync begun after
// this call. A retry request for a node that does not exist is refused and
// acknowledged (status.retriedUntil) by a sync and by nothing else; a
// second one, acknowledged by a later sync, proves the first sync, its
// advance included, has finished: syncs are serial.
func (e *env) syncRan() {
	e.t.Helper()
	for i := range 2 {
		// Request times are kept to the second: each probe is a second
		// after the last.
		at := time.Now().Truncate(time.Second).Add(time.Second)
		if !at.After(e.lastProbe) {
			at = e.lastProbe.Add(time.Second)
		}
		e.lastProbe = at
		if err := coordinator.RequestRetry(e.ctx, e.api, []string{fmt.Sprintf("probe-%d", i)}, "test", at); err != nil {
			e.t.Fatalf("writing a probe: %v", err)
		}
		e.waitState(fmt.Sprintf("the coordinator acknowledged probe-%d", i), func(s coordinator.State) bool { return len(s.Retry) == 0 })
	}
}

// quiesce waits until no node is in flight, as settled sees the nodes.
func (e *env) quiesce() map[string]string {
	e.t.Helper()
	for {
		recs, inFlight := e.settled()
		if !inFlight {
			return recs
		}
		e.waitNodes("no node in flight", func(m map[string]*corev1.Node) bool {
			for _, n := range m {
				if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil && s.Step.InProgress() {
					return false
				}
			}
			return true
		})
	}
}

func (e *env) totalActions() int32 {
	var n int32
	for _, m := range e.fleet.Members {
		n += m.Reboots.Load() + m.KubeletRestarts.Load()
	}
	return n
}

// Two replicas; the leader is killed at each phase of a node's protocol
// (cordoned, acting, done); the other takes over and resumes. An observer
// proves one node at a time, one action per node, none left cordoned.
func TestFailoverResumes(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c", "node-d"}
	e := startEnv(t, 1, nodes...)
	gate := coordinator.NewFakeGate(testGate(true))
	replicas := map[string]*coordinatorRun{}
	started := 0
	start := func() {
		// A replica that comes back is a new process: a new identity.
		started++
		name := fmt.Sprintf("replica-%d", started)
		replicas[name] = e.startCoordinator(name, gate, func(c *coordinator.Config) {
			c.Auto, c.Strategy = false, coordinator.Reboot
			c.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
		})
	}
	start()
	start()
	e.requestStart(coordinator.Reboot, "")
	killed := 0
	killedOn := map[string]bool{}
	for _, step := range []protocol.Step{protocol.StepCordoned, protocol.StepActing, protocol.StepDone} {
		var target string
		e.waitNodes("a node "+string(step), func(m map[string]*corev1.Node) bool {
			for name, n := range m {
				if s, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil && s.Step == step && !killedOn[name+string(step)] {
					target = name
					return true
				}
			}
			return false
		})
		killedOn[target+string(step)] = true
		replicas[e.currentLeader()].stop()
		killed++
		start() // the Deployment replaces it
	}
	e.waitState("the rollout finished", func(s coordinator.State) bool { return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone })
	s := e.checkInvariants(1)
	for _, n := range nodes {
		if s.ActionsPerNode[n] != 1 || e.fleet.Members[n].Reboots.Load() != 1 {
			t.Errorf("node %s: %d requests, %d reboots; want one", n, s.ActionsPerNode[n], e.fleet.Members[n].Reboots.Load())
		}
	}
	if s.LeaderChanges < killed {
		t.Errorf("%d leader changes seen (%v), %d leaders killed", s.LeaderChanges, s.Leaders, killed)
	}
}

func (e *env) currentLeader() string {
	e.t.Helper()
	l, err := e.admin.CoordinationV1().Leases(ns).Get(e.ctx, leaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		e.t.Fatalf("reading the Lease: %v", err)
	}
	return *l.Spec.HolderIdentity
}

// testLogger logs warnings, or everything with TOKENROLL_TEST_LOG=info.
func testLogger(t *testing.T) *zap.Logger {
	level := zap.WarnLevel
	if os.Getenv("TOKENROLL_TEST_LOG") == "info" {
		level = zap.InfoLevel
	}
	return zaptest.NewLogger(t, zaptest.Level(level))
}

// gatherGauge reads one gauge from a coordinator replica's registry.
func gatherGauge(t *testing.T, r *coordinatorRun, name, label, value string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}

// syncRanOn is syncRan where no TokenRollout exists to carry a probe: it
// returns once r has finished a sync begun after this call, counting r's
// syncs. Syncs are serial, so the second to finish after the count was read
// began after it; a label change on node makes each of the two happen.
func (e *env) syncRanOn(r *coordinatorRun, node string) {
	e.t.Helper()
	base := syncCount(e.t, r)
	for i := range uint64(2) {
		e.label(node, map[string]string{"tokenroll.test/probe": strconv.FormatUint(i, 10)})
		err := wait.PollUntilContextTimeout(e.ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return syncCount(e.t, r) > base+i, nil
		})
		if err != nil {
			e.t.Fatalf("waiting for a sync after relabelling node %s: %v", node, err)
		}
	}
}

// syncCount is how many syncs a coordinator replica has finished.
func syncCount(t *testing.T, r *coordinatorRun) uint64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tokenroll_plan_sync_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}
