package coordinator

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/tokenroll/tokenroll/internal/apiretry"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
)

// The rollout record is one TokenRollout per rollout. A person (or the
// tokenroll CLI) writes its spec: a TokenRollout without a status is a start
// request, spec.state steers it, spec.retry asks for nodes to be planned
// again. The coordinator alone writes its status, through the status
// subresource, and creates the TokenRollouts of the rollouts it plans by
// itself. StateOf projects them onto the State the coordinator decides on;
// Store.update writes a changed State back as the status writes (and
// creations) it takes.

// Annotations the CLI sets on a TokenRollout for people: who asked for its
// last spec change, and when.
const (
	AnnotationRequestedBy = protocol.Prefix + "requested-by"
	AnnotationRequestedAt = protocol.Prefix + "requested-at"
)

// DefaultHistory is how many finished TokenRollouts the coordinator keeps
// by default.
const DefaultHistory = 10

// phaseNames maps the coordinator's phases to the API's.
var phaseNames = map[RolloutPhase]v1alpha1.RolloutPhase{
	RolloutRunning: v1alpha1.PhaseRunning, RolloutPaused: v1alpha1.PhasePaused, RolloutHalted: v1alpha1.PhaseHalted,
	RolloutCancelled: v1alpha1.PhaseCancelled, RolloutDone: v1alpha1.PhaseComplete,
}

// APIPhase is p as a TokenRollout's status.phase says it.
func APIPhase(p RolloutPhase) v1alpha1.RolloutPhase { return phaseNames[p] }

func phaseOf(p v1alpha1.RolloutPhase) RolloutPhase {
	for k, v := range phaseNames {
		if v == p {
			return k
		}
	}
	return ""
}

// takenUp reports whether the coordinator has taken o up.
func takenUp(o *v1alpha1.TokenRollout) bool {
	return phaseOf(o.Status.Phase) != ""
}

// sortRecords orders TokenRollouts oldest first: by creation, then name
// (the names the coordinator and the CLI give sort by time too).
func sortRecords(items []*v1alpha1.TokenRollout) {
	slices.SortStableFunc(items, func(a, b *v1alpha1.TokenRollout) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name))
	})
}

// StateOf projects TokenRollouts onto the State: the newest started one is
// the rollout, the one before it the last; the oldest not started and not
// created paused is the start request; spec.state and spec.resumeTime give
// the steering, spec.retry the retries not yet applied.
func StateOf(items []*v1alpha1.TokenRollout) State {
	items = slices.Clone(items)
	sortRecords(items)
	var st State
	for _, o := range items {
		for _, rq := range o.Spec.Retry {
			if o.Status.RetriedUntil == nil || rq.RequestTime.After(o.Status.RetriedUntil.Time) {
				st.Retry = append(st.Retry, RetryRequest{Rollout: o.Name, Node: rq.Node, RequestedAt: rq.RequestTime.UTC(), RequestedBy: rq.RequestedBy})
			}
		}
		if !takenUp(o) {
			if st.Start == nil && cmp.Or(o.Spec.State, v1alpha1.StateRunning) == v1alpha1.StateRunning {
				st.Start = startRequestOf(o)
				st.Waiting = waitOf(o.Status.Waiting)
			}
			continue
		}
		st.Last, st.Rollout = st.Rollout, rolloutOf(o)
		st.Steer = steerOf(o, st.Rollout.Phase)
	}
	if r := st.Active(); r != nil {
		for _, o := range items {
			if o.Name == r.ID {
				st.Waiting = waitOf(o.Status.Waiting)
			}
		}
	}
	return st
}

func startRequestOf(o *v1alpha1.TokenRollout) *StartRequest {
	req := &StartRequest{Name: o.Name, Strategy: protocol.Strategy(o.Spec.Strategy), DryRun: o.Spec.DryRun, Nodes: o.Spec.NodeNames, Policy: o.Spec.PolicyName,
		RequestedAt: o.CreationTimestamp.UTC(), RequestedBy: o.Annotations[AnnotationRequestedBy]}
	if o.Spec.NodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(o.Spec.NodeSelector)
		if err != nil {
			req.Invalid = err.Error()
		} else {
			req.Selector = sel.String()
		}
	}
	return req
}

// steerOf is the steering o's spec asks of a rollout in phase p not over: a
// pause, resume or cancel whose state differs from the phase, or any spec
// change not yet observed (a halted rollout resumes only on one).
func steerOf(o *v1alpha1.TokenRollout, p RolloutPhase) *SteerRequest {
	verb := map[v1alpha1.DesiredState]Verb{v1alpha1.StatePaused: VerbPause, v1alpha1.StateRunning: VerbResume,
		v1alpha1.StateCancelled: VerbCancel}[cmp.Or(o.Spec.State, v1alpha1.StateRunning)]
	if p.Final() {
		// Over: the schema refuses a change of its state, and a retry
		// added to its spec steers nothing.
		return nil
	}
	pending := o.Generation > o.Status.ObservedGeneration
	differs := (verb == VerbPause && p == RolloutRunning) || (verb == VerbResume && p == RolloutPaused) || (verb == VerbCancel && !p.Final())
	if !pending && !differs {
		return nil
	}
	req := &SteerRequest{Verb: verb, Rollout: o.Name, RequestedBy: o.Annotations[AnnotationRequestedBy], Generation: o.Generation}
	if at, err := time.Parse(time.RFC3339, o.Annotations[AnnotationRequestedAt]); err == nil {
		req.RequestedAt = at.UTC()
	}
	return req
}

func rolloutOf(o *v1alpha1.TokenRollout) *Rollout {
	s := o.Status
	r := &Rollout{ID: o.Name, Trigger: s.Trigger, Strategy: protocol.Strategy(s.Strategy), Phase: phaseOf(s.Phase), Issuer: s.Issuer, Policy: o.Spec.PolicyName,
		DryRun: o.Spec.DryRun || s.DryRunBy != "", DryRunBy: s.DryRunBy, Message: s.Message, HaltNode: s.HaltedNode, Steered: s.Steered, Apps: s.Apps,
		CreatedAt: timeOf(s.StartTime), UpdatedAt: timeOf(s.UpdateTime), FinishedAt: timeOf(s.CompletionTime)}
	if r.DryRun && r.DryRunBy == "" {
		// Recorded before the status said what made it one.
		r.DryRunBy = v1alpha1.DryRunByRequest
	}
	if c := meta.FindStatusCondition(s.Conditions, v1alpha1.ConditionHalted); c != nil && c.Status == metav1.ConditionTrue {
		r.HaltReason = c.Reason
	}
	for _, n := range s.Nodes {
		r.Nodes = append(r.Nodes, PlannedNode{Name: n.Name, Strategy: protocol.Strategy(cmp.Or(n.Strategy, s.Strategy)), Reason: n.Message,
			Deadline: timeOf(n.Deadline), Would: n.Would})
	}
	if e := s.Estimate; e != nil {
		r.Estimate = &Estimate{At: e.Time.UTC(), Completion: timeOf(e.Completion), Measured: int(e.Measured), InProgress: int(e.InProgress),
			Pending: int(e.Pending), MaxUnavailable: int(e.MaxUnavailable), Deadline: timeOf(e.Deadline)}
		if e.PerNode != nil {
			r.Estimate.PerNode = e.PerNode.Duration
		}
	}
	if x := s.Raised; x != nil {
		r.Raised = &Raise{MaxUnavailable: int(x.MaxUnavailable), From: int(x.From), Ceiling: int(x.Ceiling), At: x.Time.UTC(), Message: x.Message}
	}
	return r
}

func waitOf(w *v1alpha1.RolloutWait) *Wait {
	if w == nil {
		return nil
	}
	return &Wait{Reason: w.Reason, Message: w.Message, Since: w.Since.UTC()}
}

func timeOf(t *metav1.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func apiTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	return &metav1.Time{Time: t}
}

// setStatus writes r into status, keeping what the coordinator records
// besides (the nodes' steps, the summary, the conditions' transition times).
func setStatus(status *v1alpha1.TokenRolloutStatus, r *Rollout, now time.Time) {
	steps := map[string]v1alpha1.NodeResult{}
	for _, n := range status.Nodes {
		steps[n.Name] = n
	}
	status.Phase, status.Strategy, status.Trigger, status.Issuer = APIPhase(r.Phase), v1alpha1.Strategy(r.Strategy), r.Trigger, r.Issuer
	status.StartTime, status.UpdateTime, status.CompletionTime = apiTime(r.CreatedAt), apiTime(r.UpdatedAt), apiTime(r.FinishedAt)
	status.Message, status.HaltedNode, status.Steered, status.Apps = r.Message, r.HaltNode, r.Steered, r.Apps
	status.DryRunBy = ""
	if r.DryRun {
		status.DryRunBy = cmp.Or(r.DryRunBy, v1alpha1.DryRunByRequest)
	}
	status.Nodes = nil
	for _, pn := range r.Nodes {
		n := v1alpha1.NodeResult{Name: pn.Name, Step: "pending", Strategy: v1alpha1.Strategy(pn.Strategy), Message: pn.Reason, Would: pn.Would, Deadline: apiTime(pn.Deadline)}
		if r.DryRun {
			n.Step = v1alpha1.NodeStep(protocol.StepDryRun)
		}
		if old, ok := steps[pn.Name]; ok {
			n.Step, n.Reason, n.Action, n.LastTransitionTime = old.Step, old.Reason, old.Action, old.LastTransitionTime
			n.Policy, n.Drain = old.Policy, old.Drain
		}
		status.Nodes = append(status.Nodes, n)
	}
	status.Summary.Total = int32(len(r.Nodes))
	compactNodes(status)
	status.Estimate, status.Raised = nil, nil
	if e := r.Estimate; e != nil {
		status.Estimate = &v1alpha1.RolloutEstimate{Time: metav1.Time{Time: e.At}, Completion: apiTime(e.Completion), Measured: int32(e.Measured),
			InProgress: int32(e.InProgress), Pending: int32(e.Pending), MaxUnavailable: int32(e.MaxUnavailable), Deadline: apiTime(e.Deadline)}
		if e.PerNode > 0 {
			status.Estimate.PerNode = &metav1.Duration{Duration: e.PerNode}
		}
	}
	if x := r.Raised; x != nil {
		status.Raised = &v1alpha1.MaxUnavailableRaise{MaxUnavailable: int32(x.MaxUnavailable), From: int32(x.From), Ceiling: int32(x.Ceiling),
			Time: metav1.Time{Time: x.At}, Message: x.Message}
	}
	setConditions(status, r, now)
}

// detailRank orders the nodes that keep their details in status.nodes:
// those a person must look at first; nodes done or excluded last.
var detailRank = map[v1alpha1.NodeStep]int{
	v1alpha1.NodeStep(protocol.StepHalted): 1, v1alpha1.NodeStep(protocol.StepUnresolved): 2,
	v1alpha1.NodeStep(protocol.StepCordoned): 3, v1alpha1.NodeStep(protocol.StepActing): 3,
	"pending": 4, "": 4, v1alpha1.NodeStep(protocol.StepDryRun): 5,
	v1alpha1.NodeStep(protocol.StepDone): 6, v1alpha1.NodeStep(protocol.StepExcluded): 7,
}

// compactNodes keeps status.nodes small, as the TokenRollout is rewritten
// as its nodes progress and must stay far below etcd's object size limit
// at thousands of nodes: each node keeps its name and step, its strategy
// only when it differs from the rollout's, and its details only if it is
// among the v1alpha1.MaxDetailedNodes nodes ranked first by detailRank
// (then by plan order). The node's own record, on the Node, keeps the rest.
func compactNodes(status *v1alpha1.TokenRolloutStatus) {
	order := make([]int, 0, len(status.Nodes))
	for i := range status.Nodes {
		n := &status.Nodes[i]
		if n.Strategy == status.Strategy {
			n.Strategy = ""
		}
		order = append(order, i)
	}
	if len(order) <= v1alpha1.MaxDetailedNodes {
		return
	}
	rank := func(s v1alpha1.NodeStep) int { return cmp.Or(detailRank[s], len(detailRank)+1) }
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(rank(status.Nodes[a].Step), rank(status.Nodes[b].Step))
	})
	keep := map[int]bool{}
	for _, i := range order[:min(len(order), v1alpha1.MaxDetailedNodes)] {
		keep[i] = true
	}
	for i := range status.Nodes {
		if !keep[i] {
			n := &status.Nodes[i]
			status.Nodes[i] = v1alpha1.NodeResult{Name: n.Name, Step: n.Step, Strategy: n.Strategy}
		}
	}
}

// setConditions sets Progressing, Halted and Complete from r's phase, in
// the shape `kubectl wait --for=condition=...` reads.
func setConditions(status *v1alpha1.TokenRolloutStatus, r *Rollout, now time.Time) {
	at := metav1.Time{Time: cmp.Or(r.UpdatedAt, now)}
	cond := func(typ string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: cut(msg, 32768),
			ObservedGeneration: status.ObservedGeneration, LastTransitionTime: at})
	}
	switch r.Phase {
	case RolloutRunning:
		cond(v1alpha1.ConditionProgressing, true, "Running", "nodes start as the limits allow")
	case RolloutPaused:
		cond(v1alpha1.ConditionProgressing, false, "Paused", cmp.Or(r.Steered, "paused"))
	case RolloutHalted:
		cond(v1alpha1.ConditionProgressing, false, "Halted", fmt.Sprintf("halted on node %s; tokenroll rollout resume or cancel", r.HaltNode))
	case RolloutCancelled:
		cond(v1alpha1.ConditionProgressing, false, "Cancelled", cmp.Or(r.Message, r.Steered, "cancelled"))
	case RolloutDone:
		cond(v1alpha1.ConditionProgressing, false, "Complete", "every node ended")
	}
	if r.Phase == RolloutHalted {
		cond(v1alpha1.ConditionHalted, true, cmp.Or(r.HaltReason, "Halted"), fmt.Sprintf("node %s: %s; fix the cause, then tokenroll rollout resume (the node is tried again) or cancel", r.HaltNode, r.Message))
	} else {
		cond(v1alpha1.ConditionHalted, false, "NotHalted", "no node stopped the rollout")
	}
	switch {
	case r.Phase == RolloutDone && r.FinishedAt.IsZero():
		cond(v1alpha1.ConditionComplete, false, "NodesLeft", "nodes in progress finish first")
	case r.Phase == RolloutDone:
		cond(v1alpha1.ConditionComplete, true, "Complete", cmp.Or(r.Message, fmt.Sprintf("%s ended", nodeCount(len(r.Nodes)))))
	case r.Phase == RolloutCancelled && !r.FinishedAt.IsZero():
		cond(v1alpha1.ConditionComplete, false, "Cancelled", "cancelled before every node was done")
	default:
		cond(v1alpha1.ConditionComplete, false, "InProgress", "the rollout has not ended")
	}
}

// aboutEvent records an Event on the current TokenRollout, or, with none
// (yet), on the coordinator's own object; it reports whether it had an
// object to put it on.
func (t *term) aboutEvent(typ, reason, action, note string, args ...any) bool {
	if StateOf(t.recordList()).Rollout != nil {
		t.rolloutEvent(typ, reason, action, note, args...)
		return true
	}
	return t.c.selfEvent(t.recorder, typ, reason, action, note, args...)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Store reads and writes the rollout record.
type Store struct {
	Client versioned.Interface
	// FieldManager names the writer.
	FieldManager string
	// Retry carries each request through transient faults (zero: one try).
	Retry apiretry.Policy
	// History is how many finished TokenRollouts are kept; the oldest
	// beyond it are deleted when a rollout is created (0: DefaultHistory).
	History int
	// Progress, when set, fills in the nodes' steps and the summary of
	// each TokenRollout about to be written.
	Progress func(*v1alpha1.TokenRollout)
	// Now stamps the conditions' transition times (nil: time.Now).
	Now func() time.Time
}

// List reads every TokenRollout.
func (st Store) List(ctx context.Context) ([]*v1alpha1.TokenRollout, error) {
	var list *v1alpha1.TokenRolloutList
	err := st.Retry.Do(ctx, func(ctx context.Context) error {
		var err error
		list, err = st.Client.TokenrollV1alpha1().TokenRollouts().List(ctx, metav1.ListOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil, ErrRecordsNotServed
	}
	if err != nil {
		return nil, fmt.Errorf("reading the rollout record (TokenRollouts): %w", err)
	}
	out := make([]*v1alpha1.TokenRollout, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

// Get reads the state.
func (st Store) Get(ctx context.Context) (State, error) {
	items, err := st.List(ctx)
	if err != nil {
		return State{}, err
	}
	return StateOf(items), nil
}

// Update reads the state, applies change and writes what changed back,
// retrying on conflicts; change may return an error to abort without
// writing.
func (st Store) Update(ctx context.Context, change func(*State) error) (State, error) {
	s, _, err := st.update(ctx, nil, change)
	return s, err
}

// update is Update starting from cached TokenRollouts (nil: read them); it
// returns the TokenRollouts it wrote, and re-reads them only after a
// conflict.
func (st Store) update(ctx context.Context, cached []*v1alpha1.TokenRollout, change func(*State) error) (State, []*v1alpha1.TokenRollout, error) {
	var out, last State
	var written []*v1alpha1.TokenRollout
	// intended is what the last attempt wrote: when a write's answer is
	// lost (a timeout) and its retry meets a conflict, what is read next
	// may be that very write, and is not changed again.
	var intended map[string]v1alpha1.TokenRolloutStatus
	items := cached
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if items == nil {
			var err error
			if items, err = st.List(ctx); err != nil {
				return err
			}
			if intended != nil && holds(items, intended) {
				out = last
				return nil
			}
		}
		before := StateOf(items)
		s := StateOf(items)
		if err := change(&s); err != nil {
			return err
		}
		var err error
		last = s
		written, intended, err = st.write(ctx, items, before, s)
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			items = nil
			return apierrors.NewConflict(v1alpha1.Resource("tokenrollouts"), "", err)
		}
		if err == nil {
			out = s
		}
		return err
	})
	return out, written, err
}

// write takes the TokenRollouts from before to after: it creates the
// rollouts the coordinator planned by itself and writes each status that
// changed.
func (st Store) write(ctx context.Context, items []*v1alpha1.TokenRollout, before, after State) ([]*v1alpha1.TokenRollout, map[string]v1alpha1.TokenRolloutStatus, error) {
	now := time.Now
	if st.Now != nil {
		now = st.Now
	}
	byName := map[string]*v1alpha1.TokenRollout{}
	next := map[string]*v1alpha1.TokenRollout{}
	for _, o := range items {
		byName[o.Name] = o
	}
	get := func(name string) *v1alpha1.TokenRollout {
		if o, ok := next[name]; ok {
			return o
		}
		o := byName[name]
		if o == nil {
			return nil
		}
		o = o.DeepCopy()
		next[name] = o
		return o
	}
	var created []*v1alpha1.TokenRollout
	for _, r := range []*Rollout{after.Last, after.Rollout} {
		if r == nil {
			continue
		}
		if o := byName[r.ID]; o != nil && takenUp(o) && sameRollout(rolloutOf(o), r) {
			continue // as recorded
		}
		o := get(r.ID)
		if o == nil {
			o = &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: r.ID,
				Labels: map[string]string{"app.kubernetes.io/name": "tokenroll", "app.kubernetes.io/component": "coordinator"}},
				Spec: v1alpha1.TokenRolloutSpec{State: v1alpha1.StateRunning, Strategy: v1alpha1.Strategy(r.Strategy), DryRun: r.DryRun, PolicyName: r.Policy}}
			created = append(created, o)
			next[r.ID] = o
		}
		if !takenUp(o) {
			// Taken up now: the spec it was asked with is observed.
			o.Status.ObservedGeneration = o.Generation
		}
		setStatus(&o.Status, r, now())
	}
	// The wait is recorded where StateOf reads it back.
	holder := ""
	if r := after.Active(); r != nil {
		holder = r.ID
	} else if after.Start != nil {
		holder = after.Start.Name
	}
	for _, o := range items {
		if o.Status.Waiting != nil && o.Name != holder {
			get(o.Name).Status.Waiting = nil
		}
	}
	if o := get(holder); o != nil {
		o.Status.Waiting = nil
		if w := after.Waiting; w != nil {
			o.Status.Waiting = &v1alpha1.RolloutWait{Reason: w.Reason, Message: cut(w.Message, 1024), Since: metav1.Time{Time: w.Since}}
		}
	}
	if req := before.Steer; req != nil && after.Steer == nil {
		if o := get(req.Rollout); o != nil && o.Status.ObservedGeneration < req.Generation {
			o.Status.ObservedGeneration = req.Generation
		}
	}
	for _, rq := range before.Retry {
		if slices.Contains(after.Retry, rq) {
			continue
		}
		if o := get(rq.Rollout); o != nil && (o.Status.RetriedUntil == nil || rq.RequestedAt.After(o.Status.RetriedUntil.Time)) {
			o.Status.RetriedUntil = &metav1.Time{Time: rq.RequestedAt}
		}
	}
	var written []*v1alpha1.TokenRollout
	intended := map[string]v1alpha1.TokenRolloutStatus{}
	api := st.Client.TokenrollV1alpha1().TokenRollouts()
	for _, o := range created {
		var got *v1alpha1.TokenRollout
		err := st.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			got, err = api.Create(ctx, o, metav1.CreateOptions{FieldManager: st.FieldManager})
			return err
		})
		if err != nil {
			return written, nil, fmt.Errorf("creating TokenRollout %s: %w", o.Name, err)
		}
		// The API server drops the status of a create: it is written next.
		got.Status = o.Status
		got.Status.ObservedGeneration = got.Generation
		next[o.Name], byName[o.Name] = got, &v1alpha1.TokenRollout{ObjectMeta: got.ObjectMeta, Spec: got.Spec}
	}
	names := make([]string, 0, len(next))
	for name := range next {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		o := next[name]
		if st.Progress != nil {
			st.Progress(o)
		}
		if old := byName[name]; old != nil && equality.Semantic.DeepEqual(old.Status, o.Status) {
			continue
		}
		intended[name] = o.Status
		var got *v1alpha1.TokenRollout
		err := st.Retry.Do(ctx, func(ctx context.Context) error {
			var err error
			got, err = api.UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: st.FieldManager})
			return err
		})
		if err != nil {
			return written, intended, fmt.Errorf("writing the status of TokenRollout %s: %w", name, err)
		}
		written = append(written, got)
	}
	if len(created) > 0 {
		st.prune(ctx, items, after)
	}
	return written, intended, nil
}

// holds reports whether items carry every status in want.
func holds(items []*v1alpha1.TokenRollout, want map[string]v1alpha1.TokenRolloutStatus) bool {
	found := 0
	for _, o := range items {
		if w, ok := want[o.Name]; ok {
			if !equality.Semantic.DeepEqual(o.Status, w) {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

// prune deletes the oldest finished TokenRollouts beyond History; a
// failure is left for the next rollout's creation to retry.
func (st Store) prune(ctx context.Context, items []*v1alpha1.TokenRollout, s State) {
	keep := st.History
	if keep <= 0 {
		keep = DefaultHistory
	}
	var done []*v1alpha1.TokenRollout
	for _, o := range items {
		if p := phaseOf(o.Status.Phase); p.Final() && o.Status.CompletionTime != nil &&
			(s.Rollout == nil || o.Name != s.Rollout.ID) && (s.Last == nil || o.Name != s.Last.ID) {
			done = append(done, o)
		}
	}
	// The current rollout and the last count against the limit too.
	extra := len(done) + 2 - keep
	if extra <= 0 {
		return
	}
	sortRecords(done)
	for _, o := range done[:min(extra, len(done))] {
		err := st.Client.TokenrollV1alpha1().TokenRollouts().Delete(ctx, o.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{ResourceVersion: &o.ResourceVersion}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return
		}
	}
}

// sameRollout reports whether a and b say the same (times compared as
// instants, whatever their location).
func sameRollout(a, b *Rollout) bool {
	x, errA := json.Marshal(a)
	y, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(x, y)
}

// errNoRollout is what the CLI's steering says with no rollout to steer.
var errNoRollout = errors.New("no rollout is active (tokenroll status)")
