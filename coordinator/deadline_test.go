package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// withEstimate is r with e recorded as its estimate.
func withEstimate(r *Rollout, e Estimate) *Rollout {
	r.Estimate = &e
	return r
}

// deadlineFixture is a rollout of ten nodes by kubelet restart, the first
// done in 10 minutes, nine pending (90 minutes one at a time), the
// previous issuer trusted until t0+deadline, with --max-unavailable=1 and
// --deadline-max-unavailable=ceiling.
func deadlineFixture(t *testing.T, deadline time.Duration, ceiling intstr.IntOrString) (*fixture, []string) {
	var names []string
	var objs []runtime.Object
	for i := 1; i <= 10; i++ {
		name := fmt.Sprintf("n%02d", i)
		names = append(names, name)
		if i == 1 {
			objs = append(objs, testNode(name, inStep(done(started(KubeletRestart, true, t0.Add(-10*time.Minute)), t0))))
			continue
		}
		objs = append(objs, testNode(name))
	}
	f := newFixture(t, append(objs, rolloutConfigMap(rollout(KubeletRestart, names...)))...)
	f.cfg.MaxUnavailable, f.cfg.DeadlineMaxUnavailable = intstr.FromInt32(1), ceiling
	f.gate.Set(GateState{Provider: GateOpenShift, Open: true, TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: oldIssuer, Expires: t0.Add(deadline)}}})
	return f, names
}

// cordonedNodes counts the nodes in progress.
func (f *fixture) cordonedNodes(names []string) int {
	n := 0
	for _, s := range f.steps(names...) {
		if s.InProgress() {
			n++
		}
	}
	return n
}

// When, at --max-unavailable, the rollout would end after the previous
// issuer's trust does, the coordinator raises the nodes it disrupts at
// once as far as the deadline needs and --deadline-max-unavailable allows,
// never further; it records the raise, says so in an Event and in
// tokenroll status, exports it, and a new leader keeps it.
func TestRaiseToMeetTheTrustDeadline(t *testing.T) {
	cases := []struct {
		name     string
		deadline time.Duration
		ceiling  intstr.IntOrString
		// want is the nodes at once, and the completion expected then.
		want       int
		completion time.Duration
		event      string
	}{
		// 9 nodes at 10 minutes: 3 at once end in 30 minutes, 2 in 50.
		{"as far as needed, not to the ceiling", 40 * time.Minute, intstr.FromInt32(5), 3, 30 * time.Minute,
			"Normal MaxUnavailableRaised rollout r-test: at 1 node at once the rollout would end at 2026-11-27T13:30:00Z, after the previous issuer's trust ends at 2026-11-27T12:40:00Z; " +
				"raised to 3 nodes at once (--deadline-max-unavailable allows 5), and is now expected to end at 2026-11-27T12:30:00Z"},
		// 5 at once would end in 20 minutes; the ceiling allows 3.
		{"never above the ceiling", 20 * time.Minute, intstr.FromString("30%"), 3, 30 * time.Minute,
			"Warning MaxUnavailableRaised rollout r-test: at 1 node at once the rollout would end at 2026-11-27T13:30:00Z, after the previous issuer's trust ends at 2026-11-27T12:20:00Z; " +
				"raised to 3 nodes at once (--deadline-max-unavailable allows 3), and even so it is expected to end at 2026-11-27T12:30:00Z, after the deadline: " +
				"raise --deadline-max-unavailable or expect the pods on the nodes left then to fail to authenticate"},
		{"no ceiling set: never raised", 20 * time.Minute, intstr.IntOrString{}, 1, 90 * time.Minute, ""},
		{"the deadline met at --max-unavailable: not raised", 2 * time.Hour, intstr.FromInt32(5), 1, 90 * time.Minute, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, names := deadlineFixture(t, c.deadline, c.ceiling)
			f.sync()
			if got := f.cordonedNodes(names); got != c.want {
				t.Errorf("%d nodes cordoned; want %d", got, c.want)
			}
			var events []string
			for _, e := range f.takeEvents() {
				if strings.Contains(e, ReasonMaxUnavailableRaised) {
					events = append(events, e)
				}
			}
			if c.event == "" && len(events) > 0 || c.event != "" && (len(events) != 1 || events[0] != c.event) {
				t.Errorf("raise events %q; want %q", events, c.event)
			}
			r := f.state().Rollout
			switch {
			case c.event == "" && r.Raised != nil:
				t.Errorf("raise recorded: %+v", r.Raised)
			case c.event != "" && (r.Raised == nil || r.Raised.MaxUnavailable != c.want || r.Raised.From != 1 || !strings.HasSuffix(c.event, r.Raised.Message)):
				t.Errorf("raise recorded %+v; want to %d from 1, saying what the event says", r.Raised, c.want)
			}
			if r.Estimate == nil || !r.Estimate.Completion.Equal(t0.Add(c.completion)) || r.Estimate.MaxUnavailable != c.want {
				t.Errorf("estimate recorded %+v; want completion at t0+%s at %d nodes at once", r.Estimate, c.completion, c.want)
			}
			if got := f.counter("tokenroll_rollout_max_unavailable_nodes", "", ""); got != float64(c.want) {
				t.Errorf("tokenroll_rollout_max_unavailable_nodes %v; want %d", got, c.want)
			}
			if got := f.counter("tokenroll_rollout_estimated_completion_timestamp_seconds", "", ""); got != float64(t0.Add(c.completion).Unix()) {
				t.Errorf("tokenroll_rollout_estimated_completion_timestamp_seconds %v; want t0+%s", got, c.completion)
			}

			// Nothing more starts, on this leader or the next: the raise
			// holds (no more places), and is not made again.
			f.sync()
			f.lead()
			f.sync()
			if got := f.cordonedNodes(names); got != c.want {
				t.Errorf("after a new leader: %d nodes cordoned; want %d", got, c.want)
			}
			for _, e := range f.takeEvents() {
				if strings.Contains(e, ReasonMaxUnavailableRaised) {
					t.Errorf("raised again: %s", e)
				}
			}
			if got := f.counter("tokenroll_rollout_max_unavailable_nodes", "", ""); got != float64(c.want) {
				t.Errorf("the new leader's tokenroll_rollout_max_unavailable_nodes %v; want %d", got, c.want)
			}

			rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, f.gate.State(), f.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			if err := WriteStatusTable(&b, rep); err != nil {
				t.Fatal(err)
			}
			want := []string{fmt.Sprintf("ESTIMATE  done by %s (in %s) at %s at once: 9 nodes left, 10m0s each as the 1 finished took (as of 0s ago)",
				stamp(t0.Add(c.completion)), c.completion, nodeCount(c.want))}
			if c.completion > c.deadline {
				want = append(want, fmt.Sprintf("WILL MISS the previous issuer's trust deadline %s by %s", stamp(t0.Add(c.deadline)), c.completion-c.deadline))
			} else {
				want = append(want, fmt.Sprintf("%s before the previous issuer's trust deadline", c.deadline-c.completion))
			}
			if c.event != "" {
				want = append(want, fmt.Sprintf("raised to %d nodes at once 0s ago: at 1 node at once", c.want))
			}
			for _, w := range want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("the status table does not say %q:\n%s", w, b.String())
				}
			}
		})
	}
}

// Before any node of the rollout has finished there is nothing measured:
// no estimate, no raise, and status says why.
func TestNoEstimateBeforeANodeFinishes(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(KubeletRestart, "n1", "n2")))
	f.cfg.DeadlineMaxUnavailable = intstr.FromInt32(2)
	f.gate.Set(GateState{Provider: GateOpenShift, Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: oldIssuer, Expires: t0.Add(time.Minute)}}})
	f.sync()
	if got := f.cordonedNodes([]string{"n1", "n2"}); got != 1 {
		t.Errorf("%d nodes cordoned; want 1, as --max-unavailable says", got)
	}
	if r := f.state().Rollout; r.Estimate != nil || r.Raised != nil {
		t.Errorf("estimate %+v, raise %+v recorded; want none", r.Estimate, r.Raised)
	}
	if got := f.counter("tokenroll_rollout_estimated_completion_timestamp_seconds", "", ""); got != 0 {
		t.Errorf("tokenroll_rollout_estimated_completion_timestamp_seconds %v; want 0", got)
	}
	rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, f.gate.State(), f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := WriteStatusTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	if want := "ESTIMATE  none yet: made from the time this rollout's nodes take, once one has finished"; !strings.Contains(b.String(), want) {
		t.Errorf("the status table does not say %q:\n%s", want, b.String())
	}
}

// While the revision gate is closed no node starts, for as long as the API
// servers take: there is no estimate, and the one recorded stays as it was;
// the raise still holds.
func TestNoEstimateWhileTheGateIsClosed(t *testing.T) {
	f, _ := deadlineFixture(t, 40*time.Minute, intstr.FromInt32(5))
	f.sync()
	recorded := f.state().Rollout.Estimate
	f.gate.Set(GateState{Provider: GateOpenShift, Message: "rolling out", TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: oldIssuer, Expires: t0.Add(40 * time.Minute)}}})
	f.clock.Step(20 * time.Minute)
	f.sync()
	if got := f.counter("tokenroll_rollout_estimated_completion_timestamp_seconds", "", ""); got != 0 {
		t.Errorf("tokenroll_rollout_estimated_completion_timestamp_seconds %v with the gate closed; want 0", got)
	}
	if got := f.counter("tokenroll_rollout_max_unavailable_nodes", "", ""); got != 3 {
		t.Errorf("tokenroll_rollout_max_unavailable_nodes %v with the gate closed; want the raise, 3", got)
	}
	if r := f.state().Rollout; r.Estimate == nil || *r.Estimate != *recorded {
		t.Errorf("estimate recorded %+v; want it left as %+v", r.Estimate, recorded)
	}
}

// A pool's deadlineMaxUnavailable raises its maxUnavailable as
// --deadline-max-unavailable raises --max-unavailable: as far as the
// deadline needs, within the policy's ceiling; the flags' ceiling never
// raises a pool, and a policy without one is never raised.
func TestPolicyRaiseToMeetTheTrustDeadline(t *testing.T) {
	one, five := intstr.FromInt32(1), intstr.FromInt32(5)
	cases := []struct {
		name     string
		deadline time.Duration
		flags    intstr.IntOrString
		ceiling  *intstr.IntOrString
		want     int
		event    string
	}{
		// 9 nodes at 10 minutes: 3 at once end in 30 minutes.
		{"as far as needed, within the policy's ceiling", 40 * time.Minute, intstr.IntOrString{}, &five, 3,
			"Normal MaxUnavailableRaised rollout r-test: pool all: at 1 node at once its nodes would be done at 2026-11-27T13:30:00Z, after the previous issuer's trust ends at 2026-11-27T12:40:00Z; " +
				"raised to 3 nodes at once (spec.deadlineMaxUnavailable of RolloutPolicy all allows 5), and they are now expected to be done at 2026-11-27T12:30:00Z"},
		{"the policy's ceiling, not the flags'", 20 * time.Minute, five, func() *intstr.IntOrString { v := intstr.FromString("20%"); return &v }(), 2,
			"Warning MaxUnavailableRaised rollout r-test: pool all: at 1 node at once its nodes would be done at 2026-11-27T13:30:00Z, after the previous issuer's trust ends at 2026-11-27T12:20:00Z; " +
				"raised to 2 nodes at once (spec.deadlineMaxUnavailable of RolloutPolicy all allows 2), and even so they are expected to be done at 2026-11-27T12:50:00Z, after the deadline: " +
				"raise its deadlineMaxUnavailable or expect the pods on the nodes left then to fail to authenticate"},
		{"no ceiling in the policy: never raised, whatever the flags", 20 * time.Minute, five, nil, 1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, names := deadlineFixture(t, c.deadline, c.flags)
			f.leadWithPolicies(defaultPolicy(v1alpha1.RolloutPolicySpec{MaxUnavailable: &one, DeadlineMaxUnavailable: c.ceiling}))
			f.sync()
			if got := f.cordonedNodes(names); got != c.want {
				t.Errorf("%d nodes cordoned; want %d", got, c.want)
			}
			var events []string
			for _, e := range f.takeEvents() {
				if strings.Contains(e, ReasonMaxUnavailableRaised) {
					events = append(events, e)
				}
			}
			if c.event == "" && len(events) > 0 || c.event != "" && (len(events) != 1 || events[0] != c.event) {
				t.Errorf("raise events %q; want %q", events, c.event)
			}
			if r := f.state().Rollout; r.Raised != nil {
				t.Errorf("the flags' raise recorded for a pool: %+v", r.Raised)
			}
			// The raise holds: nothing more starts, and it is not told again.
			f.sync()
			if got := f.cordonedNodes(names); got != c.want {
				t.Errorf("after another sync: %d nodes cordoned; want %d", got, c.want)
			}
			for _, e := range f.takeEvents() {
				if strings.Contains(e, ReasonMaxUnavailableRaised) {
					t.Errorf("raised again: %s", e)
				}
			}
		})
	}
}

// Once the API servers trust no issuer but the one they sign with (the
// trust deadline passed, or there was no window), every pod still holding
// the previous issuer's token fails to authenticate until its node is
// remediated: a rollout planned for that issuer is raised to the ceiling
// at once, with no node measured yet (any estimate ends after a deadline
// that has passed), and only then.
func TestRaiseToTheCeilingOnceTheTrustHasEnded(t *testing.T) {
	ended := GateState{Provider: GateOpenShift, Open: true, TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(-time.Second)}}}
	cases := []struct {
		name    string
		gate    GateState
		trigger string
		ceiling intstr.IntOrString
		want    int
	}{
		{"the previous issuer's trust has ended", ended, TriggerIssuer, intstr.FromInt32(4), 4},
		{"planned for expired tokens too", ended, TriggerStaleTokens + "," + TriggerIssuer, intstr.FromInt32(4), 4},
		{"the previous issuer dropped from the list", GateState{Provider: GateOpenShift, Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}}},
			TriggerIssuer, intstr.FromInt32(4), 4},
		{"no ceiling set", ended, TriggerIssuer, intstr.IntOrString{}, 1},
		{"a rollout a person started", ended, TriggerManual + " (alice)", intstr.FromInt32(4), 1},
		{"planned for expired tokens alone", ended, TriggerStaleTokens, intstr.FromInt32(4), 1},
		{"the previous issuer still trusted, no end known", GateState{Provider: GateOpenShift, Open: true, TrustKnown: true,
			Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer}}}, TriggerIssuer, intstr.FromInt32(4), 1},
		{"the gate cannot tell what is trusted", GateState{Provider: GateOpenShift, Open: true}, TriggerIssuer, intstr.FromInt32(4), 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var names []string
			var objs []runtime.Object
			for i := 1; i <= 6; i++ {
				names = append(names, fmt.Sprintf("n%02d", i))
				objs = append(objs, testNode(names[i-1]))
			}
			r := rollout(KubeletRestart, names...)
			r.Trigger = c.trigger
			f := newFixture(t, append(objs, rolloutConfigMap(r))...)
			f.cfg.MaxUnavailable, f.cfg.DeadlineMaxUnavailable = intstr.FromInt32(1), c.ceiling
			f.gate.Set(c.gate)
			f.sync()
			if got := f.cordonedNodes(names); got != c.want {
				t.Errorf("%d nodes cordoned; want %d", got, c.want)
			}
			var events []string
			for _, e := range f.takeEvents() {
				if strings.Contains(e, ReasonMaxUnavailableRaised) {
					events = append(events, e)
				}
			}
			raised := f.state().Rollout.Raised
			if c.want == 1 {
				if len(events) > 0 || raised != nil {
					t.Errorf("raised: %q, %+v", events, raised)
				}
				return
			}
			want := "Normal MaxUnavailableRaised rollout r-test: the API servers no longer trust the previous issuer, so the pods still holding its tokens fail to authenticate until their node is remediated; " +
				"raised from 1 node to 4 nodes at once (--deadline-max-unavailable allows 4)"
			if len(events) != 1 || events[0] != want {
				t.Errorf("raise events %q; want %q", events, want)
			}
			if raised == nil || raised.MaxUnavailable != 4 || raised.From != 1 || raised.Ceiling != 4 {
				t.Errorf("raise recorded %+v; want to 4 from 1", raised)
			}
		})
	}
}
