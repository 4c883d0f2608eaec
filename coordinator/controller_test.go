package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// A reboot walks a node through cordon, drain, request, verify and release,
// and finishes the rollout; a node found cordoned is left cordoned.
func TestRebootNode(t *testing.T) {
	for _, found := range []string{"schedulable", "cordoned by someone else"} {
		t.Run(found, func(t *testing.T) {
			already := found != "schedulable"
			n1 := testNode("n1", withReport(oldIssuerReport()))
			if already {
				cordoned(n1)
			}
			f := newFixture(t, n1, testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1")))

			f.sync()
			cordonedAt := started(Reboot, !already, t0)
			f.expectWrites(cordonNode("n1", cordonedAt))
			how := "cordoned"
			if already {
				how = "already cordoned; left cordoned afterwards"
			}
			f.expectEvents("Normal Cordoned rollout r-test: " + how + " for reboot (requested by alice)")

			if d := f.sync(); d != 10*time.Minute {
				t.Errorf("while draining, the next look is in %s; want the drain timeout, 10m", d)
			}
			f.awaitDrainEnd()
			f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
			f.expectWrites()

			f.clock.Step(30 * time.Second)
			f.sync()
			got := f.writes()
			if len(got) != 1 {
				t.Fatalf("after the drain: %v; want one node patch", got)
			}
			id := requestIn(t, got[0], protocol.ActionReboot, "n1", t0.Add(30*time.Second))
			actingAt := acting(cordonedAt, t0.Add(30*time.Second), id)
			want := patchNode("n1", &actingAt, nil)
			want.Request = got[0].Request
			if got[0].String() != want.String() {
				t.Errorf("request patch %s; want %s", got[0], want)
			}
			f.expectEvents("Normal ActionRequested rollout r-test: drained; asked the agent to reboot (request " + id + ")")

			if d := f.sync(); d != 15*time.Minute {
				t.Errorf("waiting for the reboot, the next look is in %s; want the action timeout, 15m", d)
			}
			f.expectWrites()

			// Back with a new boot ID, but the report is the old agent's.
			f.updateNode("n1", bootID("boot-2"))
			f.clock.Step(time.Minute)
			f.sync()
			f.expectWrites()

			f.updateNode("n1", withReport(cleanReport()))
			f.clock.Step(time.Minute)
			f.sync()
			var uncordon *bool
			if !already {
				uncordon = ptr(false)
			}
			end := t0.Add(150 * time.Second)
			doneAt := done(actingAt, end)
			f.expectWrites(patchNode("n1", &doneAt, uncordon), updateState(finished(rollout(Reboot, "n1"), RolloutDone, end)))
			how = "uncordoned"
			if already {
				how = "left cordoned as it was found"
			}
			f.expectEvents("Normal Verified rollout r-test: reboot verified in 2m30s; " + how)
			if f.node("n1").Spec.Unschedulable != already {
				t.Errorf("n1 unschedulable=%v at the end; want %v", f.node("n1").Spec.Unschedulable, already)
			}

			f.sync()
			f.expectWrites()
		})
	}
}

// A kubelet restart needs no drain: the request follows the cordon.
func TestKubeletRestartNode(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.sync()
	cordonedAt := started(KubeletRestart, true, t0)
	f.expectWrites(cordonNode("n1", cordonedAt))

	f.clock.Step(time.Second)
	f.sync()
	got := f.writes()
	if len(got) != 1 {
		t.Fatalf("writes %v; want the request", got)
	}
	id := requestIn(t, got[0], protocol.ActionKubeletRestart, "n1", t0.Add(time.Second))
	actingAt := acting(cordonedAt, t0.Add(time.Second), id)
	want := patchNode("n1", &actingAt, nil)
	want.Request = got[0].Request
	if got[0].String() != want.String() {
		t.Errorf("request patch %s; want %s", got[0], want)
	}
	f.expectDrains()
	// No ActionRequested Event: nothing was prepared, and the Cordoned
	// Event a second ago named the strategy.
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for kubelet-restart (requested by alice)")

	f.updateNode("n1", agentStatus(id, protocol.PhaseRunning, ""))
	f.sync()
	f.expectWrites()

	f.updateNode("n1", agentStatus(id, protocol.PhaseDone, "kubelet restarted"))
	f.clock.Step(20 * time.Second)
	f.sync()
	doneAt := done(actingAt, t0.Add(21*time.Second))
	f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(finished(rollout(KubeletRestart, "n1"), RolloutDone, t0.Add(21*time.Second))))
}

// verify: what each strategy needs before a node counts as done, when it
// looks again while waiting, and the halt when the wait outlasts its
// deadline (--action-timeout alone while the action itself is awaited,
// plus --verify-timeout after it).
func TestVerify(t *testing.T) {
	const req = "r-test-0000beef"
	const (
		notRestarted = "the agent has not reported the kubelet restarted"
		notReadyYet  = "the node is not Ready"
		notBack      = "the node is not back with a new boot ID and Ready"
		oldTokens    = "the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test"
	)
	type tc struct {
		name  string
		opts  []func(*corev1.Node)
		objs  []runtime.Object
		done  bool
		after time.Duration // the next look, when waiting
		// halts is how long until the wait halts the rollout (0: after),
		// with reason, saying waiting.
		halts           time.Duration
		reason, waiting string
		// unresolved: the wait ends with the node unresolved, the rollout
		// going on, instead of a halt.
		unresolved bool
	}
	const verifyDeadline = 19 * time.Minute // the action asked for a minute ago
	byStrategy := map[protocol.Strategy][]tc{
		KubeletRestart: {
			{name: "no status yet", after: 14 * time.Minute, reason: HaltActionTimeout, waiting: notRestarted},
			{name: "running", opts: opts(agentStatus(req, protocol.PhaseRunning, "")), after: 14 * time.Minute, reason: HaltActionTimeout, waiting: notRestarted},
			{name: "done for an earlier request", opts: opts(agentStatus("r-test-0000dead", protocol.PhaseDone, "")), after: 14 * time.Minute, reason: HaltActionTimeout, waiting: notRestarted},
			{name: "done, node not Ready", opts: opts(agentStatus(req, protocol.PhaseDone, ""), notReady), after: verifyDeadline, reason: HaltVerifyTimeout, waiting: notReadyYet},
			{name: "done, old-issuer tokens", opts: opts(agentStatus(req, protocol.PhaseDone, ""), withReport(oldIssuerReport())), after: verifyDeadline, reason: HaltVerifyTimeout, waiting: oldTokens, unresolved: true},
			{name: "done, expired tokens", opts: opts(agentStatus(req, protocol.PhaseDone, ""), withReport(expiredReport())), after: verifyDeadline, reason: HaltVerifyTimeout,
				waiting: "the agent reports 1 token expired or overdue", unresolved: true},
			{name: "done, no report", opts: opts(agentStatus(req, protocol.PhaseDone, ""), func(n *corev1.Node) { delete(n.Annotations, protocol.AnnotationTokens) }), after: verifyDeadline,
				reason: HaltVerifyTimeout, waiting: "no token report from the agent"},
			{name: "done and clean", opts: opts(agentStatus(req, protocol.PhaseDone, "")), done: true},
		},
		Reboot: {
			{name: "same boot ID", after: 14 * time.Minute, reason: HaltNodeNotBack, waiting: notBack},
			{name: "new boot ID, not Ready", opts: opts(bootID("boot-2"), notReady), after: 14 * time.Minute, reason: HaltNodeNotBack, waiting: notBack},
			{name: "new boot ID, report from before the reboot", opts: opts(bootID("boot-2"), withReport(oldIssuerReport())), after: verifyDeadline, reason: HaltVerifyTimeout, waiting: oldTokens, unresolved: true},
			{name: "new boot ID, Ready, clean", opts: opts(bootID("boot-2")), done: true},
		},
		PodRestart: {
			{name: "old-issuer tokens", opts: opts(withReport(oldIssuerReport())), objs: objs(replicaSet("app", "web", 2, 2)), after: 2 * time.Second,
				halts: verifyDeadline, reason: HaltVerifyTimeout, waiting: oldTokens, unresolved: true},
			{name: "ReplicaSet not ready", objs: objs(replicaSet("app", "web", 2, 1), statefulSet("app", "db", 1, 1)), after: 2 * time.Second,
				halts: verifyDeadline, reason: HaltVerifyTimeout, waiting: "ReplicaSet/app/web has 1 of 2 replicas ready"},
			{name: "StatefulSet not ready", objs: objs(replicaSet("app", "web", 2, 2), statefulSet("app", "db", 3, 2)), after: 2 * time.Second,
				halts: verifyDeadline, reason: HaltVerifyTimeout, waiting: "StatefulSet/app/db has 2 of 3 replicas ready"},
			{name: "DaemonSet not ready", objs: objs(replicaSet("app", "web", 2, 2), statefulSet("app", "db", 1, 1), daemonSet("app", "agent", 3, 2)), after: 2 * time.Second,
				halts: verifyDeadline, reason: HaltVerifyTimeout, waiting: "DaemonSet/app/agent has 2 of 3 replicas ready"},
			{name: "every owner ready", objs: objs(replicaSet("app", "web", 2, 2), statefulSet("app", "db", 1, 1), daemonSet("app", "agent", 3, 3)), done: true},
			{name: "owners gone", done: true},
		},
	}
	for strategy, cases := range byStrategy {
		for _, c := range cases {
			t.Run(string(strategy)+"/"+c.name, func(t *testing.T) {
				st := acting(started(strategy, true, t0.Add(-2*time.Minute)), t0.Add(-time.Minute), req)
				if strategy == PodRestart {
					st.Request = ""
					st.Owners = []protocol.OwnerRef{{Kind: "DaemonSet", Namespace: "app", Name: "agent"}, {Kind: "Job", Namespace: "app", Name: "batch"},
						{Kind: "ReplicaSet", Namespace: "app", Name: "web"}, {Kind: "StatefulSet", Namespace: "app", Name: "db"}}
				}
				n1 := testNode("n1", append([]func(*corev1.Node){cordoned, inStep(st)}, c.opts...)...)
				f := newFixture(t, append(c.objs, n1, rolloutConfigMap(rollout(strategy, "n1")))...)
				d := f.sync()
				if c.done {
					doneAt := done(st, t0)
					f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(finished(rollout(strategy, "n1"), RolloutDone, t0)))
					return
				}
				f.expectWrites()
				if d != c.after {
					t.Errorf("next look in %s; want %s", d, c.after)
				}
				halts := cmp.Or(c.halts, c.after)
				f.clock.Step(halts - time.Second)
				f.sync()
				f.expectWrites() // not yet
				f.clock.Step(time.Second)
				f.sync()
				at := t0.Add(halts)
				msg := fmt.Sprintf("%s after %s", c.waiting, at.Sub(st.StepAt))
				if c.unresolved {
					u := unresolved(st, at, msg, f.node("n1"))
					fin := finished(rollout(strategy, "n1"), RolloutDone, at)
					fin.Rollout.Message = "1 node unresolved, tokens still stale after the action (n1): tokenroll rollout retry NODE"
					f.expectWrites(patchNode("n1", &u, ptr(false)), updateState(fin))
					return
				}
				h := halted(st, at, c.reason, msg)
				f.expectWrites(patchNode("n1", &h, ptr(false)), updateState(haltedState(rollout(strategy, "n1"), "n1", c.reason, msg, at)))
			})
		}
	}
}

func opts(o ...func(*corev1.Node)) []func(*corev1.Node) { return o }

func objs(o ...runtime.Object) []runtime.Object { return o }

// A pod restart evicts exactly the live, controller-owned pods the agent
// reports stale, records them, and is verified by their controllers.
func TestPodRestartNode(t *testing.T) {
	web := pod("app", "web-1", "n1", "ReplicaSet", "web")
	db := pod("app", "db-0", "n1", "StatefulSet", "db")
	replaced := pod("app", "web-2", "n1", "ReplicaSet", "web")
	moved := pod("app", "web-3", "n2", "ReplicaSet", "web")
	leaving := pod("app", "web-4", "n1", "ReplicaSet", "web")
	leaving.DeletionTimestamp = ptr(metav1Time(t0))
	stale := []protocol.PodRef{podRef(web), {Namespace: "app", Name: "web-2", UID: "uid-before"}, podRef(moved), podRef(leaving),
		{Namespace: "app", Name: "gone", UID: "uid-gone"}, podRef(db)}
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport(stale...))), testNode("n2"), web, db, replaced, moved, leaving,
		replicaSet("app", "web", 3, 2), statefulSet("app", "db", 1, 0), rolloutConfigMap(rollout(PodRestart, "n1")))

	f.sync()
	cordonedAt := started(PodRestart, true, t0)
	f.expectWrites(cordonNode("n1", cordonedAt))
	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Pods: []string{"app/web-1", "app/db-0"}, Timeout: 10 * time.Minute})
	f.expectWrites()

	f.clock.Step(20 * time.Second)
	f.sync()
	actingAt := acting(cordonedAt, t0.Add(20*time.Second), "")
	actingAt.Evicted = []protocol.PodRef{podRef(web), podRef(db)}
	actingAt.Owners = []protocol.OwnerRef{{Kind: "ReplicaSet", Namespace: "app", Name: "web"}, {Kind: "StatefulSet", Namespace: "app", Name: "db"}}
	f.expectWrites(patchNode("n1", &actingAt, nil))
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for pod-restart (requested by alice)",
		"Normal PodsEvicted rollout r-test: evicted 2 pods holding stale tokens")

	if d := f.sync(); d != 2*time.Second {
		t.Errorf("verifying a pod restart, the next look is in %s; want 2s (controllers are read, not watched)", d)
	}
	f.updateNode("n1", withReport(cleanReport()))
	f.sync()
	f.expectWrites()
	for _, o := range objs(replicaSet("app", "web", 3, 3), statefulSet("app", "db", 1, 1)) {
		if err := f.tracker.Update(gvrOf(o), o, "app"); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Step(2 * time.Second)
	f.sync()
	doneAt := done(actingAt, t0.Add(22*time.Second))
	f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(finished(rollout(PodRestart, "n1"), RolloutDone, t0.Add(22*time.Second))))
}

// A pod no controller would recreate is not evicted: the node halts with
// DrainFailed, naming it, and is uncordoned.
func TestPodRestartRefusesUnmanagedPods(t *testing.T) {
	web, bare := pod("app", "web-1", "n1", "ReplicaSet", "web"), pod("app", "debug", "n1", "", "")
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport(podRef(web), podRef(bare)))), testNode("n2"), web, bare,
		rolloutConfigMap(rollout(PodRestart, "n1", "n2")))
	f.sync()
	f.writes()
	f.sync()
	msg := "pods app/debug are not managed by a controller, so an eviction would lose them; restart them yourself, or use --strategy kubelet-restart"
	h := halted(started(PodRestart, true, t0), t0, HaltDrainFailed, msg)
	f.expectWrites(patchNode("n1", &h, ptr(false)), updateState(haltedState(rollout(PodRestart, "n1", "n2"), "n1", HaltDrainFailed, msg, t0)))
	f.expectDrains()
	f.sync()
	f.expectWrites() // n2 waits for an administrator
}

// While the agent still judges by the previous issuer its list of stale
// pods is incomplete: nothing is evicted until it reports again.
func TestPodRestartWaitsForTheAgentsCurrentReport(t *testing.T) {
	web := pod("app", "web-1", "n1", "ReplicaSet", "web")
	rep := oldIssuerReport(podRef(web))
	rep.Issuer = oldIssuer
	f := newFixture(t, testNode("n1", withReport(rep)), web, rolloutConfigMap(rollout(PodRestart, "n1")))
	f.sync()
	f.writes()
	if d := f.sync(); d != 10*time.Minute {
		t.Errorf("next look in %s; want the rest of the drain timeout", d)
	}
	f.expectDrains()
	f.expectWrites()
}

// With kubectl's drain on the fake API server: a pod restart evicts only
// the stale pods; a reboot drains every pod but DaemonSet and mirror pods.
// PodDisruptionBudgets are the API server's, tested against a real one.
func TestDrainerEvictsThroughTheAPI(t *testing.T) {
	web, db := pod("app", "web-1", "n1", "ReplicaSet", "web"), pod("app", "db-0", "n1", "StatefulSet", "db")
	agent := pod("kube-system", "agent-n1", "n1", "DaemonSet", "agent")
	mirror := pod("kube-system", "kube-proxy-n1", "n1", "", "")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
	other := pod("app", "web-2", "n2", "ReplicaSet", "web")
	cluster := func(strategy protocol.Strategy) []runtime.Object {
		return objs(testNode("n1", withReport(oldIssuerReport(podRef(web)))), testNode("n2"), web, db, agent, mirror, other,
			daemonSet("kube-system", "agent", 2, 2), rolloutConfigMap(rollout(strategy, "n1")))
	}
	for _, c := range []struct {
		strategy protocol.Strategy
		evicted  []apiWrite
	}{
		{PodRestart, []apiWrite{evictPod("app", "web-1")}},
		{Reboot, []apiWrite{evictPod("app", "db-0"), evictPod("app", "web-1")}},
	} {
		t.Run(string(c.strategy), func(t *testing.T) {
			f := newFixture(t, cluster(c.strategy)...)
			f.cfg.Drainer = KubectlDrainer{Client: f.client, Log: f.cfg.Log}
			f.evictThroughAPI()
			f.sync()
			f.writes()
			f.sync()
			f.awaitDrainEnd()
			if got := f.writes(); !sameSet(got, c.evicted) {
				t.Errorf("evictions %v; want %v", got, c.evicted)
			}
			f.sync()
			if ns, _ := protocol.ParseNodeState(f.node("n1").Annotations[protocol.AnnotationNodeState]); ns.Step != protocol.StepActing {
				t.Errorf("after the drain n1 is %+v; want acting", ns)
			}
		})
	}
}

func sameSet(a, b []apiWrite) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, w := range a {
		seen[w.String()]++
	}
	for _, w := range b {
		if seen[w.String()] == 0 {
			return false
		}
		seen[w.String()]--
	}
	return true
}

// Each failure halts the rollout with its reason: the node is marked
// halted and uncordoned if tokenroll cordoned it, and no other node starts.
func TestHalt(t *testing.T) {
	const req = "r-test-0000beef"
	actingKR := acting(started(KubeletRestart, true, t0), t0, req)
	actingReboot := acting(started(Reboot, true, t0), t0, req)
	type tc struct {
		name     string
		strategy protocol.Strategy
		n1       []func(*corev1.Node)
		// run brings the cluster to the moment before the halting sync;
		// it returns the node state the halt starts from.
		run          func(*fixture) protocol.NodeState
		reason, msg  string
		leftCordoned bool
	}
	drained := func(err error) func(*fixture) protocol.NodeState {
		return func(f *fixture) protocol.NodeState {
			f.drainer.err = err
			f.sync()
			f.sync()
			f.awaitDrainEnd()
			f.clock.Step(time.Minute)
			return started(Reboot, true, t0)
		}
	}
	waitFor := func(s protocol.NodeState, steps ...time.Duration) func(*fixture) protocol.NodeState {
		return func(f *fixture) protocol.NodeState {
			for _, d := range steps {
				f.sync()
				f.clock.Step(d)
			}
			return s
		}
	}
	cases := []tc{
		{name: "drain failed", strategy: Reboot, run: drained(errors.New("cannot evict pod app/web-1: it would violate the pod's disruption budget")),
			reason: HaltDrainFailed, msg: "draining node n1: cannot evict pod app/web-1: it would violate the pod's disruption budget"},
		{name: "drain timed out", strategy: Reboot, run: drained(fmt.Errorf("evicting pod app/web-1: global timeout reached: %w", context.DeadlineExceeded)),
			reason: HaltDrainTimeout, msg: "draining node n1: evicting pod app/web-1: global timeout reached: context deadline exceeded"},
		{name: "found cordoned past the drain timeout", strategy: Reboot, n1: opts(cordoned, inStep(started(Reboot, true, t0.Add(-11*time.Minute)))),
			run: waitFor(started(Reboot, true, t0.Add(-11*time.Minute))), reason: HaltDrainTimeout, msg: "not drained within --drain-timeout=10m0s"},
		{name: "action failed", strategy: KubeletRestart, n1: opts(cordoned, inStep(actingKR), agentStatus(req, protocol.PhaseFailed, "restarting kubelet.service: exit status 1")),
			run: waitFor(actingKR), reason: HaltActionFailed, msg: "the agent reports the kubelet-restart failed: restarting kubelet.service: exit status 1"},
		{name: "action refused", strategy: Reboot, n1: opts(cordoned, inStep(actingReboot), agentStatus(req, protocol.PhaseRefused, "node name does not match")),
			run: waitFor(actingReboot), reason: HaltActionFailed, msg: "the agent reports the reboot refused: node name does not match"},
		{name: "agent of another protocol version", strategy: KubeletRestart,
			n1: opts(cordoned, inStep(actingKR), func(n *corev1.Node) {
				n.Annotations[protocol.AnnotationStatus] = `{"version":2,"id":"` + req + `","phase":"done"}`
			}),
			run: waitFor(actingKR), reason: HaltActionFailed,
			msg: "the agent's answer cannot be read: annotation tokenroll.io/request-status has protocol version 2, and this tokenroll understands version 1 only: " +
				"it was written by another release of tokenroll; upgrade the agent and the coordinator to the same release"},
		{name: "action timed out", strategy: KubeletRestart, n1: opts(cordoned, inStep(actingKR), agentStatus(req, protocol.PhaseRunning, "")),
			run: waitFor(actingKR, 15*time.Minute), reason: HaltActionTimeout, msg: "the agent has not reported the kubelet restarted after 15m0s"},
		{name: "node not back", strategy: Reboot, n1: opts(cordoned, inStep(actingReboot)),
			run: waitFor(actingReboot, 14*time.Minute, time.Minute), reason: HaltNodeNotBack, msg: "the node is not back with a new boot ID and Ready after 15m0s"},
		{name: "verify timed out without a report", strategy: KubeletRestart,
			n1:  opts(cordoned, inStep(actingKR), agentStatus(req, protocol.PhaseDone, ""), func(n *corev1.Node) { delete(n.Annotations, protocol.AnnotationTokens) }),
			run: waitFor(actingKR, 15*time.Minute, 5*time.Minute), reason: HaltVerifyTimeout, msg: "no token report from the agent after 20m0s"},
		{name: "verify timed out on a node found cordoned", strategy: KubeletRestart,
			n1:  opts(cordoned, inStep(func() protocol.NodeState { s := actingKR; s.CordonedByUs = false; return s }()), agentStatus(req, protocol.PhaseDone, ""), notReady),
			run: waitFor(func() protocol.NodeState { s := actingKR; s.CordonedByUs = false; return s }(), 20*time.Minute), reason: HaltVerifyTimeout,
			msg: "the node is not Ready after 20m0s", leftCordoned: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, testNode("n1", c.n1...), testNode("n2"), rolloutConfigMap(rollout(c.strategy, "n1", "n2")))
			before := c.run(f)
			f.writes()
			f.takeEvents()
			f.sync()
			at := f.clock.Now()
			h := halted(before, at, c.reason, c.msg)
			var uncordon *bool
			if !c.leftCordoned {
				uncordon = ptr(false)
			}
			f.expectWrites(patchNode("n1", &h, uncordon), updateState(haltedState(rollout(c.strategy, "n1", "n2"), "n1", c.reason, c.msg, at)))
			f.expectEvents(fmt.Sprintf("Warning RolloutHalted rollout r-test halted on this node (%s): %s", c.reason, c.msg))
			if got := f.counter("tokenroll_rollout_halts_total", "reason", c.reason); got != 1 {
				t.Errorf("halts with reason %s counted %v; want 1", c.reason, got)
			}
			if f.node("n1").Spec.Unschedulable != c.leftCordoned {
				t.Errorf("n1 unschedulable=%v after the halt; want %v", f.node("n1").Spec.Unschedulable, c.leftCordoned)
			}
			f.clock.Step(time.Hour)
			f.sync()
			f.expectWrites() // the coordinator never moves past a broken node
		})
	}
}

// A cordon the API server refuses halts the rollout with CordonFailed.
func TestHaltCordonFailed(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	refused := false
	f.fake.PrependReactor("patch", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if refused {
			return false, nil, nil
		}
		refused = true
		return true, nil, apierrors.NewForbidden(nodesGVR.GroupResource(), "n1", errors.New("denied by policy tokenroll-node-writes"))
	})
	f.sync()
	msg := `cordoning: updating node n1: nodes "n1" is forbidden: denied by policy tokenroll-node-writes`
	h := protocol.NodeState{Rollout: rolloutID, Strategy: Reboot, Step: protocol.StepHalted, StepAt: t0, Reason: HaltCordonFailed, Message: msg}
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0)), patchNode("n1", &h, nil),
		updateState(haltedState(rollout(Reboot, "n1"), "n1", HaltCordonFailed, msg, t0)))
}
