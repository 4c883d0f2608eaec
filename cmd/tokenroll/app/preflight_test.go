package app

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/cli/clitest"
	"github.com/tokenroll/tokenroll/protocol"
)

func TestPerNodeTime(t *testing.T) {
	samples := []nodeSample{{"reboot", 7 * time.Minute}, {"reboot", 5 * time.Minute}, {"reboot", 9 * time.Minute}, {"kubelet-restart", 20 * time.Second}, {"reboot", 0}}
	for _, c := range []struct {
		strategy protocol.Strategy
		override time.Duration
		want     time.Duration
		source   string
		samples  int
	}{
		{"reboot", 0, 7 * time.Minute, perNodeMeasured, 3},
		{"kubelet-restart", 0, 20 * time.Second, perNodeMeasured, 1},
		{"pod-restart", 0, 5 * time.Minute, perNodeDefault, 0},
		{"auto", 0, time.Minute, perNodeDefault, 0},
		{"reboot", 3 * time.Minute, 3 * time.Minute, perNodeFlag, 0},
	} {
		d, src, k := perNodeTime(c.strategy, samples, c.override)
		if d != c.want || src != c.source || k != c.samples {
			t.Errorf("%s (override %s): %s %s %d; want %s %s %d", c.strategy, c.override, d, src, k, c.want, c.source, c.samples)
		}
	}
}

// A node auto finished is measured until the watch of its apps began:
// the watch overlapped the next nodes. A node of another strategy, from
// its cordon to its verification.
func TestSamplesOfStopAtTheAppsWatch(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	node := func(name string, ns protocol.NodeState) *corev1.Node {
		raw, _ := json.Marshal(ns)
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{protocol.AnnotationNodeState: string(raw)}}}
	}
	nodes := []*corev1.Node{
		node("a", protocol.NodeState{Rollout: "r1", Step: protocol.StepDone, Strategy: coordinator.Auto, StartedAt: at, AppsAt: at.Add(40 * time.Second), StepAt: at.Add(3 * time.Minute)}),
		node("b", protocol.NodeState{Rollout: "r1", Step: protocol.StepDone, Strategy: coordinator.KubeletRestart, StartedAt: at, StepAt: at.Add(20 * time.Second)}),
	}
	samples, id := samplesOf(&coordinator.StatusReport{Rollout: &coordinator.Rollout{ID: "r1"}}, nodes)
	want := []nodeSample{{coordinator.Auto, 40 * time.Second}, {coordinator.KubeletRestart, 20 * time.Second}}
	if id != "r1" || !slices.Equal(samples, want) {
		t.Errorf("samples %v of %q; want %v of r1", samples, id, want)
	}
	if d, src, k := perNodeTime(coordinator.Auto, samples, 0); d != 40*time.Second || src != perNodeMeasured || k != 1 {
		t.Errorf("auto's per-node time %s %s %d; want 40s measured on 1 node", d, src, k)
	}
}

func TestGroupWorkloads(t *testing.T) {
	since := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	st := &apps.Status{PodsOmitted: 4, Pods: []apps.PodStatus{
		{Namespace: "shop", Name: "cart-2", Node: "node-b", Workload: "Deployment/cart", Conditions: []string{"app-stale"}, Since: since},
		{Namespace: "shop", Name: "cart-1", Node: "node-a", Workload: "Deployment/cart", Conditions: []string{"app-stale", "app-failing"}, Since: since},
		{Namespace: "shop", Name: "cart-3", Node: "node-a", Workload: "Deployment/cart", Conditions: []string{"app-failing"}, Since: since},
		{Namespace: "batch", Name: "loner", Node: "node-c", Conditions: []string{"app-stale"}, Since: since},
		{Namespace: "accounts", Name: "cart-9", Node: "node-c", Workload: "Deployment/cart", Conditions: []string{"app-stale"}, Since: since},
	}}
	groups, omitted := groupWorkloads(st)
	want := []workloadGroup{
		{Namespace: "accounts", Workload: "Deployment/cart", AppStale: 1, Pods: []string{"cart-9"}, Nodes: []string{"node-c"}},
		{Namespace: "batch", Workload: "Pod/loner", AppStale: 1, Pods: []string{"loner"}, Nodes: []string{"node-c"}},
		{Namespace: "shop", Workload: "Deployment/cart", AppStale: 2, AppFailing: 2, Pods: []string{"cart-1", "cart-2", "cart-3"}, Nodes: []string{"node-a", "node-b"}},
	}
	g, _ := json.Marshal(groups)
	w, _ := json.Marshal(want)
	if string(g) != string(w) || omitted != 4 {
		t.Errorf("groups:\n%s\nwant\n%s\nomitted %d, want 4", g, w, omitted)
	}
	if got := inWorkloads(groups, apps.AppStale); got != ", in 3 workloads in 3 namespaces" {
		t.Errorf("app-stale summary %q", got)
	}
	if got := inWorkloads(groups, apps.AppFailing); got != ", in 1 workload in 1 namespace" {
		t.Errorf("app-failing summary %q", got)
	}
	if groups, omitted := groupWorkloads(nil); len(groups) != 0 || groups == nil || omitted != 0 {
		t.Errorf("no status: %v %d; want an empty list (JSON [], not null)", groups, omitted)
	}
}

// fixture builds nodes from token reports (nil: no annotation) and the
// status the CLI would read for them, all Ready.
func fixture(t *testing.T, now time.Time, iss string, gate coordinator.GateState, reports map[string]*protocol.TokenReport) preflightInput {
	t.Helper()
	st := &coordinator.StatusReport{Now: now, Issuer: iss, Gate: gate,
		Apps: &apps.Status{UpdatedAt: now.Add(-time.Minute), Followed: 4, Healthy: 4, AuditEvents: 100}}
	var nodes []*corev1.Node
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range reports {
			if !yield(k) {
				return
			}
		}
	}) {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
		ns := coordinator.NodeStatus{Name: name, Ready: true, Tokens: -1, Stale: -1}
		if r := reports[name]; r != nil {
			raw, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			n.Annotations[protocol.AnnotationTokens] = string(raw)
			ns.Tokens = r.Tokens
			for _, it := range r.Issuers {
				if it.Issuer != iss {
					ns.OldIssuer += it.Tokens
				}
			}
		}
		nodes = append(nodes, n)
		st.Nodes = append(st.Nodes, ns)
	}
	return preflightInput{Now: now, Status: st, Nodes: nodes, Strategy: "kubelet-restart", MaxUnavailable: intstr.FromInt32(1),
		GateSettle: 2 * time.Minute, Margin: time.Hour}
}

func checkOf(rep preflightReport, name string) check {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return check{Name: name, Message: "missing"}
}

// Before an issuer change: every node whose agent reports tokens is
// planned, the trust window is the flag's, and the gate settle counts
// only with a window (without one the coordinator does not wait it out).
func TestPreflightBeforeAnIssuerChange(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const iss = "https://old.test"
	clean := func(n int) *protocol.TokenReport {
		return &protocol.TokenReport{Issuer: iss, Tokens: n, Issuers: []protocol.IssuerTokens{{Issuer: iss, Tokens: n}}}
	}
	in := fixture(t, now, iss, coordinator.GateState{Provider: "none", Open: true, TrustKnown: true}, map[string]*protocol.TokenReport{
		"a": clean(3), "b": clean(2), "c": clean(1), "empty": clean(0)})
	rep := buildPreflight(in)
	e := rep.Estimate
	if rep.Breaks || e.Scope != scopeIssuerChange || e.Nodes != 3 || e.Concurrency != 1 || e.DurationSeconds != (3*time.Minute).Seconds() || e.GateSettleSeconds != 0 ||
		e.Fits != nil || !e.TrustDeadline.IsZero() || len(e.PerNode) != 1 || e.PerNode[0].Source != perNodeDefault || e.PerNode[0].Why != "the state records no rollout" {
		t.Errorf("no trust window: %+v\n%+v", e, rep.Checks)
	}
	// auto: a kubelet restart's minute per node, and the watch of the
	// last node's apps once (the others overlap the next nodes). With no
	// trust window the kubelets restart without a cordon: one first, then
	// the two others at once, or one at a time with
	// --max-kubelet-restarts=1.
	auto := in
	auto.Strategy = coordinator.Auto
	autoRep := buildPreflight(auto)
	if e := autoRep.Estimate; e.DurationSeconds != (2*time.Minute+2*time.Minute+30*time.Second).Seconds() ||
		e.Uncordoned != 3 || e.KubeletRestartsAtOnce != 100 || len(e.PerNode) != 1 || e.PerNode[0].Seconds != 60 || e.PerNode[0].Source != perNodeDefault {
		t.Errorf("auto: %+v", e)
	}
	var table strings.Builder
	writeEstimate(&table, autoRep)
	if want := "auto restarts the kubelets of 3 nodes without a cordon, outside max-unavailable (the old issuer is no longer trusted): one first, then 100 at a time (max-kubelet-restarts)"; !strings.Contains(table.String(), want) {
		t.Errorf("table:\n%s\nlacks %q", table.String(), want)
	}
	auto.MaxKubeletRestarts = intstr.FromInt32(1)
	if e := buildPreflight(auto).Estimate; e.DurationSeconds != (3*time.Minute+2*time.Minute+30*time.Second).Seconds() || e.KubeletRestartsAtOnce != 1 {
		t.Errorf("auto, --max-kubelet-restarts=1: %+v", e)
	}
	// With a window, auto's nodes take max-unavailable's places, cordoned.
	auto.TrustWindow = 24 * time.Hour
	if e := buildPreflight(auto).Estimate; e.DurationSeconds != (2*time.Minute+3*time.Minute+2*time.Minute+30*time.Second).Seconds() || e.Uncordoned != 0 {
		t.Errorf("auto, 24h window: %+v", e)
	}
	in.TrustWindow, in.MaxUnavailable = 24*time.Hour, intstr.FromString("50%")
	rep = buildPreflight(in)
	if e := rep.Estimate; rep.Breaks || e.Concurrency != 2 || e.DurationSeconds != (4*time.Minute).Seconds() || e.Fits == nil || !*e.Fits ||
		!e.TrustDeadline.Equal(now.Add(24*time.Hour)) || e.TrustSource != "--trust-window" || e.TrustIssuer != iss {
		t.Errorf("24h window: %+v", e)
	}
	in.PerNodeOverride = 23 * time.Hour
	rep = buildPreflight(in)
	if c := checkOf(rep, checkTrustWindow); !rep.Breaks || c.OK || !strings.Contains(c.Message, "after the trust deadline") || *rep.Estimate.Fits {
		t.Errorf("a rollout longer than the window: %+v %+v", c, rep.Estimate)
	}
}

// During an issuer change the gate's deadline is the one, and a node that
// holds tokens of an issuer no longer trusted is reported.
func TestPreflightDuringAnIssuerChange(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const old, cur, gone = "https://old.test", "https://new.test", "https://gone.test"
	deadline := now.Add(3 * time.Hour)
	gate := coordinator.GateState{Provider: "openshift", Open: true, TrustKnown: true, Trusted: []coordinator.TrustedIssuer{{Name: old, Expires: deadline}}}
	in := fixture(t, now, cur, gate, map[string]*protocol.TokenReport{
		"a": {Issuer: cur, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 1}, {Issuer: old, Tokens: 2}}},
		"b": {Issuer: cur, Tokens: 2, Stale: map[protocol.State]int{protocol.StateIssuerMismatch: 2, protocol.StateExpired: 1},
			Issuers:   []protocol.IssuerTokens{{Issuer: gone, Tokens: 2}},
			StalePods: []protocol.PodRef{{Namespace: "shop", Name: "cart-1", UID: "u1"}}, StalePodsTruncated: true},
		"c": {Issuer: cur, Tokens: 1, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 1}}},
	})
	in.PerNodeOverride = 2 * time.Hour
	rep := buildPreflight(in)
	e := rep.Estimate
	// a: old-issuer tokens whose refresh is not known, planned by the
	// deadline; b: expired tokens; c: current tokens only, left alone.
	if e.Scope != scopeIssuerChanged || e.Nodes != 2 || e.GateSettleSeconds != 0 || e.TrustSource != "gate" || e.TrustIssuer != old ||
		!e.TrustDeadline.Equal(deadline) || e.Fits == nil || *e.Fits {
		t.Errorf("estimate: %+v", e)
	}
	want := []nodeTokens{{Node: "b", Expired: 1, Untrusted: 2, UntrustedIssuers: []string{gone}, Pods: []string{"shop/cart-1"}, PodsTruncated: true}}
	g, _ := json.Marshal(rep.Tokens)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("tokens:\n%s\nwant\n%s", g, w)
	}
	var failed []string
	for _, c := range rep.Checks {
		if !c.OK {
			failed = append(failed, c.Name)
		}
	}
	if !slices.Equal(failed, []string{checkNotRefreshed, checkUntrusted, checkTrustWindow}) {
		t.Errorf("failed checks %v", failed)
	}
}

// A rollout in progress: its unfinished nodes, at the speed its finished
// ones went; nodes cordoned by others take slots.
func TestPreflightRolloutInProgress(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const iss = "https://new.test"
	rep := func(n int) *protocol.TokenReport { return &protocol.TokenReport{Issuer: iss, Tokens: n} }
	in := fixture(t, now, iss, coordinator.GateState{Provider: "none", Open: true}, map[string]*protocol.TokenReport{
		"a": rep(1), "b": rep(1), "c": rep(1), "d": rep(1), "e": rep(1), "f": nil})
	in.Status.Rollout = &coordinator.Rollout{ID: "r-1", Strategy: "reboot", Phase: coordinator.RolloutRunning, Nodes: []coordinator.PlannedNode{
		{Name: "a", Strategy: "reboot"}, {Name: "b", Strategy: "reboot"}, {Name: "c", Strategy: "reboot"}, {Name: "d", Strategy: "reboot"}}}
	phases := map[string]protocol.Step{"a": protocol.StepDone, "b": protocol.StepDone, "c": protocol.StepActing}
	for i := range in.Status.Nodes {
		n := &in.Status.Nodes[i]
		n.Phase = string(phases[n.Name])
		n.Unschedulable = n.Phase == string(protocol.StepActing) || n.Name == "e"
	}
	for i, took := range map[string]time.Duration{"a": 4 * time.Minute, "b": 6 * time.Minute} {
		raw, _ := json.Marshal(protocol.NodeState{Rollout: "r-1", Step: protocol.StepDone, Strategy: "reboot", StartedAt: now.Add(-time.Hour), StepAt: now.Add(-time.Hour + took)})
		for _, n := range in.Nodes {
			if n.Name == i {
				n.Annotations[protocol.AnnotationNodeState] = string(raw)
			}
		}
	}
	in.MaxUnavailable = intstr.FromInt32(2)
	r := buildPreflight(in)
	e := r.Estimate
	if e.Scope != scopeRollout || e.Strategy != "reboot" || e.Nodes != 2 || e.OutOfService != 1 || e.Concurrency != 1 ||
		len(e.PerNode) != 1 || e.PerNode[0].Source != perNodeMeasured || e.PerNode[0].Samples != 2 || e.PerNode[0].Seconds != 360 ||
		e.PerNode[0].Rollout != "r-1" || e.DurationSeconds != 720 {
		t.Errorf("estimate: %+v", e)
	}
	if c := checkOf(r, checkAgents); c.OK || len(r.NodesWithoutAgent) != 1 || r.NodesWithoutAgent[0].Node != "f" || r.NodesWithoutAgent[0].Reason != agentNoReport {
		t.Errorf("agents: %+v %+v", c, r.NodesWithoutAgent)
	}
	in.MaxUnavailable = intstr.FromInt32(1)
	if r = buildPreflight(in); checkOf(r, checkMaxUnavailable).OK || !r.Estimate.CompletesAt.IsZero() || checkOf(r, checkTrustWindow).OK != true {
		t.Errorf("slots filled: %+v %+v", r.Estimate, r.Checks)
	}
}

// For the same rollout (the nodes finished, in progress and left, the
// nodes at once, the settle) tokenroll preflight expects it to end when
// the coordinator's estimate, which tokenroll status shows, does: a node
// in progress ends a node's time after its cordon, not after now.
func TestPreflightAgreesWithTheCoordinator(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const iss = "https://new.test"
	names := []string{"a", "b", "c", "d", "e", "f", "g"}
	reports := map[string]*protocol.TokenReport{}
	for _, n := range names {
		reports[n] = &protocol.TokenReport{Issuer: iss, Tokens: 1}
	}
	in := fixture(t, now, iss, coordinator.GateState{Provider: "none", Open: true}, reports)
	in.MaxUnavailable, in.Settle = intstr.FromInt32(2), 15*time.Second
	r := &coordinator.Rollout{ID: "r-1", Strategy: "kubelet-restart", Phase: coordinator.RolloutRunning}
	for _, n := range names {
		r.Nodes = append(r.Nodes, coordinator.PlannedNode{Name: n, Strategy: "kubelet-restart"})
	}
	in.Status.Rollout = r
	// a, b and c finished; d was cordoned 50 s ago, e 3 min ago (it has
	// overrun); f and g are left.
	states := map[string]protocol.NodeState{
		"a": {Step: protocol.StepDone, StartedAt: now.Add(-10 * time.Minute), StepAt: now.Add(-9 * time.Minute)},
		"b": {Step: protocol.StepDone, StartedAt: now.Add(-9 * time.Minute), StepAt: now.Add(-7 * time.Minute)},
		"c": {Step: protocol.StepDone, StartedAt: now.Add(-7 * time.Minute), StepAt: now.Add(-5*time.Minute - 30*time.Second)},
		"d": {Step: protocol.StepActing, StartedAt: now.Add(-50 * time.Second), StepAt: now.Add(-40 * time.Second)},
		"e": {Step: protocol.StepActing, StartedAt: now.Add(-3 * time.Minute), StepAt: now.Add(-2 * time.Minute)},
	}
	ein := coordinator.EstimateInput{Now: now, MaxUnavailable: 2, Settle: in.Settle, Pending: 2}
	for i, n := range in.Nodes {
		ns, ok := states[n.Name]
		if !ok {
			continue
		}
		ns.Rollout, ns.Strategy = r.ID, "kubelet-restart"
		raw, err := json.Marshal(ns)
		if err != nil {
			t.Fatal(err)
		}
		n.Annotations[protocol.AnnotationNodeState] = string(raw)
		in.Status.Nodes[i].Phase = string(ns.Step)
		in.Status.Nodes[i].Unschedulable = ns.Step.InProgress()
		if ns.Step == protocol.StepDone {
			ein.Finished = append(ein.Finished, ns.StepAt.Sub(ns.StartedAt))
		} else {
			ein.InProgress = append(ein.InProgress, ns.StartedAt)
		}
	}
	want := coordinator.EstimateCompletion(ein)
	got := buildPreflight(in).Estimate
	if !want.Known() || !got.CompletesAt.Equal(want.Completion) {
		t.Errorf("preflight expects the rollout to end at %s, the coordinator at %s (per node %s)", got.CompletesAt, want.Completion, want.PerNode)
	}
	// Both take the median of the finished nodes: 90 s; d ends 40 s from
	// now, e at once; f and g take their places after a settle.
	if end := now.Add(40*time.Second + 15*time.Second + 90*time.Second); !want.Completion.Equal(end) {
		t.Errorf("the coordinator expects the end at %s; want %s", want.Completion, end)
	}
}

// Once no previous issuer is trusted, auto restarts kubelets without a
// cordon, --max-kubelet-restarts at a time: preflight and the coordinator
// expect the same end for the same rollout. The canary a has been
// verified (its apps watched, or done); b restarts; c to f are left, two
// at a time; then the watch of the last node's apps. Before any kubelet
// restart is verified, b restarting is the canary and holds the others.
// Without audit evidence auto evicts instead, cordoned, one at a time.
func TestPreflightAgreesWithTheCoordinatorOnUncordonedRestarts(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const iss = "https://new.test"
	m := time.Minute
	verified := protocol.NodeState{Step: protocol.StepDone, NoCordon: true, Rung: coordinator.KubeletRestart,
		StartedAt: now.Add(-5 * m), AppsAt: now.Add(-4 * m), StepAt: now.Add(-4*m + appsWatchOnce)}
	watched := protocol.NodeState{Step: protocol.StepApps, NoCordon: true, Rung: coordinator.KubeletRestart,
		StartedAt: now.Add(-2 * m), AppsAt: now.Add(-m), StepAt: now.Add(-m)}
	notYet := verified
	notYet.Rung = coordinator.PodRestart
	restarting := protocol.NodeState{Step: protocol.StepActing, NoCordon: true, Rung: coordinator.KubeletRestart,
		StartedAt: now.Add(-20 * time.Second), StepAt: now.Add(-20 * time.Second)}
	for _, c := range []struct {
		name    string
		a       protocol.NodeState
		noAudit bool
		coord   coordinator.EstimateInput
		wantEnd time.Duration
		// wantUncordoned: the nodes preflight counts as restarting
		// without a cordon (b, started so, is one in every case).
		wantUncordoned int
	}{
		{name: "the canary done", a: verified,
			coord: coordinator.EstimateInput{Finished: []time.Duration{m}, UncordonedInProgress: []time.Time{restarting.StartedAt}, Uncordoned: 4, UncordonedAtOnce: 2,
				Watch: appsWatchOnce},
			// b ends 40 s from now; c and e take the free place (1 min
			// each), d and f b's (from 40 s); f ends at 2m40s.
			wantEnd: 2*m + 40*time.Second + appsWatchOnce, wantUncordoned: 5},
		{name: "the canary's apps watched", a: watched,
			coord: coordinator.EstimateInput{Finished: []time.Duration{m}, UncordonedInProgress: []time.Time{restarting.StartedAt}, Uncordoned: 4, UncordonedAtOnce: 2,
				Watch: appsWatchOnce, Watching: []time.Time{watched.StepAt}},
			wantEnd: 2*m + 40*time.Second + appsWatchOnce, wantUncordoned: 5},
		{name: "no kubelet restart verified yet: b is the canary", a: notYet,
			coord: coordinator.EstimateInput{Finished: []time.Duration{m}, UncordonedInProgress: []time.Time{restarting.StartedAt}, Uncordoned: 4, UncordonedAtOnce: 2,
				Watch: appsWatchOnce, CanaryPending: true},
			// b ends 40 s from now; then c to f, two at a time.
			wantEnd: 2*m + 40*time.Second + appsWatchOnce, wantUncordoned: 5},
		{name: "no audit evidence: cordoned, one at a time", a: verified, noAudit: true,
			coord: coordinator.EstimateInput{Finished: []time.Duration{m}, UncordonedInProgress: []time.Time{restarting.StartedAt}, Pending: 4,
				Watch: appsWatchOnce},
			wantEnd: 4*m + appsWatchOnce, wantUncordoned: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			names := []string{"a", "b", "c", "d", "e", "f"}
			reports := map[string]*protocol.TokenReport{}
			for _, n := range names {
				reports[n] = &protocol.TokenReport{Issuer: iss, Tokens: 1}
			}
			in := fixture(t, now, iss, coordinator.GateState{Provider: "none", Open: true, TrustKnown: true}, reports)
			in.MaxKubeletRestarts = intstr.FromInt32(2)
			if c.noAudit {
				in.Status.Apps.AuditEvents = 0
			}
			r := &coordinator.Rollout{ID: "r-1", Strategy: coordinator.Auto, Phase: coordinator.RolloutRunning}
			for _, n := range names {
				r.Nodes = append(r.Nodes, coordinator.PlannedNode{Name: n, Strategy: coordinator.Auto})
			}
			in.Status.Rollout = r
			states := map[string]protocol.NodeState{"a": c.a, "b": restarting}
			for i, n := range in.Nodes {
				ns, ok := states[n.Name]
				if !ok {
					continue
				}
				ns.Rollout, ns.Strategy = r.ID, coordinator.Auto
				raw, err := json.Marshal(ns)
				if err != nil {
					t.Fatal(err)
				}
				n.Annotations[protocol.AnnotationNodeState] = string(raw)
				in.Status.Nodes[i].Phase = string(ns.Step)
			}
			c.coord.Now, c.coord.MaxUnavailable = now, 1
			want := coordinator.EstimateCompletion(c.coord)
			got := buildPreflight(in).Estimate
			if !want.Known() || !got.CompletesAt.Equal(want.Completion) || got.Uncordoned != c.wantUncordoned || got.Nodes != 5 {
				t.Errorf("preflight expects the rollout to end at %s (%+v), the coordinator at %s", got.CompletesAt, got, want.Completion)
			}
			if end := now.Add(c.wantEnd); !want.Completion.Equal(end) {
				t.Errorf("the coordinator expects the end at %s; want %s", want.Completion, end)
			}
		})
	}
}

func TestPreflightAuditSource(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	in := fixture(t, now, "https://i.test", coordinator.GateState{Provider: "none", Open: true}, map[string]*protocol.TokenReport{"a": {Issuer: "https://i.test"}})
	for _, c := range []struct {
		apps *apps.Status
		ok   bool
		want string
	}{
		{nil, false, "no status"},
		{&apps.Status{UpdatedAt: now.Add(-time.Hour), AuditEvents: 5}, false, "1h0m0s old"},
		{&apps.Status{UpdatedAt: now, AuditEvents: 0}, false, "no audit event"},
		{&apps.Status{UpdatedAt: now, AuditEvents: 5, Followed: 3, Unobserved: 1}, true, "2 of 3 pods"},
	} {
		in.Status.Apps = c.apps
		r := buildPreflight(in)
		if got := checkOf(r, checkAuditSource); got.OK != c.ok || !strings.Contains(got.Message, c.want) || r.Breaks == c.ok {
			t.Errorf("%+v: %+v (breaks %v)", c.apps, got, r.Breaks)
		}
	}
	in.Status.Gate.Open = false
	if r := buildPreflight(in); checkOf(r, checkGate).OK || !r.Breaks {
		t.Errorf("closed gate: %+v", r.Checks)
	}
}

func TestPreflightFlags(t *testing.T) {
	clitest.ExpectUsage(t, NewCommand, clitest.Usage{
		Args: []string{"preflight", "--strategy=nuke", "--max-unavailable=0", "--per-node=-1s", "--trust-window=-1h", "-o", "yaml", "--gate=sometimes"},
		Want: []string{"--strategy", "--max-unavailable=\"0\"", "--per-node", "--trust-window", "--output", "--gate"}})
	code, out, _ := run(t, "preflight", "--help")
	for _, want := range []string{"Exit status:", "0  nothing would break", "1  something would break", "3  the cluster could not be read"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("preflight --help (exit %d) lacks %q", code, want)
		}
	}
}
