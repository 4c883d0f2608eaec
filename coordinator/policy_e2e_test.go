package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/policy"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
)

// The RolloutPolicies against a real API server, real agents and simulated
// kubelets: the CRDs as shipped, the coordinator reading them through the
// generated informers and writing their status.

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), ".."))
}

// installCRDs returns the tokenroll.io client: the env installed the CRDs.
func (e *env) installCRDs() versioned.Interface { return e.api }

// uninstallPolicyCRD deletes the RolloutPolicy CRD the env installed (the
// TokenRollout one stays: the coordinator keeps its record there) and
// waits until the API server no longer serves RolloutPolicies.
func (e *env) uninstallPolicyCRD() {
	e.t.Helper()
	crds := dynamic.NewForConfigOrDie(e.cp.AdminConfig()).Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if err := crds.Delete(e.ctx, "rolloutpolicies.tokenroll.io", metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("deleting the RolloutPolicy CRD: %v", err)
	}
	err := wait.PollUntilContextTimeout(e.ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.api.TokenrollV1alpha1().RolloutPolicies().List(ctx, metav1.ListOptions{Limit: 1})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		e.t.Fatalf("waiting until the API server no longer serves RolloutPolicies: %v", err)
	}
}

func (e *env) label(node string, labels map[string]string) {
	e.t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if _, err := e.admin.CoreV1().Nodes().Patch(e.ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) createPolicy(vc versioned.Interface, name string, sel map[string]string, spec func(*v1alpha1.RolloutPolicySpec)) {
	e.t.Helper()
	p := &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if sel != nil {
		p.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: sel}
	}
	if spec != nil {
		spec(&p.Spec)
	}
	if _, err := vc.TokenrollV1alpha1().RolloutPolicies().Create(e.ctx, p, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("creating RolloutPolicy %s: %v", name, err)
	}
}

// waitPolicy polls a policy until cond holds on it.
func (e *env) waitPolicy(vc versioned.Interface, name, what string, cond func(*v1alpha1.RolloutPolicy) bool) *v1alpha1.RolloutPolicy {
	e.t.Helper()
	var last *v1alpha1.RolloutPolicy
	err := wait.PollUntilContextTimeout(e.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		// A failed read is tried again, as a condition not met yet.
		p, err := vc.TokenrollV1alpha1().RolloutPolicies().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = p
		}
		return err == nil && cond(p), nil
	})
	if err != nil {
		e.t.Fatalf("RolloutPolicy %s: waiting until %s: %v; last status %+v", name, what, err, last.Status)
	}
	return last
}

func accepted(p *v1alpha1.RolloutPolicy) *metav1.Condition {
	return meta.FindStatusCondition(p.Status.Conditions, policy.ConditionAccepted)
}

// concurrency records, from every Node event in order, the most nodes of
// each group out of service at once (cordoned, or in a step of ours in
// progress), and the order nodes first went out of service. Across an API
// server restart its informer lists again and misses what changed
// meanwhile: restart the servers with changeIssuer.
type concurrency struct {
	mu      sync.Mutex
	groupOf func(*corev1.Node) string
	out     map[string]bool
	max     map[string]int
	started []string
	onStart func(node string)
	// mark is the last value of annotationMark seen on any node.
	mark string
}

func (e *env) watchConcurrency(groupOf func(*corev1.Node) string, onStart func(string)) *concurrency {
	c := &concurrency{groupOf: groupOf, out: map[string]bool{}, max: map[string]int{}, onStart: onStart}
	f := informers.NewSharedInformerFactory(e.admin, 0)
	inf := f.Core().V1().Nodes().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.see(o.(*corev1.Node)) },
		UpdateFunc: func(_, o any) { c.see(o.(*corev1.Node)) },
	})
	f.Start(e.ctx.Done())
	f.WaitForCacheSync(e.ctx.Done())
	e.watchers = append(e.watchers, c)
	return c
}

func (c *concurrency) see(n *corev1.Node) {
	st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	out := n.Spec.Unschedulable || (err == nil && st.Step.InProgress())
	c.mu.Lock()
	if m, ok := n.Annotations[annotationMark]; ok {
		c.mark = m
	}
	first := out && !c.out[n.Name] && !slices.Contains(c.started, n.Name)
	c.out[n.Name] = out
	if first {
		c.started = append(c.started, n.Name)
	}
	count := map[string]int{}
	for name, o := range c.out {
		if o {
			count[c.groupOf(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})]++
		}
	}
	for g, k := range count {
		c.max[g] = max(c.max[g], k)
	}
	onStart := c.onStart
	c.mu.Unlock()
	if first && onStart != nil {
		onStart(n.Name)
	}
}

func (c *concurrency) snapshot() (map[string]int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for k, v := range c.max {
		m[k] = v
	}
	return m, slices.Clone(c.started)
}

// annotationMark is the annotation watchersCaughtUp writes on a node.
const annotationMark = "test.tokenroll.io/mark"

// watchersCaughtUp writes a new mark on a node and waits until every
// watchConcurrency recorder has seen it: each watches the API servers as
// they are now, and sees every Node change from here on.
func (e *env) watchersCaughtUp() {
	e.t.Helper()
	mark := strconv.FormatInt(time.Now().UnixNano(), 10)
	node := slices.Sorted(maps.Keys(e.fleet.Members))[0]
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{annotationMark: mark}}})
	if _, err := e.admin.CoreV1().Nodes().Patch(e.ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(e.ctx, 50*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		for _, c := range e.watchers {
			c.mu.Lock()
			seen := c.mark == mark
			c.mu.Unlock()
			if !seen {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("waiting until every node watcher sees the API servers as they are now: %v", err)
	}
}

// changeIssuer restarts the API servers with issuers. A watch does not
// survive an API server restart: the informers of watchConcurrency list
// again once the servers are back, after a backoff that grows to seconds,
// and a node that went out of service and back before that list is never
// seen out. So the coordinator's gate stays closed, and no node starts,
// until every recorder watches the restarted servers.
func (e *env) changeIssuer(issuers ...string) {
	e.t.Helper()
	if len(e.watchers) == 0 {
		e.restartAPIServers(issuers...)
		return
	}
	if e.gate == nil {
		e.t.Fatal("changeIssuer with node watchers needs the gate of policyCoordinator")
	}
	e.gate.Set(coordinator.GateState{Provider: "test", Message: "closed while the API servers restart"})
	e.restartAPIServers(issuers...)
	e.watchersCaughtUp()
	e.gate.Set(noGate)
}

// noGate is the state of --gate=none.
var noGate = coordinator.GateState{Provider: coordinator.GateNone, Open: true, Message: "no revision gate (--gate=none)"}

// byPrefix groups nodes by the part of their name before "-".
func byPrefix(n *corev1.Node) string { g, _, _ := strings.Cut(n.Name, "-"); return g }

// policyCoordinator runs a coordinator reading RolloutPolicies, behind a
// gate as --gate=none (always open) that changeIssuer closes for a while.
func (e *env) policyCoordinator(vc versioned.Interface, change func(*coordinator.Config)) *coordinatorRun {
	e.gate = coordinator.NewFakeGate(noGate)
	return e.startCoordinator("c1", e.gate, func(cfg *coordinator.Config) {
		cfg.Policies = vc
		cfg.PolicyRecheck = 300 * time.Millisecond
		if change != nil {
			change(cfg)
		}
	})
}

func (e *env) rollOutNewIssuer() coordinator.State {
	e.t.Helper()
	e.waitObserved(oldIssuer)
	e.changeIssuer(newIssuer)
	return e.waitState("a rollout finished", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Issuer == newIssuer && s.Rollout.Phase == coordinator.RolloutDone
	})
}

// Without the RolloutPolicy CRD (a cluster upgraded from the flags, or one that never
// installed it), a coordinator reading RolloutPolicies, as it does by
// default, says so once, in a Warning Event, and rolls out under its
// flags: it neither waits for the policies nor fails.
func TestPolicyCRDNotInstalledFollowsTheFlags(t *testing.T) {
	nodes := []string{"n-1", "n-2"}
	e := startEnv(t, 1, nodes...)
	e.uninstallPolicyCRD()
	e.policyCoordinator(versioned.NewForConfigOrDie(e.cp.AdminConfig()), nil)
	st := e.rollOutNewIssuer()
	if len(st.Rollout.Nodes) != 2 {
		t.Errorf("rollout %+v", st.Rollout)
	}
	var told []string
	err := wait.PollUntilContextTimeout(e.ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		// A failed read is tried again, as a condition not met yet. The
		// Event is on a TokenRollout, cluster-scoped: it is in default.
		list, err := e.admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, ctx.Err()
		}
		told = nil
		for _, ev := range list.Items {
			if ev.Reason == coordinator.ReasonPoliciesNotServed {
				told = append(told, ev.Type+" "+ev.Note)
			}
		}
		return len(told) > 0, nil
	})
	if err != nil || len(told) != 1 || !strings.HasPrefix(told[0], "Warning the API server does not serve rolloutpolicies.tokenroll.io (the CRD is not installed): every node follows the coordinator's flags; install the CRDs") {
		t.Errorf("Events %s: %q (%v); want one Warning saying the CRD is not installed and the flags apply", coordinator.ReasonPoliciesNotServed, told, err)
	}
	e.checkInvariants(1)
}

// Two pools with different maxUnavailable: pool a (2 at once) and the
// nodes no policy covers (the flags: 1 at once), each kept to its own.
func TestPolicyPools(t *testing.T) {
	nodes := []string{"a-1", "a-2", "a-3", "rest-1", "rest-2"}
	e := startEnv(t, 1, nodes...)
	vc := e.installCRDs()
	for _, n := range nodes[:3] {
		e.label(n, map[string]string{"pool": "a"})
	}
	e.createPolicy(vc, "pool-a", map[string]string{"pool": "a"}, func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = ptr.To(intstr.FromInt32(2)) })
	rec := e.watchConcurrency(byPrefix, nil)
	e.policyCoordinator(vc, nil)
	p := e.waitPolicy(vc, "pool-a", "it is accepted with its 3 nodes", func(p *v1alpha1.RolloutPolicy) bool {
		c := accepted(p)
		return c != nil && c.Status == metav1.ConditionTrue && p.Status.Nodes == 3
	})
	if c := accepted(p); c.Reason != policy.ReasonValid || c.ObservedGeneration != p.Generation || p.Status.ObservedGeneration != p.Generation {
		t.Errorf("Accepted %+v, observedGeneration %d, generation %d", c, p.Status.ObservedGeneration, p.Generation)
	}
	e.rollOutNewIssuer()
	got, _ := rec.snapshot()
	if got["a"] != 2 || got["rest"] != 1 {
		t.Errorf("most nodes out of service at once: %v; want pool a at its 2 and the rest at the flags' 1", got)
	}
	e.checkInvariants(3)
}

// Three zones at one node per zone: a pool of 3 at once never has two
// nodes of a zone out of service together.
func TestPolicyZones(t *testing.T) {
	nodes := []string{"z1-a", "z1-b", "z2-a", "z3-a"}
	e := startEnv(t, 1, nodes...)
	vc := e.installCRDs()
	for _, n := range nodes {
		z, _, _ := strings.Cut(n, "-")
		e.label(n, map[string]string{policy.DefaultTopologyKey: z})
	}
	e.createPolicy(vc, "zoned", nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.MaxUnavailable = ptr.To(intstr.FromInt32(3))
		s.Zones = &v1alpha1.ZonePolicy{MaxUnavailable: ptr.To[int32](1), Order: v1alpha1.ZoneOrderParallel}
	})
	rec := e.watchConcurrency(byPrefix, nil)
	all := e.watchConcurrency(func(*corev1.Node) string { return "all" }, nil)
	e.policyCoordinator(vc, nil)
	e.rollOutNewIssuer()
	perZone, _ := rec.snapshot()
	total, _ := all.snapshot()
	if perZone["z1"] != 1 || perZone["z2"] != 1 || perZone["z3"] != 1 {
		t.Errorf("most nodes out of service at once per zone: %v, want 1 in each", perZone)
	}
	if total["all"] < 2 {
		t.Errorf("at most %d nodes out of service at once: the zones did not go in parallel", total["all"])
	}
}

// shiftClock is the real clock moved by an offset the test sets: the
// coordinator's timers run as ever, and the time of day it reads is the
// test's.
type shiftClock struct {
	clock.RealClock
	offset atomic.Int64
}

func (c *shiftClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *shiftClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c *shiftClock) set(t time.Time)                 { c.offset.Store(int64(time.Until(t))) }

// A window that closes while a node is acting: that node finishes, no
// other starts, the wait and the policy's status say so and name the next
// window; when it opens, the rollout resumes and completes. The agents and
// the coordinator share the test's clock (requests are dated by one and
// aged by the other), moved by minutes only: the tokens the simulated
// kubelets get are dated by the API server's real clock, and must stay
// fresh on the agents' clock.
func TestPolicyWindowClosesAndReopens(t *testing.T) {
	nodes := []string{"n-1", "n-2", "n-3"}
	clk := &shiftClock{}
	e := startEnvWith(t, 1, func(fc *fleet.Config) { fc.AgentClock = clk }, nodes...)
	vc := e.installCRDs()
	base := time.Now().UTC().Truncate(time.Minute)
	hhmm := func(d time.Duration) string { return base.Add(d).Format("15:04") }
	// Open now until base+10m; then again from base+25m to base+35m.
	e.createPolicy(vc, "windows", nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.Windows = []v1alpha1.MaintenanceWindow{{Start: hhmm(-10 * time.Minute), End: hhmm(10 * time.Minute)},
			{Start: hhmm(25 * time.Minute), End: hhmm(35 * time.Minute)}}
	})
	var firstNode atomic.Value
	e.watchConcurrency(byPrefix, func(node string) {
		// The window closes the moment the first node starts.
		if firstNode.CompareAndSwap(nil, node) {
			clk.set(base.Add(12 * time.Minute))
		}
	})
	// The step timeouts run on the same clock: long enough that the jump
	// past the window's end is not a node's timeout.
	e.policyCoordinator(vc, func(cfg *coordinator.Config) {
		cfg.Clock = clk
		cfg.DrainTimeout, cfg.ActionTimeout, cfg.VerifyTimeout = time.Hour, time.Hour, time.Hour
	})
	e.waitPolicy(vc, "windows", "its window is open", func(p *v1alpha1.RolloutPolicy) bool {
		c := accepted(p)
		return c != nil && c.Status == metav1.ConditionTrue && p.Status.NextWindowStart == nil
	})
	e.waitObserved(oldIssuer)
	e.changeIssuer(newIssuer)
	st := e.waitState("the rollout waits for the window", func(s coordinator.State) bool {
		return s.Waiting != nil && s.Waiting.Reason == coordinator.WaitWindow && s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutRunning
	})
	first, _ := firstNode.Load().(string)
	next := base.Add(25 * time.Minute)
	if want := "the next opens at " + next.Format(time.RFC3339); !strings.Contains(st.Waiting.Message, want) {
		t.Errorf("wait %q lacks %q", st.Waiting.Message, want)
	}
	p := e.waitPolicy(vc, "windows", "its status shows the next window", func(p *v1alpha1.RolloutPolicy) bool { return p.Status.NextWindowStart != nil })
	if !p.Status.NextWindowStart.Time.Equal(next) {
		t.Errorf("nextWindowStart %v, want %v", p.Status.NextWindowStart, next)
	}
	e.waitNodes("the node acting when the window closed finished", func(m map[string]*corev1.Node) bool {
		return m[first] != nil && readStep(m[first]) == protocol.StepDone && !m[first].Spec.Unschedulable
	})
	// Nothing else starts while the window is closed, however long the
	// coordinator looks.
	time.Sleep(2 * time.Second)
	for _, n := range nodes {
		node, err := e.admin.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n != first && (node.Spec.Unschedulable || readStep(node) != "") {
			t.Errorf("node %s started outside the window: step %q, unschedulable %v", n, readStep(node), node.Spec.Unschedulable)
		}
	}
	// Open again. The coordinator looks again on a change, and when its
	// timer for the window fires; that timer runs on real time, which the
	// test does not wait for: it touches the policy.
	clk.set(base.Add(26 * time.Minute))
	if _, err := vc.TokenrollV1alpha1().RolloutPolicies().Patch(e.ctx, "windows", types.MergePatchType, []byte(`{"metadata":{"annotations":{"touched":"yes"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	st = e.waitState("the rollout completed in the next window", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Issuer == newIssuer && s.Rollout.Phase == coordinator.RolloutDone
	})
	if len(st.Rollout.Nodes) != 3 {
		t.Errorf("rollout %+v", st.Rollout)
	}
	e.waitPolicy(vc, "windows", "its status shows the window open", func(p *v1alpha1.RolloutPolicy) bool { return p.Status.NextWindowStart == nil })
	e.checkInvariants(1)
}

func readStep(n *corev1.Node) protocol.Step {
	st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
	if err != nil {
		return ""
	}
	return st.Step
}

// A blocking pod keeps its node from starting until it ends; the policy's
// webhook is told of the start, each node done and the completion; a
// second policy selecting the same node is refused with a clear condition.
func TestPolicyBlockingPodAndWebhook(t *testing.T) {
	nodes := []string{"n-1", "n-2"}
	e := startEnv(t, 1, nodes...)
	vc := e.installCRDs()
	type note struct {
		Event, Rollout, Node, Policy, Message, Source string
	}
	notes := make(chan note, 16)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n note
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &n); err != nil {
			t.Errorf("webhook body %q: %v", b, err)
		}
		notes <- n
	}))
	defer hook.Close()
	if _, err := e.admin.CoreV1().Secrets(ns).Create(e.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hooks"},
		StringData: map[string]string{"ops": hook.URL + "/hook"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.createPolicy(vc, "everything", nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.Blockers = &v1alpha1.Blockers{Pods: []v1alpha1.PodSelector{{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db-migration"}}}}}
		s.Notifications = []v1alpha1.Notification{{Name: "ops", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "ops"},
			Events: []v1alpha1.NotificationEvent{v1alpha1.NotifyRolloutStarted, v1alpha1.NotifyNodeDone, v1alpha1.NotifyRolloutComplete}}}
	})
	// Two policies with the same selector: no node carries it until the
	// end of the test, when both are refused for that node.
	e.createPolicy(vc, "overlap-x", map[string]string{"overlap": "yes"}, nil)
	e.createPolicy(vc, "overlap-y", map[string]string{"overlap": "yes"}, nil)
	e.createPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "migrate", Namespace: "build", Labels: map[string]string{"app": "db-migration"}},
		Spec: corev1.PodSpec{NodeName: "n-2", Containers: []corev1.Container{{Name: "m", Image: "registry.example/migrate:1"}}}})
	e.policyCoordinator(vc, nil)
	e.waitObserved(oldIssuer)
	e.restartAPIServers(newIssuer)
	st := e.waitState("n-2 waits for its blocking pod", func(s coordinator.State) bool {
		return s.Waiting != nil && s.Waiting.Reason == coordinator.WaitBlockingPod
	})
	if want := "node n-2 runs pods that RolloutPolicy everything says block it (build/migrate)"; !strings.Contains(st.Waiting.Message, want) {
		t.Errorf("wait %q lacks %q", st.Waiting.Message, want)
	}
	e.waitNodes("n-1 done while n-2 waits", func(m map[string]*corev1.Node) bool {
		return readStep(m["n-1"]) == protocol.StepDone && readStep(m["n-2"]) == "" && !m["n-2"].Spec.Unschedulable
	})
	if err := e.admin.CoreV1().Pods("build").Delete(e.ctx, "migrate", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	e.waitState("the rollout completed once the pod was gone", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Issuer == newIssuer && s.Rollout.Phase == coordinator.RolloutDone
	})
	var got []string
	timeout := time.After(30 * time.Second)
	for len(got) < 4 {
		select {
		case n := <-notes:
			if n.Source != "tokenroll" || n.Policy != "everything" || n.Rollout == "" {
				t.Errorf("notification %+v", n)
			}
			got = append(got, n.Event+":"+n.Node)
		case <-timeout:
			t.Fatalf("notifications %v, want 4", got)
		}
	}
	if want := []string{"RolloutStarted:", "NodeDone:n-1", "NodeDone:n-2", "RolloutComplete:"}; !slices.Equal(got, want) {
		t.Errorf("notifications %v, want %v", got, want)
	}
	// Overlapping selectors: refused, each naming the other.
	e.label("n-1", map[string]string{"overlap": "yes"})
	for _, pair := range [][2]string{{"overlap-x", "overlap-y"}, {"overlap-y", "overlap-x"}} {
		p := e.waitPolicy(vc, pair[0], "it is refused for its overlap", func(p *v1alpha1.RolloutPolicy) bool {
			c := accepted(p)
			return c != nil && c.Reason == policy.ReasonSelectorOverlap
		})
		if c := accepted(p); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, fmt.Sprintf("policy %s also selects 1 of its nodes (n-1, for one)", pair[1])) {
			t.Errorf("%s: Accepted %+v", pair[0], c)
		}
	}
	e.checkInvariants(1)
}

// startPrometheus runs the Prometheus server the deploy tests and the
// sandbox build from the pinned module, scraping target every second and
// evaluating rules; it returns its base URL.
func startPrometheus(t *testing.T, ctx context.Context, target, rules string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "bash", filepath.Join(repoRoot(), "test/deploy/tools/build.sh")).Output()
	if err != nil {
		t.Fatalf("building the deploy tools (prometheus): %v", err)
	}
	bin := filepath.Join(strings.TrimSpace(string(out)), "prometheus")
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
- job_name: maintenance
  static_configs: [{targets: [%q]}]
`, filepath.Join(dir, "rules.yaml"), target)
	for name, data := range map[string]string{"prometheus.yml": cfg, "rules.yaml": rules} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	url := "http://" + addr
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		resp, err := http.Get(url + "/-/ready")
		if err == nil {
			_ = resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("prometheus at %s never ready: %v", url, err)
	}
	return url
}

// waitAlert polls Prometheus until the alert named name is (firing) or is
// not (resolved) active.
func waitAlert(t *testing.T, ctx context.Context, url, name string, firing bool) {
	t.Helper()
	src, err := policy.NewPrometheus(policy.PrometheusConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		alerts, err := src.Alerts(ctx)
		active := slices.ContainsFunc(alerts, func(a policy.Alert) bool { return a.Name == name && a.State == policy.AlertFiring })
		return err == nil && active == firing, nil
	})
	if err != nil {
		t.Fatalf("alert %s firing=%v: %v", name, firing, err)
	}
}

// An alert firing in a real Prometheus holds the rollout before its first
// node, and the wait names it; tokenroll's own alerts never block (the
// default ignore); once the alert resolves, the rollout goes on.
func TestPolicyBlockingAlert(t *testing.T) {
	nodes := []string{"n-1", "n-2"}
	e := startEnv(t, 1, nodes...)
	vc := e.installCRDs()
	reg := prometheus.NewRegistry()
	maintenance := prometheus.NewGauge(prometheus.GaugeOpts{Name: "maintenance_in_progress", Help: "1 while the database team works."})
	reg.MustRegister(maintenance)
	maintenance.Set(1)
	target := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer target.Close()
	url := startPrometheus(t, e.ctx, strings.TrimPrefix(target.URL, "http://"), `groups:
- name: test
  rules:
  - alert: DatabaseMaintenance
    expr: maintenance_in_progress > 0
    labels: {severity: critical}
  - alert: TokenrollOldIssuerTokensUntrusted
    expr: vector(1)
    labels: {severity: critical}
`)
	waitAlert(t, e.ctx, url, "DatabaseMaintenance", true)
	waitAlert(t, e.ctx, url, "TokenrollOldIssuerTokensUntrusted", true)
	e.createPolicy(vc, "alerts", nil, func(s *v1alpha1.RolloutPolicySpec) {
		s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: url,
			Matchers: []v1alpha1.AlertMatcher{{Label: "severity", Operator: "=", Value: "critical"}}, Ignore: []string{"Tokenroll.*"}}}
	})
	e.policyCoordinator(vc, nil)
	e.waitObserved(oldIssuer)
	e.restartAPIServers(newIssuer)
	st := e.waitState("the rollout waits for the alert", func(s coordinator.State) bool {
		return s.Waiting != nil && s.Waiting.Reason == coordinator.WaitBlockingAlert
	})
	if want := "alerts block pool alerts: DatabaseMaintenance (firing); it starts once they resolve"; !strings.Contains(st.Waiting.Message, want) || strings.Contains(st.Waiting.Message, "Tokenroll") {
		t.Errorf("wait %q: want %q, and no tokenroll alert", st.Waiting.Message, want)
	}
	for _, n := range nodes {
		node, err := e.admin.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Spec.Unschedulable || readStep(node) != "" {
			t.Errorf("node %s started while the alert fired: step %q", n, readStep(node))
		}
	}
	maintenance.Set(0)
	e.waitState("the rollout completed once the alert resolved", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Issuer == newIssuer && s.Rollout.Phase == coordinator.RolloutDone
	})
	e.checkInvariants(1)
}
