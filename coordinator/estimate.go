package coordinator

import (
	"container/heap"
	"slices"
	"time"
)

// EstimateInput is what a rollout's completion estimate depends on;
// EstimateCompletion is a pure function of it.
type EstimateInput struct {
	Now time.Time
	// Finished are the times the nodes of this rollout that have finished
	// took, from cordon to done (or to unresolved): what a node costs
	// here, with this strategy, these workloads and this cluster.
	Finished []time.Duration
	// InProgress are when the nodes in progress were cordoned.
	InProgress []time.Time
	// Pending counts the nodes left to start.
	Pending int
	// MaxUnavailable is how many nodes may be in progress at once.
	MaxUnavailable int
	// Settle is the pause after a node before the next takes its place.
	Settle time.Duration
	// Deadline is when the previous issuer stops being trusted (zero:
	// none known).
	Deadline time.Time
	// Watch is how long a node's apps are watched once its own
	// remediation is verified (auto), and Watching when the watches going
	// on began. The node is out of the disruption budget meanwhile and the
	// next starts, so the watches overlap: Finished counts a node's time
	// until its watch began, and the rollout ends a Watch after the last
	// node's remediation, not a Watch later per node.
	Watch    time.Duration
	Watching []time.Time
	// Uncordoned counts the nodes left that auto starts without a cordon
	// and outside MaxUnavailable, once no previous issuer is trusted, and
	// UncordonedInProgress are when those restarting now started; they go
	// UncordonedAtOnce at a time (--max-kubelet-restarts), on their own.
	Uncordoned           int
	UncordonedInProgress []time.Time
	UncordonedAtOnce     int
	// CanaryPending: no kubelet restart of the rollout is verified yet, so
	// the first uncordoned node (the one restarting, or else the next)
	// goes alone, and the others start once it is verified.
	CanaryPending bool
}

// Estimate is when a rollout is expected to end, and what that rests on.
type Estimate struct {
	// At is when it was made.
	At time.Time `json:"at"`
	// Completion is when the last node is expected done; zero when there
	// is no estimate yet (before a node has finished: a guess of what a
	// node costs would decide concurrency on nothing measured).
	Completion time.Time `json:"completion,omitzero"`
	// PerNode is the median time a node took over Measured nodes (the
	// upper median: with two, the slower), as tokenroll preflight takes it.
	PerNode  time.Duration `json:"perNode,omitempty"`
	Measured int           `json:"measured"`
	// InProgress and Pending are the nodes left.
	InProgress int `json:"inProgress"`
	Pending    int `json:"pending"`
	// MaxUnavailable is the nodes at once the estimate assumes.
	MaxUnavailable int `json:"maxUnavailable"`
	// Deadline is when the previous issuer's trust ends (zero: none known).
	Deadline time.Time `json:"deadline,omitzero"`
}

// Known reports whether there is an estimate.
func (e Estimate) Known() bool { return !e.Completion.IsZero() }

// MissesDeadline reports whether the rollout is expected to end after the
// previous issuer stops being trusted.
func (e Estimate) MissesDeadline() bool {
	return e.Known() && !e.Deadline.IsZero() && e.Completion.After(e.Deadline)
}

// EstimateCompletion estimates when the last node is done. Every node left
// is taken to cost the median measured so far (one node held up by a
// PodDisruptionBudget does not make every other node look slow); a node in
// progress ends that long after its cordon (now, if it has overrun), and
// each pending node takes the first of MaxUnavailable places to free up,
// Settle after the node before it there (RolloutEnd); the nodes auto
// restarts without a cordon take UncordonedAtOnce places of their own. Nothing else is modelled: nodes out of service for
// other reasons, a gate that closes, waits for a person.
func EstimateCompletion(in EstimateInput) Estimate {
	e := Estimate{At: in.Now, Measured: len(in.Finished), InProgress: len(in.InProgress) + len(in.UncordonedInProgress), Pending: in.Pending + in.Uncordoned,
		MaxUnavailable: in.MaxUnavailable, Deadline: in.Deadline}
	if len(in.Finished) == 0 || in.MaxUnavailable < 1 {
		return e
	}
	took := make([]time.Duration, len(in.Finished))
	for i, d := range in.Finished {
		took[i] = max(d, 0)
	}
	e.PerNode = UpperMedian(took)
	busy, pending := nodesLeft(in.Now, in.InProgress, in.Pending, e.PerNode)
	end, _ := RolloutEnd(in.Now, busy, pending, in.MaxUnavailable, in.Settle)
	if in.Uncordoned+len(in.UncordonedInProgress) > 0 {
		ubusy, upending := nodesLeft(in.Now, in.UncordonedInProgress, in.Uncordoned, e.PerNode)
		end = later(end, UncordonedEnd(in.Now, ubusy, upending, in.UncordonedAtOnce, in.CanaryPending))
	}
	if in.Watch > 0 {
		if len(busy)+len(pending)+in.Uncordoned+len(in.UncordonedInProgress) > 0 {
			end = end.Add(in.Watch)
		}
		for _, s := range in.Watching {
			end = later(end, s.Add(in.Watch))
		}
	}
	e.Completion = end
	return e
}

// UncordonedEnd is when the last of the nodes auto restarts without a
// cordon is done: the schedule the coordinator's estimate and tokenroll
// preflight both take. busy are when those restarting end; pending are
// the times of those left. With canaryPending (no kubelet restart of the
// rollout verified yet) the first goes alone, the one restarting or else
// the next, and the others start once it ends; then atOnce at a time.
func UncordonedEnd(now time.Time, busy []time.Time, pending []time.Duration, atOnce int, canaryPending bool) time.Time {
	from := now
	switch {
	case canaryPending && len(busy) > 0:
		from = later(from, slices.MinFunc(busy, time.Time.Compare))
		busy = nil
	case canaryPending && len(pending) > 0:
		from = from.Add(pending[0])
		pending = pending[1:]
	}
	end, _ := RolloutEnd(from, busy, pending, max(atOnce, 1), 0)
	return end
}

// nodesLeft is RolloutEnd's busy and pending for the nodes started at
// started and pending more, each taking perNode: one in progress ends
// perNode after its start (now, if it has overrun).
func nodesLeft(now time.Time, started []time.Time, pending int, perNode time.Duration) ([]time.Time, []time.Duration) {
	busy := make([]time.Time, len(started))
	for i, s := range started {
		busy[i] = later(now, s.Add(perNode))
	}
	left := make([]time.Duration, pending)
	for i := range left {
		left[i] = perNode
	}
	return busy, left
}

// UpperMedian is the median of d (with an even count, the slower of the
// two middle values), sorting d in place; 0 for none. The coordinator's
// estimate and tokenroll preflight both take a node's cost from it.
func UpperMedian(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// RolloutEnd is when the last node of a rollout is done: the one schedule
// that the coordinator's completion estimate and tokenroll preflight both
// take. busy are when the nodes in progress end; each holds a place until
// then. pending are the times the nodes left take, in the order they
// start (the plan's), each going to the first of places that frees up, a
// settle after the node before it there; a place no node holds is free
// now. With more nodes in progress than places, a place frees up only
// when enough of them have ended: the first ends free none. With places
// < 1 no pending node can start: ok is false.
func RolloutEnd(now time.Time, busy []time.Time, pending []time.Duration, places int, settle time.Duration) (end time.Time, ok bool) {
	end = now
	ends := slices.Clone(busy)
	for _, e := range ends {
		end = later(end, e)
	}
	if len(pending) == 0 {
		return end, true
	}
	if places < 1 {
		return time.Time{}, false
	}
	slices.SortFunc(ends, func(a, b time.Time) int { return a.Compare(b) })
	if len(ends) > places {
		ends = ends[len(ends)-places:]
	}
	free := make(freeAt, 0, min(places, len(ends)+len(pending)))
	for range min(places-len(ends), len(pending)) {
		free = append(free, now)
	}
	for _, e := range ends {
		free = append(free, e.Add(settle))
	}
	slices.SortFunc(free, func(a, b time.Time) int { return a.Compare(b) })
	per := pending[0]
	if !free[len(free)-1].After(free[0].Add(per+settle)) && !slices.ContainsFunc(pending, func(d time.Duration) bool { return d != per }) {
		// Every node costing the same, and every place free before the
		// first frees up again (the coordinator's case: a node in progress
		// ends within a node's time), the places free up in the same order
		// round after round: pending node k goes to the k-th place mod
		// places, with no simulation.
		for i, f := range free {
			n := (len(pending) - i + len(free) - 1) / len(free) // nodes this place takes
			end = later(end, f.Add(time.Duration(n)*per+time.Duration(n-1)*settle))
		}
		return end, true
	}
	heap.Init(&free)
	for _, d := range pending {
		// The place free first takes the next node.
		done := free[0].Add(d)
		end = later(end, done)
		free[0] = done.Add(settle)
		heap.Fix(&free, 0)
	}
	return end, true
}

// freeAt are when places free up, a min-heap.
type freeAt []time.Time

func (f freeAt) Len() int           { return len(f) }
func (f freeAt) Less(i, j int) bool { return f[i].Before(f[j]) }
func (f freeAt) Swap(i, j int)      { f[i], f[j] = f[j], f[i] }
func (f *freeAt) Push(x any)        { *f = append(*f, x.(time.Time)) }
func (f *freeAt) Pop() any {
	old := *f
	x := old[len(old)-1]
	*f = old[:len(old)-1]
	return x
}

// NeededMaxUnavailable is the fewest nodes at once, from in.MaxUnavailable
// up to ceiling, with which the rollout is expected to end by the
// deadline; ceiling when even that is not enough, in.MaxUnavailable when
// there is no estimate or no deadline. More nodes at once never end a
// rollout later, so the search halves the range.
func NeededMaxUnavailable(in EstimateInput, ceiling int) int {
	base := in.MaxUnavailable
	if ceiling <= base || in.Deadline.IsZero() || !EstimateCompletion(in).MissesDeadline() {
		return base
	}
	misses := func(n int) bool {
		in.MaxUnavailable = n
		return EstimateCompletion(in).MissesDeadline()
	}
	if misses(ceiling) {
		return ceiling
	}
	lo, hi := base, ceiling // misses(lo), !misses(hi)
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if misses(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// TrustDeadline is when the first previous issuer still trusted at now
// stops being trusted (zero: none, or the gate cannot tell). A deadline
// already past is none: there is nothing left to meet.
func TrustDeadline(g GateState, now time.Time) time.Time {
	var d time.Time
	if !g.TrustKnown {
		return d
	}
	for _, ti := range g.Trusted {
		if ti.Expires.After(now) {
			d = minTime(d, ti.Expires)
		}
	}
	return d
}

// estimateMoved reports whether a new estimate differs enough from the one
// recorded to record it again: it appears or goes, its basis (nodes at
// once, deadline, whether it misses it) changes, or its completion moves by
// more than a minute and a tenth of the time left. Small moves, which
// every finished node makes, are not worth a write.
func estimateMoved(old, cur *Estimate) bool {
	switch {
	case old == nil || cur == nil:
		return (old == nil) != (cur == nil)
	case old.Known() != cur.Known() || old.MaxUnavailable != cur.MaxUnavailable || !old.Deadline.Equal(cur.Deadline) ||
		old.MissesDeadline() != cur.MissesDeadline():
		return true
	}
	left := max(old.Completion.Sub(cur.At), 0)
	diff := cur.Completion.Sub(old.Completion)
	if diff < 0 {
		diff = -diff
	}
	return diff > time.Minute+left/10
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
