package coordinator

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestEstimateCompletion(t *testing.T) {
	m := time.Minute
	deadline := t0.Add(time.Hour)
	cases := []struct {
		name string
		in   EstimateInput
		// want is the completion after t0 (-1: no estimate).
		want    time.Duration
		perNode time.Duration
		misses  bool
	}{
		{name: "no node finished: no estimate, however many are in progress",
			in: EstimateInput{InProgress: []time.Time{t0.Add(-30 * m)}, Pending: 10, MaxUnavailable: 1}, want: -1},
		{name: "nothing left: now",
			in: EstimateInput{Finished: []time.Duration{5 * m}, MaxUnavailable: 1}, want: 0, perNode: 5 * m},
		{name: "one at a time: the median per node, in series",
			in: EstimateInput{Finished: []time.Duration{4 * m, 30 * m, 5 * m}, Pending: 3, MaxUnavailable: 1}, want: 15 * m, perNode: 5 * m},
		{name: "the upper median: of two, the slower",
			in: EstimateInput{Finished: []time.Duration{6 * m, 4 * m}, Pending: 3, MaxUnavailable: 1}, want: 18 * m, perNode: 6 * m},
		{name: "two at a time halve it, rounding up to whole waves",
			in: EstimateInput{Finished: []time.Duration{5 * m}, Pending: 3, MaxUnavailable: 2}, want: 10 * m, perNode: 5 * m},
		{name: "more places than nodes: one wave",
			in: EstimateInput{Finished: []time.Duration{5 * m}, Pending: 3, MaxUnavailable: 10}, want: 5 * m, perNode: 5 * m},
		{name: "a node in progress ends a mean after its cordon, and its place goes to the next",
			in: EstimateInput{Finished: []time.Duration{5 * m}, InProgress: []time.Time{t0.Add(-2 * m)}, Pending: 1, MaxUnavailable: 1}, want: 8 * m, perNode: 5 * m},
		{name: "a node that overran is taken to end now",
			in: EstimateInput{Finished: []time.Duration{5 * m}, InProgress: []time.Time{t0.Add(-20 * m)}, Pending: 1, MaxUnavailable: 1}, want: 5 * m, perNode: 5 * m},
		{name: "the settle is paid before each node that waited for a place",
			in: EstimateInput{Finished: []time.Duration{5 * m}, Pending: 3, MaxUnavailable: 1, Settle: m}, want: 17 * m, perNode: 5 * m},
		{name: "more in progress than places (others took some): pending nodes wait for enough to end",
			in:   EstimateInput{Finished: []time.Duration{5 * m}, InProgress: []time.Time{t0.Add(-4 * m), t0.Add(-3 * m), t0.Add(-2 * m)}, Pending: 1, MaxUnavailable: 2},
			want: 7 * m, perNode: 5 * m},
		{name: "before the deadline",
			in: EstimateInput{Finished: []time.Duration{10 * m}, Pending: 6, MaxUnavailable: 1, Deadline: deadline}, want: 60 * m, perNode: 10 * m},
		{name: "after the deadline",
			in: EstimateInput{Finished: []time.Duration{10 * m}, Pending: 7, MaxUnavailable: 1, Deadline: deadline}, want: 70 * m, perNode: 10 * m, misses: true},
		{name: "no deadline is never missed",
			in: EstimateInput{Finished: []time.Duration{10 * m}, Pending: 700, MaxUnavailable: 1}, want: 7000 * m, perNode: 10 * m},
		{name: "auto's apps watch is paid once, after the last node's own remediation, not per node",
			in: EstimateInput{Finished: []time.Duration{m}, Pending: 3, MaxUnavailable: 1, Watch: 3 * m}, want: 6 * m, perNode: m},
		{name: "a watch going on ends a watch after it began",
			in: EstimateInput{Finished: []time.Duration{m}, Watching: []time.Time{t0.Add(-m)}, MaxUnavailable: 1, Watch: 3 * m}, want: 2 * m, perNode: m},
		{name: "nothing left but watches that have overrun: now",
			in: EstimateInput{Finished: []time.Duration{m}, Watching: []time.Time{t0.Add(-10 * m)}, MaxUnavailable: 1, Watch: 3 * m}, want: 0, perNode: m},
		{name: "nodes auto restarts without a cordon go --max-kubelet-restarts at a time, beside max-unavailable's",
			in: EstimateInput{Finished: []time.Duration{m}, Pending: 2, MaxUnavailable: 1, Uncordoned: 5, UncordonedAtOnce: 2}, want: 3 * m, perNode: m},
		{name: "an uncordoned restart in progress holds one of their places, not max-unavailable's",
			in: EstimateInput{Finished: []time.Duration{m}, Pending: 1, MaxUnavailable: 1, Uncordoned: 2, UncordonedAtOnce: 2,
				UncordonedInProgress: []time.Time{t0.Add(-30 * time.Second)}}, want: m + 30*time.Second, perNode: m},
		{name: "the cordoned nodes may end last",
			in: EstimateInput{Finished: []time.Duration{m}, Pending: 4, MaxUnavailable: 1, Uncordoned: 5, UncordonedAtOnce: 5}, want: 4 * m, perNode: m},
		{name: "the apps watch once after the uncordoned nodes too",
			in: EstimateInput{Finished: []time.Duration{m}, MaxUnavailable: 1, Uncordoned: 3, UncordonedAtOnce: 100, Watch: 3 * m}, want: 4 * m, perNode: m},
		{name: "before a kubelet restart is verified, the canary goes alone, then the rest at once",
			in: EstimateInput{Finished: []time.Duration{m}, MaxUnavailable: 1, Uncordoned: 3, UncordonedAtOnce: 100, CanaryPending: true}, want: 2 * m, perNode: m},
		{name: "a canary restarting holds the others until it ends",
			in: EstimateInput{Finished: []time.Duration{m}, MaxUnavailable: 1, Uncordoned: 2, UncordonedAtOnce: 100, CanaryPending: true,
				UncordonedInProgress: []time.Time{t0.Add(-30 * time.Second)}}, want: m + 30*time.Second, perNode: m},
		{name: "a negative measure (a clock stepped back) counts as nothing",
			in: EstimateInput{Finished: []time.Duration{-10 * m, -10 * m, 10 * m}, Pending: 1, MaxUnavailable: 1}, want: 0, perNode: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.in.Now = t0
			e := EstimateCompletion(c.in)
			if c.want < 0 {
				if e.Known() || e.MissesDeadline() {
					t.Errorf("estimate %+v; want none", e)
				}
				return
			}
			if got := e.Completion.Sub(t0); !e.Known() || got != c.want {
				t.Errorf("completion in %s (known %v); want %s", got, e.Known(), c.want)
			}
			if e.PerNode != c.perNode || e.MissesDeadline() != c.misses {
				t.Errorf("per node %s, misses the deadline %v; want %s, %v", e.PerNode, e.MissesDeadline(), c.perNode, c.misses)
			}
			if e.Measured != len(c.in.Finished) || e.Pending != c.in.Pending+c.in.Uncordoned || e.InProgress != len(c.in.InProgress)+len(c.in.UncordonedInProgress) || e.MaxUnavailable != c.in.MaxUnavailable {
				t.Errorf("estimate %+v does not carry its inputs", e)
			}
		})
	}
}

// simulate is the model RolloutEnd answers, node by node the slow way:
// each pending node waits until fewer nodes than places hold one, the
// first to end making room.
func simulate(now time.Time, busy []time.Time, pending []time.Duration, places int, settle time.Duration) time.Time {
	busy = slices.Clone(busy)
	end := now
	for _, b := range busy {
		end = later(end, b)
	}
	for _, d := range pending {
		start := now
		for len(busy) >= places {
			first := slices.IndexFunc(busy, func(t time.Time) bool {
				return !slices.ContainsFunc(busy, func(u time.Time) bool { return u.Before(t) })
			})
			start = later(start, busy[first].Add(settle))
			busy = slices.Delete(busy, first, first+1)
		}
		busy = append(busy, start.Add(d))
		end = later(end, start.Add(d))
	}
	return end
}

func TestRolloutEndMatchesTheSimulation(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		places := 1 + r.IntN(6)
		var busy []time.Time
		for range r.IntN(9) {
			busy = append(busy, t0.Add(time.Duration(r.IntN(600))*time.Second))
		}
		// Half the cases give every node the same time, as the
		// coordinator does; the others mix them, as preflight does.
		per := time.Duration(1+r.IntN(300)) * time.Second
		pending := make([]time.Duration, r.IntN(20))
		for j := range pending {
			pending[j] = per
			if i%2 == 1 {
				pending[j] = time.Duration(1+r.IntN(600)) * time.Second
			}
		}
		settle := time.Duration(r.IntN(3)) * 10 * time.Second
		got, ok := RolloutEnd(t0, busy, pending, places, settle)
		if want := simulate(t0, busy, pending, places, settle); !ok || !got.Equal(want) {
			t.Fatalf("case %d: %d places, busy until %v, pending %v, settle %s: RolloutEnd %s (ok %v); the simulation says %s",
				i, places, busy, pending, settle, got.Sub(t0), ok, want.Sub(t0))
		}
	}
}

func TestRolloutEnd(t *testing.T) {
	m := time.Minute
	for _, c := range []struct {
		name    string
		busy    []time.Duration // from t0
		pending []time.Duration
		places  int
		settle  time.Duration
		want    time.Duration
		ok      bool
	}{
		{"nothing to do", nil, nil, 0, 0, 0, true},
		{"one at a time", nil, []time.Duration{m, m, m}, 1, 0, 3 * m, true},
		{"two places, three nodes: two waves", nil, []time.Duration{m, m, m}, 2, 0, 2 * m, true},
		{"more places than nodes", nil, []time.Duration{m, m}, 10, 0, m, true},
		{"settle after every node but the last of a place", nil, []time.Duration{m, m, m}, 1, 30 * time.Second, 3*m + m, true},
		// A reboot and three kubelet restarts in two places: the restarts
		// share the other place while the reboot runs.
		{"mixed", nil, []time.Duration{10 * m, m, m, m}, 2, 0, 10 * m, true},
		{"mixed, the long one last", nil, []time.Duration{m, m, m, 10 * m}, 2, 0, 11 * m, true},
		{"a node in progress holds its place", []time.Duration{2 * m}, []time.Duration{m}, 1, 0, 3 * m, true},
		{"three in progress, two places: the first end frees none", []time.Duration{m, 2 * m, 3 * m}, []time.Duration{m}, 2, 0, 3 * m, true},
		{"only nodes in progress, no place", []time.Duration{m}, nil, 0, 0, m, true},
		{"no place", nil, []time.Duration{m}, 0, 0, 0, false},
	} {
		var busy []time.Time
		for _, b := range c.busy {
			busy = append(busy, t0.Add(b))
		}
		got, ok := RolloutEnd(t0, busy, c.pending, c.places, c.settle)
		if ok != c.ok || (ok && got.Sub(t0) != c.want) {
			t.Errorf("%s: got %s, %v; want %s, %v", c.name, got.Sub(t0), ok, c.want, c.ok)
		}
	}
}

func TestNeededMaxUnavailable(t *testing.T) {
	m := time.Minute
	// 20 nodes left at 10 minutes each: 200 minutes one at a time.
	in := EstimateInput{Now: t0, Finished: []time.Duration{10 * m}, Pending: 20, MaxUnavailable: 1}
	cases := []struct {
		name     string
		base     int
		deadline time.Duration
		ceiling  int
		want     int
	}{
		{"no deadline: the base", 1, 0, 10, 1},
		{"the base meets it", 1, 200 * m, 10, 1},
		{"the fewest that meet it", 1, 100 * m, 10, 2},
		{"the fewest that meet it, not the ceiling", 1, 45 * m, 10, 5},
		{"never above the ceiling, even when it is not enough", 1, 15 * m, 4, 4},
		{"no ceiling above the base: the base", 2, 15 * m, 2, 2},
		{"a ceiling below the base: the base", 3, 15 * m, 2, 3},
		{"the raise starts from the base", 3, 60 * m, 10, 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := in
			in.MaxUnavailable = c.base
			if c.deadline > 0 {
				in.Deadline = t0.Add(c.deadline)
			}
			if got := NeededMaxUnavailable(in, c.ceiling); got != c.want {
				t.Errorf("NeededMaxUnavailable = %d; want %d", got, c.want)
			}
		})
	}
	// Before any node has finished nothing is known: the base.
	none := EstimateInput{Now: t0, Pending: 20, MaxUnavailable: 1, Deadline: t0.Add(time.Minute)}
	if got := NeededMaxUnavailable(none, 10); got != 1 {
		t.Errorf("with nothing measured NeededMaxUnavailable = %d; want the base, 1", got)
	}
}

func TestTrustDeadline(t *testing.T) {
	h := time.Hour
	cases := []struct {
		name string
		g    GateState
		want time.Time
	}{
		{"the earliest of those still ahead", GateState{TrustKnown: true, Trusted: []TrustedIssuer{
			{Name: "a", Expires: t0.Add(5 * h)}, {Name: "b", Expires: t0.Add(2 * h)}, {Name: "c"}, {Name: "d", Expires: t0.Add(-h)}}}, t0.Add(2 * h)},
		{"only past ones: none", GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: "d", Expires: t0.Add(-h)}}}, time.Time{}},
		{"trusted with no end: none", GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: "c"}}}, time.Time{}},
		{"the gate cannot tell: none", GateState{Trusted: []TrustedIssuer{{Name: "a", Expires: t0.Add(h)}}}, time.Time{}},
	}
	for _, c := range cases {
		if got := TrustDeadline(c.g, t0); !got.Equal(c.want) {
			t.Errorf("%s: %s; want %s", c.name, got, c.want)
		}
	}
}

func TestEstimateMoved(t *testing.T) {
	m := time.Minute
	at := func(completion time.Duration) *Estimate {
		return &Estimate{At: t0, Completion: t0.Add(completion), MaxUnavailable: 1}
	}
	old := at(100 * m)
	cases := []struct {
		name     string
		old, cur *Estimate
		want     bool
	}{
		{"the first", nil, at(10 * m), true},
		{"the same", old, at(100 * m), false},
		{"within a minute and a tenth of the time left", old, at(110 * m), false},
		{"beyond it, later", old, at(112 * m), true},
		{"beyond it, sooner", old, at(88 * m), true},
		{"close to the end, a minute is enough", at(3 * m), at(5 * m), true},
		{"the nodes at once changed", old, &Estimate{At: t0, Completion: t0.Add(100 * m), MaxUnavailable: 2}, true},
		{"a deadline appeared", old, &Estimate{At: t0, Completion: t0.Add(100 * m), MaxUnavailable: 1, Deadline: t0.Add(200 * m)}, true},
		{"it now misses the deadline", &Estimate{At: t0, Completion: t0.Add(100 * m), MaxUnavailable: 1, Deadline: t0.Add(101 * m)},
			&Estimate{At: t0, Completion: t0.Add(102 * m), MaxUnavailable: 1, Deadline: t0.Add(101 * m)}, true},
	}
	for _, c := range cases {
		if got := estimateMoved(c.old, c.cur); got != c.want {
			t.Errorf("%s: moved %v; want %v", c.name, got, c.want)
		}
	}
}

// The estimate at the scale tokenroll is built for: 5,000 nodes left, some
// in progress, and the search for the nodes at once a deadline needs.
func BenchmarkEstimateCompletion(b *testing.B) {
	in := EstimateInput{Now: t0, Finished: make([]time.Duration, 100), Pending: 4900, MaxUnavailable: 50, Settle: time.Second}
	for i := range in.Finished {
		in.Finished[i] = time.Duration(30+i%60) * time.Second
	}
	for i := range 50 {
		in.InProgress = append(in.InProgress, t0.Add(-time.Duration(i)*time.Second))
	}
	b.Run("estimate", func(b *testing.B) {
		for b.Loop() {
			EstimateCompletion(in)
		}
	})
	b.Run("needed", func(b *testing.B) {
		in := in
		in.Deadline = t0.Add(20 * time.Minute)
		for b.Loop() {
			NeededMaxUnavailable(in, 500)
		}
	})
}
