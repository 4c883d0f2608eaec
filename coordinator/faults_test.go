package coordinator

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clienttesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/apiretry/apiretrytest"
	"github.com/tokenroll/tokenroll/protocol"
)

// The tests of transient faults: the fake clientset's reactors answer
// chosen writes with 500, 429 or a lost answer, and the tests assert the
// exact writes retried. The retries wait on a clock of their own that
// records each wait and ends it at once.

// withRetries gives the next leader a write policy of steps attempts,
// 1s, 2s, 4s apart, on a recording clock.
func (f *fixture) withRetries(steps int) *apiretrytest.Clock {
	clk := apiretrytest.NewClock(t0)
	f.cfg.WriteRetry = apiretry.Policy{Backoff: wait.Backoff{Duration: time.Second, Factor: 2, Steps: steps, Cap: time.Minute},
		MaxRetryAfter: 30 * time.Second, Clock: clk}
	return clk
}

// failPatches answers the node patches that match with errs, one each, in
// turn; later patches go through.
func (f *fixture) failPatches(match func(clienttesting.PatchAction) bool, errs ...error) {
	f.fake.PrependReactor("patch", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if len(errs) == 0 || !match(a.(clienttesting.PatchAction)) {
			return false, nil, nil
		}
		err := errs[0]
		errs = errs[1:]
		return true, nil, err
	})
}

func isCordon(a clienttesting.PatchAction) bool {
	return strings.Contains(string(a.GetPatch()), `"unschedulable":true`)
}

// A cordon that meets a 500, a 429 asking for 7 s and a timeout is tried
// again, on the backoff and the server's Retry-After, and goes through:
// four identical patches, no halt.
func TestCordonRetriedThroughTransientFaults(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	clk := f.withRetries(6)
	f.failPatches(isCordon,
		apierrors.NewInternalError(errors.New("etcdserver: request timed out")),
		apierrors.NewTooManyRequests("the server has received too many requests", 7),
		apierrors.NewTimeoutError("request did not complete within 60s", 0))
	f.sync()
	cordon := cordonNode("n1", started(Reboot, true, t0))
	f.expectWrites(cordon, cordon, cordon, cordon)
	if got, want := clk.Waits(), []time.Duration{time.Second, 7 * time.Second, 4 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v: the backoff, stretched once by Retry-After", got, want)
	}
	if !f.node("n1").Spec.Unschedulable || f.state().Rollout.Phase != RolloutRunning {
		t.Errorf("n1 unschedulable=%v, rollout %s; want cordoned and running", f.node("n1").Spec.Unschedulable, f.state().Rollout.Phase)
	}
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for reboot (requested by alice)")
}

// A cordon that keeps failing halts the rollout, but only after the
// bounded effort; the halt itself, through the same faults, is retried
// too and leaves the node uncordoned.
func TestCordonHaltsAfterBoundedEffort(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
	clk := f.withRetries(3)
	unavailable := apierrors.NewServiceUnavailable("apiserver is shutting down")
	f.failPatches(isCordon, unavailable, unavailable, unavailable)
	f.failPatches(func(a clienttesting.PatchAction) bool { return !isCordon(a) }, unavailable)
	f.sync()
	msg := `cordoning: updating node n1: gave up after 3 attempts in 3s: apiserver is shutting down`
	h := protocol.NodeState{Rollout: rolloutID, Strategy: Reboot, Step: protocol.StepHalted, StepAt: t0, Reason: HaltCordonFailed, Message: msg}
	cordon := cordonNode("n1", started(Reboot, true, t0))
	f.expectWrites(cordon, cordon, cordon, patchNode("n1", &h, nil), patchNode("n1", &h, nil),
		updateState(haltedState(rollout(Reboot, "n1"), "n1", HaltCordonFailed, msg, t0)))
	if got, want := clk.Waits(), []time.Duration{time.Second, 2 * time.Second, time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v", got, want)
	}
	if f.node("n1").Spec.Unschedulable {
		t.Error("n1 left cordoned")
	}
}

// A write whose answer is lost (the server applied it, the client timed
// out) is not written twice: the retry meets a conflict, the Node read
// again already holds the write, and that is the result. A request keeps
// its ID: the agent is asked once.
func TestLostAnswerIsNotWrittenTwice(t *testing.T) {
	f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	f.withRetries(6)
	sent := map[string]bool{}
	f.fake.PrependReactor("patch", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		body := string(a.(clienttesting.PatchAction).GetPatch())
		if sent[body] {
			return false, nil, nil
		}
		sent[body] = true
		if _, _, err := clienttesting.ObjectReaction(f.tracker)(a); err != nil {
			t.Errorf("applying the patch whose answer is lost: %v", err)
		}
		return true, nil, apierrors.NewTimeoutError("request did not complete within 60s", 0)
	})
	f.sync()
	f.sync()
	got := f.writes()
	if len(got) != 4 {
		t.Fatalf("writes %v; want the cordon and the request, each sent twice", got)
	}
	cordon := cordonNode("n1", started(KubeletRestart, true, t0))
	f.compareWrites(got[:2], cordon, cordon)
	id := requestIn(t, got[2], protocol.ActionKubeletRestart, "n1", t0)
	if got[3].String() != got[2].String() {
		t.Errorf("the request was sent again changed:\n  %s\n  %s", got[2], got[3])
	}
	if s := readNodeState(f.node("n1"), rolloutID); s == nil || s.Step != protocol.StepActing || s.Request != id {
		t.Errorf("node state %+v; want acting on request %s", s, id)
	}
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for kubelet-restart (requested by alice)")
	f.sync()
	f.expectWrites()
}

// A conflict from a change nothing decides on (a kubelet heartbeat) is
// written again on the newer Node; a conflict from a change that matters
// (someone cordoned the node) is the next sync's to decide, not a halt.
func TestConflictReadsAgain(t *testing.T) {
	heartbeat := func(n *corev1.Node) {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse})
	}
	for _, c := range []struct {
		name    string
		change  func(*corev1.Node)
		patches int
		cordon  bool
	}{
		{"heartbeat", heartbeat, 2, true},
		{"cordoned by someone", cordoned, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, testNode("n1"), rolloutConfigMap(rollout(Reboot, "n1")))
			f.withRetries(6)
			f.lead()
			changed := false
			f.fake.PrependReactor("patch", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
				if !changed {
					changed = true
					f.updateNode("n1", c.change)
				}
				return false, nil, nil
			})
			_, err := f.syncStale()
			got := f.writes()
			if len(got) != c.patches {
				t.Fatalf("writes %v; want %d", got, c.patches)
			}
			if c.cordon {
				if err != nil || !f.node("n1").Spec.Unschedulable {
					t.Errorf("sync: %v; n1 unschedulable=%v, want cordoned", err, f.node("n1").Spec.Unschedulable)
				}
				return
			}
			if !apierrors.IsConflict(err) {
				t.Errorf("sync: %v; want the conflict back", err)
			}
			if st := f.state(); st.Rollout.Phase != RolloutRunning {
				t.Errorf("rollout %s after a conflict; want running", st.Rollout.Phase)
			}
		})
	}
}

// The rollout state's writes ride out faults too, and a write whose
// answer was lost is not applied twice.
func TestStateWriteRetried(t *testing.T) {
	f := newFixture(t, rolloutConfigMap(rollout(Reboot, "n1")))
	clk := apiretrytest.NewClock(t0)
	st := Store{Client: f.api, FieldManager: "test",
		Retry: apiretry.Policy{Backoff: wait.Backoff{Duration: time.Second, Factor: 2, Steps: 4}, Clock: clk}}
	calls := 0
	f.api.PrependReactor("update", "tokenrollouts", func(a clienttesting.Action) (bool, runtime.Object, error) {
		calls++
		switch calls {
		case 1:
			return true, nil, apierrors.NewInternalError(errors.New("etcdserver: leader changed"))
		case 2:
			_, _, err := f.serveRecords(a)
			if err != nil {
				t.Errorf("applying the update whose answer is lost: %v", err)
			}
			return true, nil, apierrors.NewTimeoutError("request did not complete within 60s", 0)
		}
		return false, nil, nil
	})
	gets := 0
	f.api.PrependReactor("list", "tokenrollouts", func(clienttesting.Action) (bool, runtime.Object, error) {
		if gets++; gets == 1 {
			return true, nil, apierrors.NewTooManyRequests("throttled", 3)
		}
		return false, nil, nil
	})
	changes := 0
	out, err := st.Update(context.Background(), func(s *State) error {
		changes++
		s.Rollout.Message = "changed once"
		return nil
	})
	if err != nil || out.Rollout.Message != "changed once" || changes != 1 {
		t.Fatalf("Update = %+v, %v after %d changes; want one change", out.Rollout, err, changes)
	}
	if calls != 3 {
		t.Errorf("%d updates sent; want 3: a 500, a lost answer, a conflict", calls)
	}
	if got, want := clk.Waits(), []time.Duration{3 * time.Second, time.Second, 2 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v: the read's Retry-After, then the write's own backoff", got, want)
	}
	if f.state().Rollout.Message != "changed once" {
		t.Errorf("state %+v", f.state().Rollout)
	}
}

// A gate that flaps does not drain the same node again and again: the
// node cordoned when the gate closes is released once, and nothing starts
// until the gate has stayed open for GateSettle.
func TestFlappingGate(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
	f.cfg.GateSettle = 2 * time.Minute
	f.drainer.holdCalls()
	open, closed := GateState{Provider: GateNone, Open: true, Message: "open"}, GateState{Provider: GateNone, Message: "rolling"}

	if d := f.sync(); d != 2*time.Minute {
		t.Errorf("a new leader finding the gate open looks again in %s; want the gate settle time, 2m", d)
	}
	f.expectWrites()
	f.clock.Step(2 * time.Minute)
	f.sync()
	f.expectWrites(cordonNode("n1", started(Reboot, true, t0.Add(2*time.Minute))))
	f.sync() // the drain starts, and is held

	var cordons, releases int
	count := func() {
		for _, w := range f.writes() {
			switch {
			case w.Unschedulable != nil && *w.Unschedulable:
				cordons++
			case w.StateRemoved:
				releases++
			}
		}
	}
	for i := range 6 {
		f.gate.Set(closed)
		f.sync()
		count()
		f.gate.Set(open)
		f.sync()
		count()
		f.clock.Step(time.Minute)
		f.sync()
		count()
		if cordons != 0 || releases != 1 {
			t.Fatalf("flap %d: %d cordons, %d releases; want none and one", i, cordons, releases)
		}
	}
	f.clock.Step(time.Minute + time.Second)
	f.sync()
	count()
	if cordons != 1 {
		t.Errorf("after the gate stayed open for 2m: %d cordons; want one", cordons)
	}
	f.drainer.releaseCalls(nil)
}

// Once the API servers trust no previous issuer, every token it signed
// already fails: a node starts as soon as the gate opens, without the
// settle, which would only prolong the failures. While the previous issuer
// is trusted, waiting costs nothing, and the settle holds.
func TestGateSettleSkippedOnceNoPreviousIssuerIsTrusted(t *testing.T) {
	for _, c := range []struct {
		name    string
		trusted []TrustedIssuer
		wait    bool
	}{
		{"only the current issuer trusted", []TrustedIssuer{{Name: newIssuer}}, false},
		{"the previous issuer's trust ended", []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(-time.Second)}}, false},
		{"the previous issuer trusted for an hour", []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(time.Hour)}}, true},
		{"the previous issuer trusted without an end", []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer}}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(Reboot, "n1", "n2")))
			f.cfg.GateSettle = 2 * time.Minute
			f.drainer.holdCalls()
			defer f.drainer.releaseCalls(nil)
			f.gate.Set(GateState{Provider: GateOpenShift, Open: true, Message: "open", TrustKnown: true, Trusted: c.trusted})
			d := f.sync()
			if !c.wait {
				f.expectWrites(cordonNode("n1", started(Reboot, true, t0)))
				return
			}
			if d != 2*time.Minute {
				t.Errorf("looks again in %s; want the gate settle time, 2m", d)
			}
			f.expectWrites()
			f.clock.Step(2 * time.Minute)
			f.sync()
			f.expectWrites(cordonNode("n1", started(Reboot, true, t0.Add(2*time.Minute))))
		})
	}
}

// An eviction that meets a 500 is tried again; the drain goes on and the
// node is not halted.
func TestEvictionRetriedThroughTransientFaults(t *testing.T) {
	web := pod("app", "web-1", "n1", "ReplicaSet", "web")
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport(podRef(web)))), web, rolloutConfigMap(rollout(PodRestart, "n1")))
	clk := apiretrytest.NewClock(t0)
	f.cfg.Drainer = KubectlDrainer{Client: f.client, Log: f.cfg.Log,
		Retry: apiretry.Policy{Backoff: wait.Backoff{Duration: time.Second, Factor: 2, Steps: 3}, Clock: clk}}
	f.evictThroughAPI()
	failed := false
	f.fake.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" || failed {
			return false, nil, nil
		}
		failed = true
		return true, nil, apierrors.NewInternalError(errors.New("etcdserver: leader changed"))
	})
	f.sync()
	f.writes()
	f.sync()
	f.awaitDrainEnd()
	f.compareWrites(f.writes(), evictPod("app", "web-1"), evictPod("app", "web-1"))
	if got := clk.Waits(); !slices.Equal(got, []time.Duration{time.Second}) {
		t.Errorf("waits %v; want one of 1s", got)
	}
	f.sync()
	if ns, _ := protocol.ParseNodeState(f.node("n1").Annotations[protocol.AnnotationNodeState]); ns.Step != protocol.StepActing {
		t.Errorf("after the eviction n1 is %+v; want acting", ns)
	}
}
