package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/protocol"
)

// appsOptions are app detection's settings in these tests: the defaults.
var appsOptions = apps.Options{Grace: 2 * time.Minute, Window: 15 * time.Minute, Interval: 10 * time.Second}

// tokenPod is a running pod with a projected token, owned by ReplicaSet
// owner, at ip.
func tokenPod(name, node, ip, owner string) *corev1.Pod {
	p := pod("shop", name, node, "ReplicaSet", owner)
	p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}}}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}
	return p
}

// appWorld is what app detection sees of the fixture's pods: the tokens
// their node's kubelet was issued, and what each app presents (a reloading
// app its current token, a caching one the first it read).
type appWorld struct {
	f       *fixture
	d       *apps.Detector
	pods    map[string]*corev1.Pod
	caching map[string]bool
	current map[string]string
	first   map[string]string
	issued  int
}

// newAppWorld starts the leader's app detection on the fake clock with
// the pods, and gives each its first token; caching names the pods whose
// apps read their token once.
func newAppWorld(f *fixture, pods []*corev1.Pod, caching ...string) *appWorld {
	f.t.Helper()
	if f.term == nil {
		f.lead()
	}
	w := &appWorld{f: f, d: apps.NewDetector(apps.Config{Grace: appsOptions.Grace, Window: appsOptions.Window, RepeatEvents: time.Hour, Clock: f.clock}),
		pods: map[string]*corev1.Pod{}, caching: map[string]bool{}, current: map[string]string{}, first: map[string]string{}}
	for _, p := range pods {
		w.pods[p.Name] = p
		w.d.SetPod(apps.PodFrom(p))
	}
	for _, c := range caching {
		w.caching[c] = true
	}
	for _, p := range pods {
		w.issue(p.Name, f.clock.Now())
	}
	f.term.c.detector.Store(w.d)
	return w
}

// issue is the kubelet of the pod's node getting it a new token at at.
func (w *appWorld) issue(name string, at time.Time) {
	p := w.pods[name]
	w.issued++
	jti := fmt.Sprintf("jti-%s-%d", name, w.issued)
	w.d.Observe(audit.Event{Kind: audit.Issued, Time: at, User: "system:node:" + p.Spec.NodeName, Code: 201,
		Pod: audit.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, JTI: jti})
	w.current[name] = jti
	if w.first[name] == "" {
		w.first[name] = jti
	}
}

// staleAfterRefresh runs the apps a minute, has node's kubelet refresh
// its tokens (its own refresh, under the same issuer), and runs them past
// app detection's grace and one judgement: a caching app's pod is then
// app-stale.
func (w *appWorld) staleAfterRefresh(node string) {
	w.run(time.Minute)
	w.restartKubelet(node)
	w.run(2*time.Minute + 20*time.Second)
}

// restartKubelet is the node's kubelet getting every pod on it a new
// token.
func (w *appWorld) restartKubelet(node string) {
	for name, p := range w.pods {
		if p.Spec.NodeName == node {
			w.issue(name, w.f.clock.Now())
		}
	}
}

// run lets the apps make their requests for d, one every 10 s, each
// evaluation of the detector following.
func (w *appWorld) run(d time.Duration) {
	for end := w.f.clock.Now().Add(d); w.f.clock.Now().Before(end); {
		for name, p := range w.pods {
			jti := w.current[name]
			if w.caching[name] {
				jti = w.first[name]
			}
			w.d.Observe(audit.Event{Kind: audit.Presented, Time: w.f.clock.Now(), Code: 200,
				Pod: audit.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Node: p.Spec.NodeName}, JTI: jti})
		}
		w.f.clock.Step(10 * time.Second)
		w.d.Evaluate()
	}
}

// gone is a pod deleted: detection forgets it.
func (w *appWorld) gone(name string) {
	w.d.DeletePod(w.pods[name].UID)
	delete(w.pods, name)
}

func autoFixture(t *testing.T, objs ...runtime.Object) *fixture {
	f := newFixture(t, objs...)
	f.cfg.Strategy = Auto
	opts := appsOptions
	f.cfg.Apps = &opts
	return f
}

// The ladder on a node whose apps are one reloading, one caching: the
// kubelet restart makes every file fresh; the node is uncordoned and its
// apps watched; the caching app keeps presenting the replaced token, and
// its pod, and only it, is evicted once it turns app-stale; the node is
// done once the watch lasted the grace and the pod was replaced. No reboot.
func TestAutoEvictsOnlyTheAppStalePod(t *testing.T) {
	web, cache := tokenPod("web-1", "n1", "10.1.0.5", "web"), tokenPod("cache-1", "n1", "10.1.0.6", "cache")
	f := autoFixture(t, testNode("n1", withReport(oldIssuerReport(podRef(web), podRef(cache)))), web, cache,
		replicaSet("shop", "cache", 1, 1), rolloutConfigMap(rollout(Auto, "n1")))
	w := newAppWorld(f, []*corev1.Pod{web, cache}, "cache-1")
	w.run(time.Minute)
	start := f.clock.Now()

	f.sync()
	cordonedAt := started(Auto, true, start)
	f.expectWrites(cordonNode("n1", cordonedAt))
	f.clock.Step(time.Second)
	f.sync()
	got := f.writes()
	if len(got) != 1 {
		t.Fatalf("writes %v; want the kubelet restart's request", got)
	}
	id := requestIn(t, got[0], protocol.ActionKubeletRestart, "n1", start.Add(time.Second))
	actingAt := acting(cordonedAt, start.Add(time.Second), id)
	actingAt.Rung = KubeletRestart
	want := patchNode("n1", &actingAt, nil)
	want.Request = got[0].Request
	f.compareWrites(got, want)

	// The kubelet restarts: every token on the node is issued again, and
	// the agent reports them fresh.
	f.clock.Step(time.Second)
	w.restartKubelet("n1")
	f.updateNode("n1", agentStatus(id, protocol.PhaseDone, "kubelet restarted"))
	f.updateNode("n1", withReport(cleanReport()))
	f.sync()
	watchedAt := actingAt
	watchedAt.Step, watchedAt.StepAt, watchedAt.CordonedByUs, watchedAt.Request = protocol.StepApps, start.Add(2*time.Second), false, ""
	watchedAt.Message = "kubelet-restart verified; watching its apps"
	watchedAt.AppsAt = watchedAt.StepAt
	want = patchNode("n1", &watchedAt, ptr(false))
	want.RequestCleared = true
	// The node's own remediation took 2 s; the rollout is expected to end
	// once its apps were watched for the grace and the settle after it.
	est := &Estimate{At: watchedAt.StepAt, Completion: watchedAt.StepAt.Add(appsOptions.Grace + appsSettle), PerNode: 2 * time.Second, Measured: 1, MaxUnavailable: 1}
	withEst := rollout(Auto, "n1")
	withEst.Estimate = est
	f.expectWrites(want, updateState(stateOf(withEst)))
	f.expectEvents("Normal Cordoned rollout r-test: cordoned for auto (requested by alice)",
		"Normal ActionRequested rollout r-test: asked the agent to kubelet-restart (request "+id+")",
		"Normal TokensVerified rollout r-test: kubelet-restart verified in 2s; uncordoned; its apps are watched for --app-stale-grace before it is done")

	// Within the grace nothing is evicted: the caching app's token was
	// replaced less than the grace ago.
	w.run(2 * time.Minute)
	if d := f.sync(); d <= 0 {
		t.Errorf("next look %s; want a wait for the end of the grace", d)
	}
	f.expectWrites()
	f.expectDrains()

	w.run(20 * time.Second)
	evicted := f.evictCache(watchedAt, cache)
	f.expectWrites(patchNode("n1", &evicted, nil))
	f.expectEvents("Normal PodsEvicted rollout r-test: evicted 1 pod whose apps present stale credentials or fail to authenticate: shop/cache-1 (app-stale)")

	// The evicted pod goes; the node is done once the watch lasted the
	// grace past the restart, and the rollout with it.
	w.gone("cache-1")
	w.run(10 * time.Second)
	end := f.clock.Now()
	f.sync()
	doneAt := evicted
	doneAt.Step, doneAt.StepAt = protocol.StepDone, end
	doneAt.Message = "apps verified: of 1 pod with a projected token, 1 present current credentials, 0 made no authenticated request in --app-window (unobserved, not counted healthy); 1 pod evicted"
	if !end.Equal(est.Completion) {
		t.Errorf("the rollout ended at %s; it was expected to end at %s", end, est.Completion)
	}
	doneRollout := rollout(Auto, "n1")
	doneRollout.Estimate = est
	f.expectWrites(patchNode("n1", &doneAt, nil), updateState(finished(doneRollout, RolloutDone, end)))
	f.expectDrains()
}

// A kubelet restart after which the agent still reports old-issuer tokens
// (a wedged kubelet) climbs to a reboot: cordoned again for it, drained,
// rebooted; after a reboot every container started again, and the node is
// done without a watch.
func TestAutoRebootsWhenTheKubeletRestartRefreshesNothing(t *testing.T) {
	const req = "r-test-0000beef"
	actingAt := acting(started(Auto, true, t0.Add(-21*time.Minute)), t0.Add(-20*time.Minute), req)
	actingAt.Rung = KubeletRestart
	f := autoFixture(t, testNode("n1", cordoned, inStep(actingAt), agentStatus(req, protocol.PhaseDone, "kubelet restarted"), withReport(oldIssuerReport())),
		rolloutConfigMap(rollout(Auto, "n1")))
	f.sync()
	climbed := actingAt
	climbed.Step, climbed.StepAt, climbed.Rung, climbed.Request = protocol.StepCordoned, t0, Reboot, ""
	climbed.Message = "kubelet-restart did not do: the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test after 20m0s; climbing to reboot"
	want := patchNode("n1", &climbed, nil)
	want.RequestCleared = true
	f.expectWrites(want)
	f.expectEvents("Warning Climbed rollout r-test: kubelet-restart did not do (the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test after 20m0s): the node gets a reboot")

	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
	f.sync()
	got := f.writes()
	if len(got) != 1 {
		t.Fatalf("writes %v; want the reboot's request", got)
	}
	id := requestIn(t, got[0], protocol.ActionReboot, "n1", t0)
	rebooting := acting(climbed, t0, id)
	want = patchNode("n1", &rebooting, nil)
	want.Request = got[0].Request
	f.compareWrites(got, want)

	f.updateNode("n1", bootID("boot-2"))
	f.updateNode("n1", withReport(cleanReport()))
	f.clock.Step(time.Minute)
	f.sync()
	doneAt := done(rebooting, t0.Add(time.Minute))
	f.expectWrites(patchNode("n1", &doneAt, ptr(false)), updateState(finished(rollout(Auto, "n1"), RolloutDone, t0.Add(time.Minute))))
}

// A node that asks for a reboot after its kubelet restart climbs at once.
func TestAutoRebootsANodeThatAsksForIt(t *testing.T) {
	const req = "r-test-0000beef"
	actingAt := acting(started(Auto, true, t0.Add(-2*time.Minute)), t0.Add(-time.Minute), req)
	actingAt.Rung = KubeletRestart
	f := autoFixture(t, testNode("n1", cordoned, inStep(actingAt), agentStatus(req, protocol.PhaseDone, "kubelet restarted"),
		func(n *corev1.Node) { n.Annotations[protocol.AnnotationRebootRequired] = "true" }), rolloutConfigMap(rollout(Auto, "n1")))
	f.sync()
	climbed := actingAt
	climbed.Step, climbed.StepAt, climbed.Rung, climbed.Request = protocol.StepCordoned, t0, Reboot, ""
	climbed.Message = "kubelet-restart did not do: the node reports a required reboot; climbing to reboot"
	want := patchNode("n1", &climbed, nil)
	want.RequestCleared = true
	f.expectWrites(want)
}

// An app-stale pod a PodDisruptionBudget protects: the eviction waits (the
// node stays watched, nothing more is written) until --drain-timeout, then
// the rollout halts with the refusal as the reason.
func TestAutoAppStalePodBehindAPDBHalts(t *testing.T) {
	cache := tokenPod("cache-1", "n1", "10.1.0.6", "cache")
	watched := protocol.NodeState{Rollout: rolloutID, Step: protocol.StepApps, Strategy: Auto, Rung: KubeletRestart, StepAt: t0, StartedAt: t0.Add(-time.Minute), BootID: "boot-1"}
	f := autoFixture(t, testNode("n1", inStep(watched)), cache, rolloutConfigMap(rollout(Auto, "n1")))
	w := newAppWorld(f, []*corev1.Pod{cache}, "cache-1")
	w.restartKubelet("n1")
	w.run(2*time.Minute + 20*time.Second)
	f.drainer.holdCalls()
	syncAt := f.clock.Now()
	f.sync()
	f.awaitDrainCall()
	f.expectDrains(drainCall{Pods: []string{"shop/cache-1"}, Timeout: 10 * time.Minute})
	// The node's own remediation is measured (a minute); its watch ends
	// the grace and the settle after it began.
	withEst := rollout(Auto, "n1")
	withEst.Estimate = &Estimate{At: syncAt, Completion: t0.Add(appsOptions.Grace + appsSettle), PerNode: time.Minute, Measured: 1, MaxUnavailable: 1}
	f.expectWrites(updateState(stateOf(withEst)))
	w.run(time.Minute)
	f.sync()
	f.expectWrites()
	f.expectDrains()

	refused := fmt.Errorf("evicting pod shop/cache-1: global timeout reached while the eviction was refused (Cannot evict pod as it would violate the pod's disruption budget.): %w", context.DeadlineExceeded)
	f.drainer.releaseCalls(refused)
	f.awaitDrainEnd()
	f.sync()
	msg := "evicting the pods whose apps present stale credentials or fail to authenticate on node n1: " + refused.Error()
	h := halted(watched, f.clock.Now(), HaltDrainTimeout, msg)
	f.expectWrites(patchNode("n1", &h, nil), updateState(haltedState(withEst, "n1", HaltDrainTimeout, msg, f.clock.Now())))
}

// Without an audit source auto cannot tell which apps reload their token:
// it says so when the rollout starts, and evicts every pod holding a token
// of an untrusted issuer, as pod-restart does, before any kubelet restart
// could hide which. Both ways to have no source: detection off, and no
// audit event ever received.
func TestAutoWithoutAnAuditSourceEvictsThePodsHoldingStaleTokens(t *testing.T) {
	for _, c := range []struct {
		name    string
		apps    bool
		missing string
	}{
		{"detection off", false, "app detection is off (--app-detection=false)"},
		{"no audit event", true, "no audit event has reached the coordinator; connect an audit source (--audit-webhook-listen or --audit-log)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			web, other := tokenPod("web-1", "n1", "10.1.0.5", "web"), tokenPod("fresh-1", "n1", "10.1.0.7", "fresh")
			f := autoFixture(t, testNode("n1", withReport(oldIssuerReport(podRef(web)))), web, other, observedState())
			f.cfg.Auto = true
			if !c.apps {
				f.cfg.Apps = nil
			} else {
				f.lead()
				d := apps.NewDetector(apps.Config{Grace: appsOptions.Grace, Window: appsOptions.Window, Clock: f.clock})
				f.term.c.detector.Store(d)
				f.clock.Step(appsStartWait)
				d.Evaluate()
			}
			f.sync()
			st := f.state()
			note := "no audit source (" + c.missing + "): auto evicts the pods holding tokens of an untrusted issuer, as pod-restart does, and cannot verify that apps authenticate"
			if st.Rollout == nil || st.Rollout.Strategy != Auto || st.Rollout.Apps != note {
				t.Fatalf("rollout %+v; want auto, saying %q", st.Rollout, note)
			}
			id := st.Rollout.ID
			f.expectEvents("Normal RolloutPlanned rollout "+id+" (issuer) plans 1 node (auto 1): n1",
				"Warning AppsUnverified rollout "+id+": "+note)
			var b strings.Builder
			rep := &StatusReport{Now: f.clock.Now(), Rollout: st.Rollout}
			if err := WriteStatusTable(&b, rep); err != nil || !strings.Contains(b.String(), "\n          "+note+"\n") {
				t.Errorf("tokenroll status does not say it:\n%s", b.String())
			}
			f.writes()
			f.sync() // cordon
			f.sync()
			f.awaitDrainEnd()
			f.expectDrains(drainCall{Pods: []string{"shop/web-1"}, Timeout: 10 * time.Minute})
			f.writes()
			f.sync()
			got := f.writes()
			if len(got) != 1 || got[0].NodeState == nil || got[0].NodeState.Step != protocol.StepActing || got[0].NodeState.Rung != PodRestart ||
				got[0].Request != nil || mustJSON(got[0].NodeState.Evicted) != mustJSON([]protocol.PodRef{podRef(web)}) {
				t.Errorf("writes %v; want n1 acting on pod-restart's evictions, no request", got)
			}
			evs := f.takeEvents()
			if len(evs) != 2 || evs[1] != "Normal PodsEvicted rollout "+id+": evicted 1 pod holding stale tokens; apps are not verified: "+c.missing {
				t.Errorf("Events %q", evs)
			}
		})
	}
}

// The watches of several nodes overlap: a node whose kubelet restart is
// verified leaves the disruption budget, so with --max-unavailable 1 the
// next node starts while the first one's apps are still watched, and the
// rollout takes one grace, not one per node.
func TestAutoWatchesOverlap(t *testing.T) {
	a, b := tokenPod("web-a", "n1", "10.1.0.5", "web"), tokenPod("web-b", "n2", "10.1.0.6", "web")
	f := autoFixture(t, testNode("n1", withReport(oldIssuerReport())), testNode("n2", withReport(oldIssuerReport())), a, b,
		rolloutConfigMap(rollout(Auto, "n1", "n2")))
	w := newAppWorld(f, []*corev1.Pod{a, b})
	w.run(time.Minute)
	start := f.clock.Now()
	cordonedAt, doneAt := map[string]time.Time{}, map[string]time.Time{}
	var n2WhileN1Watched bool
	for i := 0; i < 100 && f.state().Rollout.Phase == RolloutRunning; i++ {
		f.sync()
		for _, wr := range f.writes() {
			ns := wr.NodeState
			if ns == nil {
				continue
			}
			switch {
			case ns.Step == protocol.StepCordoned:
				cordonedAt[wr.Name] = f.clock.Now()
				if wr.Name == "n2" {
					st, _ := protocol.ParseNodeState(f.node("n1").Annotations[protocol.AnnotationNodeState])
					n2WhileN1Watched = st.Step == protocol.StepApps
				}
			case ns.Step == protocol.StepDone:
				doneAt[wr.Name] = f.clock.Now()
			case wr.Request != nil:
				w.restartKubelet(wr.Name)
				f.updateNode(wr.Name, agentStatus(wr.Request.ID, protocol.PhaseDone, "kubelet restarted"))
				f.updateNode(wr.Name, withReport(cleanReport()))
			}
		}
		w.run(10 * time.Second)
	}
	if f.state().Rollout.Phase != RolloutDone || len(doneAt) != 2 {
		t.Fatalf("rollout %s, nodes done %v", f.state().Rollout.Phase, doneAt)
	}
	if !n2WhileN1Watched || !cordonedAt["n2"].Before(doneAt["n1"]) {
		t.Errorf("n2 cordoned at %s, n1 done at %s: the watches did not overlap", cordonedAt["n2"].Sub(start), doneAt["n1"].Sub(start))
	}
	serial := 2 * (appsOptions.Grace + appsSettle)
	if took := doneAt["n2"].Sub(start); took >= serial {
		t.Errorf("the rollout took %s; two watches in series take %s", took, serial)
	}
}

// A pod that turns app-stale with every file fresh (no issuer change) plans
// its node under auto, which evicts it without a kubelet restart; a pod
// the node's last remediation evicted, still going, plans nothing.
func TestAutoPlansAppStalePods(t *testing.T) {
	cache := tokenPod("cache-1", "n1", "10.1.0.6", "cache")
	f := autoFixture(t, testNode("n1"), testNode("n2"), cache, replicaSet("shop", "cache", 1, 1), observedState())
	f.cfg.Auto = true
	w := newAppWorld(f, []*corev1.Pod{cache}, "cache-1")
	w.staleAfterRefresh("n1")
	f.sync()
	st := f.state()
	if st.Rollout == nil || st.Rollout.Trigger != TriggerAppStale || len(st.Rollout.Nodes) != 1 || st.Rollout.Nodes[0].Name != "n1" ||
		st.Rollout.Nodes[0].Reason != "1 pod whose apps present a token the kubelet replaced (app-stale)" {
		t.Fatalf("rollout %+v; want n1 planned for its app-stale pod", st.Rollout)
	}
	f.sync() // cordon
	f.writes()
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].NodeState == nil || got[0].NodeState.Rung != rungNone || got[0].Request != nil {
		t.Fatalf("writes %v; want n1 acting on nothing", got)
	}
	f.sync() // its apps watched
	w.run(appsSettle + 10*time.Second)
	f.evictCache(protocol.NodeState{}, cache)
	w.run(2 * time.Minute)
	f.sync()
	if st := f.state(); st.Rollout.Phase != RolloutDone {
		t.Fatalf("rollout %s; want done", st.Rollout.Phase)
	}
	// The evicted pod is still listed app-stale until it goes.
	f.writes()
	f.sync()
	if st := f.state(); st.Rollout.ID != rolloutIDOf(t, f) {
		t.Errorf("a new rollout %s for the pod already evicted", st.Rollout.ID)
	}
}

// observedState is the rollout state with no rollout yet and the current
// issuer observed an hour ago.
func observedState() runtime.Object {
	return stateConfigMap(State{})
}

// awaitDrainCall waits until the background eviction the last sync
// started has called the Drainer.
func (f *fixture) awaitDrainCall() {
	f.t.Helper()
	if err := wait.PollUntilContextTimeout(f.ctx, time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		f.drainer.mu.Lock()
		defer f.drainer.mu.Unlock()
		return len(f.drainer.calls) > 0, nil
	}); err != nil {
		f.t.Fatal("the Drainer was not called")
	}
}

func rolloutIDOf(t *testing.T, f *fixture) string {
	t.Helper()
	st, err := protocol.ParseNodeState(f.node("n1").Annotations[protocol.AnnotationNodeState])
	if err != nil {
		t.Fatal(err)
	}
	return st.Rollout
}

// In steady state the kubelet refreshes a kube-api-access token at 80% of
// its requested hour while the API server made it valid for a year: a
// caching app keeps presenting the old one, app-stale, and keeps working.
// auto restarts it only when its credential will stop working: a token
// that may be of a previous issuer the API servers trust for a while
// more, or a short-lived one.
func TestAutoRestartsAnAppStalePodOnlyWhenItsCredentialWillFail(t *testing.T) {
	extended := int64(apps.ExtendedSeconds)
	short := int64(600)
	for _, c := range []struct {
		name string
		// seconds is the pod's token source's expirationSeconds.
		seconds *int64
		// observed is when the coordinator saw the API servers sign with
		// the current issuer, from t0 (the pod's first token).
		observed time.Duration
		trusted  []TrustedIssuer
		planned  bool
	}{
		{"the current issuer's extended token", &extended, -time.Hour, nil, false},
		{"the current issuer's extended token, a previous issuer still trusted", &extended, -time.Hour,
			[]TrustedIssuer{{Name: oldIssuer, Expires: t0.Add(time.Hour)}}, false},
		{"an extended token of the previous issuer, trusted until a deadline", &extended, 30 * time.Second,
			[]TrustedIssuer{{Name: oldIssuer, Expires: t0.Add(time.Hour)}}, true},
		{"an extended token issued before the issuer was seen, none other trusted: the current one's", &extended, 30 * time.Second, nil, false},
		{"an extended token issued before the issuer was seen, OpenShift listing only the current issuer: the current one's", &extended, 30 * time.Second,
			[]TrustedIssuer{{Name: newIssuer}}, false},
		{"an extended token presented since before the issuer was seen, the previous issuer's trust ended", &extended, 3*time.Minute + 10*time.Second,
			[]TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(time.Minute)}}, true},
		{"a short-lived token of the current issuer", &short, -time.Hour, nil, true},
		{"the default hour, not extended", nil, -time.Hour, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cache := tokenPod("cache-1", "n1", "10.1.0.6", "cache")
			cache.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.ExpirationSeconds = c.seconds
			f := autoFixture(t, testNode("n1"), testNode("n2"), cache, replicaSet("shop", "cache", 1, 1))
			f.cfg.Auto = true
			f.gate.Set(GateState{Provider: GateOpenShift, Open: true, TrustKnown: true, Trusted: c.trusted})
			w := newAppWorld(f, []*corev1.Pod{cache}, "cache-1")
			if f.term == nil {
				f.lead()
			}
			f.term.c.mu.Lock()
			f.term.c.observedIssuer, f.term.c.observedIssuerAt = newIssuer, t0.Add(c.observed)
			f.term.c.mu.Unlock()
			w.staleAfterRefresh("n1")
			if res := w.d.Last(); res == nil || res.Stale != 1 {
				t.Fatalf("app detection finds %+v; want the caching pod app-stale", res)
			}
			f.sync()
			st := f.state()
			if planned := st.Rollout != nil && st.Rollout.Trigger == TriggerAppStale; planned != c.planned {
				t.Errorf("rollout %+v; want one for the app-stale pod: %v", st.Rollout, c.planned)
			}
		})
	}
}

// trustEnded is an OpenShift gate open on the current issuer alone: the
// previous issuer's trust ended a second ago.
var trustEnded = GateState{Provider: GateOpenShift, Open: true, TrustKnown: true,
	Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(-time.Second)}}}

// The requests written in got, by node, each checked: a kubelet restart
// asked at at.
func kubeletRequests(t *testing.T, got []apiWrite, at time.Time) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, w := range got {
		if w.Request != nil {
			ids[w.Name] = requestIn(t, w, protocol.ActionKubeletRestart, w.Name, at)
		}
	}
	return ids
}

// uncordonedStart is the state a node started without a cordon at at
// carries, with request id.
func uncordonedStart(at time.Time, id string) protocol.NodeState {
	return protocol.NodeState{Rollout: rolloutID, Step: protocol.StepActing, Strategy: Auto, Rung: KubeletRestart, NoCordon: true,
		Request: id, BootID: "boot-1", StepAt: at, StartedAt: at}
}

// trustEndedFleet is an auto rollout of names, each node with one pod
// holding a token of the previous issuer, which the API servers no longer
// trust, its app running for a minute; one node at a time by
// --max-unavailable, kubeletRestarts by --max-kubelet-restarts (zero: the
// default).
func trustEndedFleet(t *testing.T, names []string, kubeletRestarts intstr.IntOrString) (*fixture, *appWorld) {
	t.Helper()
	var objs []runtime.Object
	var pods []*corev1.Pod
	for i, n := range names {
		p := tokenPod("web-"+n, n, fmt.Sprintf("10.1.0.%d", i+1), "web")
		pods = append(pods, p)
		objs = append(objs, testNode(n, withReport(oldIssuerReport(podRef(p)))), p)
	}
	f := autoFixture(t, append(objs, rolloutConfigMap(rollout(Auto, names...)))...)
	f.cfg.MaxUnavailable, f.cfg.MaxKubeletRestarts = intstr.FromInt32(1), kubeletRestarts
	f.gate.Set(trustEnded)
	w := newAppWorld(f, pods)
	w.run(time.Minute)
	return f, w
}

// Once the previous issuer is no longer trusted, every pod still holding
// its tokens fails until its kubelet replaces them: auto restarts the
// kubelets without cordoning the nodes (the restart evicts no pod) and
// outside --max-unavailable, a canary first, then, once it is verified,
// every node left at once. The request and the state go in one write, and
// the node is never made unschedulable.
func TestAutoRestartsKubeletsUncordonedOnceTheTrustHasEnded(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4"}
	f, w := trustEndedFleet(t, names, intstr.IntOrString{})
	start := f.clock.Now()

	f.sync()
	got := f.writes()
	ids := kubeletRequests(t, got, start)
	s1 := uncordonedStart(start, ids["n1"])
	want := patchNode("n1", &s1, nil)
	want.Request = got[0].Request
	f.compareWrites(got, want)
	f.expectEvents("Normal ActionRequested rollout r-test: kubelet-restart for auto (requested by alice), not cordoned: the API servers no longer trust the previous issuer, and a kubelet restart evicts no pod; " +
		"asked the agent to kubelet-restart (request " + ids["n1"] + ")")

	// The canary is not verified yet: nothing more starts.
	f.clock.Step(time.Second)
	f.sync()
	f.expectWrites()

	// Verified: watched, never cordoned, and out of the way; every node
	// left starts at once.
	f.clock.Step(time.Second)
	w.restartKubelet("n1")
	f.updateNode("n1", agentStatus(ids["n1"], protocol.PhaseDone, "kubelet restarted"))
	f.updateNode("n1", withReport(cleanReport()))
	at := f.clock.Now()
	f.sync()
	got = f.writes()
	watched := s1
	watched.Step, watched.StepAt, watched.AppsAt, watched.Request = protocol.StepApps, at, at, ""
	watched.Message = "kubelet-restart verified; watching its apps"
	wantApps := patchNode("n1", &watched, nil)
	wantApps.RequestCleared = true
	ids = kubeletRequests(t, got, at)
	if len(got) < 4 {
		t.Fatalf("writes %v; want n1 watched, n2, n3 and n4 started", got)
	}
	want2 := []apiWrite{wantApps}
	for i, n := range names[1:] {
		s := uncordonedStart(at, ids[n])
		wn := patchNode(n, &s, nil)
		wn.Request = got[i+1].Request
		want2 = append(want2, wn)
	}
	f.compareWrites(got[:4], want2...)
	for _, wr := range got[4:] {
		if wr.Resource == "nodes" {
			t.Errorf("node written beyond n1 to n4: %s", wr)
		}
	}
	events := f.takeEvents()
	if len(events) != 4 || events[0] != "Normal TokensVerified rollout r-test: kubelet-restart verified in 2s; never cordoned; its apps are watched for --app-stale-grace before it is done" {
		t.Errorf("events %q", events)
	}
}

// After the canary, --max-kubelet-restarts bounds the kubelets restarted
// at once without a cordon: the API servers meet the kubelets' lists and
// token requests in waves of that size, and a node waits for a place, not
// for the whole wave.
func TestAutoBoundsUncordonedKubeletRestarts(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4"}
	f, w := trustEndedFleet(t, names, intstr.FromInt32(2))
	verify := func(node string) {
		t.Helper()
		st := readNodeState(f.node(node), rolloutID)
		if st == nil || st.Request == "" {
			t.Fatalf("%s: state %+v; want a kubelet restart requested", node, st)
		}
		w.restartKubelet(node)
		f.updateNode(node, agentStatus(st.Request, protocol.PhaseDone, "kubelet restarted"))
		f.updateNode(node, withReport(cleanReport()))
	}
	acting := func(want ...string) {
		t.Helper()
		var got []string
		for n, s := range f.steps(names...) {
			if s == protocol.StepActing {
				got = append(got, n)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("restarting their kubelets: %v; want %v", got, want)
		}
	}

	f.sync()
	acting("n1") // the canary alone
	f.clock.Step(time.Second)
	verify("n1")
	f.sync()
	acting("n2", "n3") // two at once, not every node left
	f.clock.Step(time.Second)
	f.sync()
	acting("n2", "n3")
	verify("n2")
	f.sync()
	acting("n3", "n4") // n2's place goes to n4 at once
	for n, s := range f.steps(names...) {
		if s != protocol.StepActing && s != protocol.StepApps {
			t.Errorf("%s is %q; want acting or its apps watched", n, s)
		}
	}
	for _, n := range names {
		if f.node(n).Spec.Unschedulable {
			t.Errorf("%s was cordoned", n)
		}
	}
}

// The completion estimate counts the uncordoned kubelet restarts as they
// go: --max-kubelet-restarts at a time, beside --max-unavailable's places,
// not in them.
func TestAutoEstimateCountsUncordonedRestarts(t *testing.T) {
	names := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	f, w := trustEndedFleet(t, names, intstr.FromInt32(2))
	start := f.clock.Now()
	f.sync() // n1, the canary
	f.clock.Step(time.Minute)
	st := readNodeState(f.node("n1"), rolloutID)
	w.restartKubelet("n1")
	f.updateNode("n1", agentStatus(st.Request, protocol.PhaseDone, "kubelet restarted"))
	f.updateNode("n1", withReport(cleanReport()))
	f.sync() // n1 verified after a minute: n2 and n3 restart
	f.clock.Step(10 * time.Second)
	f.sync()
	// A minute a node: n2 and n3 end at start+2m, n4 and n5 take their
	// places until 3m, n6 until 4m; then the watch of the last node's
	// apps. At one place (--max-unavailable), n4 to n6 would follow each
	// other until 5m.
	want := start.Add(4*time.Minute + AppsWatch(appsOptions.Grace))
	if got := f.counter("tokenroll_rollout_estimated_completion_timestamp_seconds", "", ""); got != float64(want.Unix()) {
		t.Errorf("estimated completion %s; want %s", time.Unix(int64(got), 0).UTC(), want.UTC())
	}
}

// A node started without a cordon whose kubelet restart refreshes
// nothing climbs to a reboot, which drains: it is cordoned for it, in the
// same write, once --max-unavailable has room, and not before.
func TestAutoCordonsAnUncordonedNodeThatClimbs(t *testing.T) {
	const req = "r-test-0000beef"
	s := uncordonedStart(t0.Add(-21*time.Minute), req)
	for _, full := range []bool{true, false} {
		t.Run(fmt.Sprintf("budget full %v", full), func(t *testing.T) {
			objs := []runtime.Object{testNode("n1", inStep(s), agentStatus(req, protocol.PhaseDone, "kubelet restarted"), withReport(oldIssuerReport())),
				rolloutConfigMap(rollout(Auto, "n1"))}
			if full {
				objs = append(objs, testNode("other", cordoned))
			}
			f := autoFixture(t, objs...)
			f.cfg.MaxUnavailable = intstr.FromInt32(1)
			f.gate.Set(trustEnded)
			newAppWorld(f, nil)
			f.sync()
			if full {
				f.expectWrites()
				return
			}
			climbed := s
			climbed.Step, climbed.StepAt, climbed.Rung, climbed.Request, climbed.NoCordon, climbed.CordonedByUs = protocol.StepCordoned, t0, Reboot, "", false, true
			climbed.Message = "kubelet-restart did not do: the agent reports 2 tokens from https://old.tokenroll.test, not https://new.tokenroll.test after 21m0s; climbing to reboot"
			want := patchNode("n1", &climbed, ptr(true))
			want.RequestCleared = true
			f.expectWrites(want)
		})
	}
}

// A pod found app-stale before its node's remediation began (its app went
// on presenting the token its kubelet had replaced an earlier time, past
// the grace) caches its token: the kubelet restart's new token does not
// help it, so it is evicted as soon as the node's apps are watched, not
// after the settle; the reloading pod beside it is never evicted.
func TestAutoEvictsAKnownCachingPodAtOnce(t *testing.T) {
	web, cache := tokenPod("web-1", "n1", "10.1.0.5", "web"), tokenPod("cache-1", "n1", "10.1.0.6", "cache")
	// The node's kubelet restart is verified at now: its apps are watched.
	now := t0.Add(3*time.Minute + 20*time.Second)
	watched := protocol.NodeState{Rollout: rolloutID, Step: protocol.StepApps, Strategy: Auto, Rung: KubeletRestart, NoCordon: true,
		StepAt: now, AppsAt: now, StartedAt: now.Add(-3 * time.Second), BootID: "boot-1"}
	f := autoFixture(t, testNode("n1", inStep(watched)), web, cache, replicaSet("shop", "cache", 1, 1), rolloutConfigMap(rollout(Auto, "n1")))
	f.gate.Set(trustEnded)
	w := newAppWorld(f, []*corev1.Pod{web, cache}, "cache-1")
	// An earlier refresh: the caching app keeps its first token past the
	// grace, the reloading one takes the new one.
	w.staleAfterRefresh("n1")
	if !f.clock.Now().Equal(now) {
		t.Fatalf("the clock is at %s; want %s", f.clock.Now(), now)
	}
	w.restartKubelet("n1")
	w.d.Evaluate()
	evicted := f.evictCache(watched, cache)
	got := f.writes()
	var nodeWrites []apiWrite
	for _, wr := range got {
		if wr.Resource == "nodes" {
			nodeWrites = append(nodeWrites, wr)
		}
	}
	f.compareWrites(nodeWrites, patchNode("n1", &evicted, nil))
	if f.clock.Now().Sub(now) >= appsSettle {
		t.Errorf("evicted %s after the watch began; want before the settle", f.clock.Now().Sub(now))
	}
}

// A dry run says what auto would do: without a cordon once the previous
// issuer is no longer trusted, with one while it is.
func TestAutoDryRunSaysWhetherItCordons(t *testing.T) {
	trusted := GateState{Provider: GateOpenShift, Open: true, TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(time.Hour)}}}
	for _, c := range []struct {
		gate GateState
		want string
	}{
		{trustEnded, "no cordon (the previous issuer is no longer trusted, and a kubelet restart evicts no pod), ask the agent to kubelet-restart, verify, " +
			"watch its apps for --app-stale-grace and evict the pods whose apps present stale credentials or fail to authenticate"},
		{trusted, "cordon, ask the agent to kubelet-restart, verify, uncordon, " +
			"watch its apps for --app-stale-grace and evict the pods whose apps present stale credentials or fail to authenticate"},
	} {
		web := tokenPod("web-1", "n1", "10.1.0.5", "web")
		f := autoFixture(t, testNode("n1", withReport(oldIssuerReport(podRef(web)))), web)
		f.gate.Set(c.gate)
		newAppWorld(f, []*corev1.Pod{web}).run(10 * time.Second)
		w, err := f.term.observe(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.term.wouldDo(f.ctx, w, PlannedNode{Name: "n1", Strategy: Auto}); got != c.want {
			t.Errorf("trust ended %v: would %q; want %q", c.gate.Trusted[1].Expires.Before(t0), got, c.want)
		}
	}
}

// Once no previous issuer is trusted, a pod found app-stale before its
// node started caches a token that fails now, whatever the kubelet does:
// it is evicted as the node's kubelet restart starts, not once it is
// verified; the eviction is recorded on the acting node, and the watch
// of its apps that follows evicts nothing again.
func TestAutoEvictsAKnownCachingPodBesideTheKubeletRestart(t *testing.T) {
	web, cache := tokenPod("web-1", "n1", "10.1.0.5", "web"), tokenPod("cache-1", "n1", "10.1.0.6", "cache")
	now := t0.Add(3*time.Minute + 20*time.Second)
	const req = "r-test-0000beef"
	s := uncordonedStart(now, req)
	f := autoFixture(t, testNode("n1", inStep(s), withReport(oldIssuerReport(podRef(web), podRef(cache)))), web, cache, replicaSet("shop", "cache", 1, 1),
		rolloutConfigMap(rollout(Auto, "n1")))
	f.gate.Set(trustEnded)
	w := newAppWorld(f, []*corev1.Pod{web, cache}, "cache-1")
	w.staleAfterRefresh("n1")
	if !f.clock.Now().Equal(now) {
		t.Fatalf("the clock is at %s; want %s", f.clock.Now(), now)
	}

	// The agent has not restarted the kubelet yet: the caching pod goes.
	evicted := f.evictCache(s, cache)
	f.compareWrites(nodeWrites(f.writes()), patchNode("n1", &evicted, nil))

	// The kubelet restart verified: its apps are watched, the eviction
	// kept, none made again.
	f.clock.Step(2 * time.Second)
	w.restartKubelet("n1")
	w.gone("cache-1")
	w.d.Evaluate()
	f.updateNode("n1", agentStatus(req, protocol.PhaseDone, "kubelet restarted"))
	f.updateNode("n1", withReport(cleanReport()))
	at := f.clock.Now()
	f.sync()
	watched := evicted
	watched.Step, watched.StepAt, watched.AppsAt, watched.Request = protocol.StepApps, at, at, ""
	watched.Message = "kubelet-restart verified; watching its apps"
	want := patchNode("n1", &watched, nil)
	want.RequestCleared = true
	f.compareWrites(nodeWrites(f.writes()), want)
	f.sync()
	f.expectDrains()
}

func nodeWrites(got []apiWrite) []apiWrite {
	var out []apiWrite
	for _, wr := range got {
		if wr.Resource == "nodes" {
			out = append(out, wr)
		}
	}
	return out
}

// evictCache syncs as auto evicts the app-stale pod shop/cache-1 (its
// ReplicaSet shop/cache) from n1: the drain of that pod alone, then the
// sync after it. It returns s with the eviction recorded, the node state
// n1's next write carries.
func (f *fixture) evictCache(s protocol.NodeState, cache *corev1.Pod) protocol.NodeState {
	f.t.Helper()
	f.sync()
	f.awaitDrainEnd()
	f.expectDrains(drainCall{Pods: []string{"shop/cache-1"}, Timeout: 10 * time.Minute})
	f.sync()
	s.Evicted = []protocol.PodRef{podRef(cache)}
	s.Owners = []protocol.OwnerRef{{Kind: "ReplicaSet", Namespace: "shop", Name: "cache"}}
	return s
}
