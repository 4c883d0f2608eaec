package coordinator

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// PlanInput is everything a plan depends on; MakePlan is a pure function
// of it.
type PlanInput struct {
	Now time.Time
	// Issuer is the API servers' signing issuer.
	Issuer string
	// Gate says which other issuers are trusted, and until when.
	Gate     GateState
	Strategy protocol.Strategy
	// Margin is how long before a trust deadline a token must have been
	// refreshed for its node to be left alone.
	Margin time.Duration
	// WaitForReports: a node whose agent has not yet judged its tokens
	// against Issuer, and whose need depends on when they refresh, is
	// reported as waiting rather than planned.
	WaitForReports bool
	Nodes          []*corev1.Node
	// AppStale counts, per node, the pods app detection finds app-stale
	// (their app presents a token the kubelet replaced): a node with any
	// needs work even when its files are fresh.
	AppStale map[string]int
}

// SkippedNode is a node left out, and why.
type SkippedNode struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Plan is which nodes need what, why and by when, most urgent first.
type Plan struct {
	Nodes   []PlannedNode `json:"nodes"`
	Skipped []SkippedNode `json:"skipped,omitempty"`
	// Waiting are nodes whose agents have not reported under the current
	// issuer yet.
	Waiting []string `json:"waiting,omitempty"`
	// Triggers counts the planned nodes by what made them need work.
	Triggers map[string]int `json:"triggers,omitempty"`
}

// Trigger names.
const (
	TriggerIssuer         = "issuer"
	TriggerStaleTokens    = "stale-tokens"
	TriggerRebootRequired = "reboot-required"
	TriggerManual         = "manual"
	TriggerAppStale       = "app-stale"
)

// MakePlan decides which nodes need work: those reporting a required
// reboot (always a reboot), those holding expired or overdue tokens, those
// holding tokens of another issuer that the API servers do not trust,
// or trust only until a deadline the tokens would outlive (refreshing at
// their refresh time plus Margin), and those running app-stale pods. A
// token of a trusted issuer heals by itself when the kubelet refreshes it:
// its node is left alone.
func MakePlan(in PlanInput) Plan {
	return (*planCache)(nil).plan(in)
}

// planCache keeps each node's verdict between plans, so that a plan after
// one Node changed judges that node alone: at idle a leader plans on every
// sync, and judging a node means parsing its token report. A verdict is
// kept for the node's resourceVersion (any change to the Node makes a new
// one) under the plan's inputs: every field of PlanInput but Now and Nodes
// (nodeNeed does not read the time), compared as JSON so that an input
// added to PlanInput is part of the key without anyone remembering to add
// it. A nil cache keeps nothing.
//
// Told which nodes changed since its last plan (note), planChanged walks
// those alone: it keeps each node's part of the plan (planned, skipped,
// waiting) and assembles a new plan only when a part changed.
type planCache struct {
	inputs  string
	entries map[string]planEntry
	// gen counts plans; an entry not seen by the last one is a node gone.
	gen uint64
	// judged counts the nodes the last plan asked nodeNeed about.
	judged int

	// pending are the nodes changed since the last plan; pendingAll says
	// any may have.
	pending    map[string]bool
	pendingAll bool
	// last is the last plan, built from the parts below; nil: none yet.
	last    *Plan
	planned map[string]PlannedNode
	trigger map[string]string
	skipped map[string]string
	waiting map[string]bool
}

type planEntry struct {
	resourceVersion string
	uid             types.UID
	gen             uint64
	verdict         nodeVerdict
}

// nodeVerdict is what nodeNeed said of one node.
type nodeVerdict struct {
	need     bool
	trigger  string
	deadline time.Time
	why      string
}

func newPlanCache() *planCache {
	return &planCache{entries: map[string]planEntry{}, pending: map[string]bool{}, pendingAll: true,
		planned: map[string]PlannedNode{}, trigger: map[string]string{}, skipped: map[string]string{}, waiting: map[string]bool{}}
}

// note records the nodes changed since the last plan (all: any may have).
func (c *planCache) note(changed []string, all bool) {
	if all {
		c.pendingAll = true
		clear(c.pending)
		return
	}
	if c.pendingAll {
		return
	}
	for _, name := range changed {
		c.pending[name] = true
	}
}

// planChanged is the plan of in, byName being in.Nodes by name, judging
// only the nodes noted since the last plan; with nothing noted, or the
// inputs changed, it plans every node (through the per-node cache). in.Nodes
// must be sorted by name: the plan's Skipped and Waiting follow that order.
func (c *planCache) planChanged(in PlanInput, byName map[string]*corev1.Node) Plan {
	key := inputsKey(in)
	if c.pendingAll || c.last == nil || key == "" || key != c.inputs {
		c.pendingAll = false
		clear(c.pending)
		return c.plan(in)
	}
	c.judged = 0
	c.gen++
	changed := false
	var trusted map[string]TrustedIssuer
	for name := range c.pending {
		old, had := c.entries[name]
		n := byName[name]
		if n == nil || n.ResourceVersion == "" {
			if had {
				delete(c.entries, name)
				changed = c.drop(name) || changed
			}
			if n == nil {
				continue
			}
		}
		if had && old.resourceVersion == n.ResourceVersion && old.uid == n.UID {
			continue
		}
		if trusted == nil {
			trusted = trustedIssuers(in.Gate)
		}
		var v nodeVerdict
		v.need, v.trigger, v.deadline, v.why = nodeNeed(in, trusted, n)
		c.judged++
		if n.ResourceVersion != "" {
			c.entries[name] = planEntry{resourceVersion: n.ResourceVersion, uid: n.UID, gen: c.gen, verdict: v}
		}
		if !had || !old.verdict.equal(v) {
			c.drop(name)
			c.record(name, in.Strategy, v)
			changed = true
		}
	}
	clear(c.pending)
	if changed {
		c.assemble()
	}
	return c.copyLast()
}

func (v nodeVerdict) equal(o nodeVerdict) bool {
	return v.need == o.need && v.trigger == o.trigger && v.deadline.Equal(o.deadline) && v.why == o.why
}

func trustedIssuers(g GateState) map[string]TrustedIssuer {
	trusted := map[string]TrustedIssuer{}
	if g.TrustKnown {
		for _, t := range g.Trusted {
			trusted[t.Name] = t
		}
	}
	return trusted
}

// record puts a node's verdict in the plan's parts, as plan does.
func (c *planCache) record(name string, strategy protocol.Strategy, v nodeVerdict) {
	switch {
	case v.trigger == "wait":
		c.waiting[name] = true
	case v.need:
		if v.trigger == TriggerRebootRequired {
			strategy = Reboot
		}
		c.planned[name] = PlannedNode{Name: name, Strategy: strategy, Reason: v.why, Deadline: v.deadline}
		c.trigger[name] = v.trigger
	case v.why != "":
		c.skipped[name] = v.why
	}
}

// drop takes a node out of the plan's parts, and says whether it was in.
func (c *planCache) drop(name string) bool {
	_, p := c.planned[name]
	_, s := c.skipped[name]
	w := c.waiting[name]
	delete(c.planned, name)
	delete(c.trigger, name)
	delete(c.skipped, name)
	delete(c.waiting, name)
	return p || s || w
}

// assemble builds the last plan from its parts.
func (c *planCache) assemble() {
	p := Plan{Triggers: map[string]int{}}
	for name, pn := range c.planned {
		p.Nodes = append(p.Nodes, pn)
		p.Triggers[c.trigger[name]]++
	}
	slices.SortFunc(p.Nodes, func(a, b PlannedNode) int { return cmp.Compare(a.Name, b.Name) })
	sortPlan(p.Nodes)
	for name, why := range c.skipped {
		p.Skipped = append(p.Skipped, SkippedNode{Name: name, Reason: why})
	}
	slices.SortFunc(p.Skipped, func(a, b SkippedNode) int { return cmp.Compare(a.Name, b.Name) })
	for name := range c.waiting {
		p.Waiting = append(p.Waiting, name)
	}
	slices.Sort(p.Waiting)
	c.last = &p
}

// copyLast is the last plan, its planned nodes a copy the caller may
// change (a dry run writes what it would do into them).
func (c *planCache) copyLast() Plan {
	p := *c.last
	p.Nodes = slices.Clone(p.Nodes)
	p.Triggers = maps.Clone(p.Triggers)
	return p
}

// inputsKey is the plan's inputs as the cache compares them, or "" when
// they cannot be encoded (then nothing is kept).
func inputsKey(in PlanInput) string {
	in.Now, in.Nodes = time.Time{}, nil
	b, err := json.Marshal(in)
	if err != nil {
		return ""
	}
	return string(b)
}

func (c *planCache) plan(in PlanInput) Plan {
	p := Plan{Triggers: map[string]int{}}
	trusted := trustedIssuers(in.Gate)
	caching := false
	if c != nil {
		c.judged = 0
		c.gen++
		clear(c.planned)
		clear(c.trigger)
		clear(c.skipped)
		clear(c.waiting)
		key := inputsKey(in)
		if key == "" || key != c.inputs {
			clear(c.entries)
		}
		c.inputs = key
		caching = key != ""
	}
	kept := 0
	for _, n := range in.Nodes {
		var v nodeVerdict
		cacheable := caching && n.ResourceVersion != ""
		e, hit := planEntry{}, false
		if cacheable {
			e, hit = c.entries[n.Name]
			hit = hit && e.resourceVersion == n.ResourceVersion && e.uid == n.UID
		}
		if hit {
			v = e.verdict
		} else {
			v.need, v.trigger, v.deadline, v.why = nodeNeed(in, trusted, n)
			if c != nil {
				c.judged++
			}
		}
		if cacheable {
			c.entries[n.Name] = planEntry{resourceVersion: n.ResourceVersion, uid: n.UID, gen: c.gen, verdict: v}
			kept++
		}
		if c != nil {
			c.record(n.Name, in.Strategy, v)
		}
		switch {
		case v.trigger == "wait":
			p.Waiting = append(p.Waiting, n.Name)
		case v.need:
			strategy := in.Strategy
			if v.trigger == TriggerRebootRequired {
				strategy = Reboot
			}
			p.Nodes = append(p.Nodes, PlannedNode{Name: n.Name, Strategy: strategy, Reason: v.why, Deadline: v.deadline})
			p.Triggers[v.trigger]++
		case v.why != "":
			p.Skipped = append(p.Skipped, SkippedNode{Name: n.Name, Reason: v.why})
		}
	}
	if c != nil && len(c.entries) > kept {
		// Nodes gone from the fleet go from the cache too.
		for name, e := range c.entries {
			if e.gen != c.gen {
				delete(c.entries, name)
			}
		}
	}
	sortPlan(p.Nodes)
	if c != nil {
		last := p
		last.Nodes = slices.Clone(p.Nodes)
		last.Triggers = maps.Clone(p.Triggers)
		c.last = &last
	}
	return p
}

// sortPlan orders by deadline (none first: already broken), then name.
func sortPlan(nodes []PlannedNode) {
	slices.SortStableFunc(nodes, func(a, b PlannedNode) int {
		return cmp.Or(a.Deadline.Compare(b.Deadline), cmp.Compare(a.Name, b.Name))
	})
}

// nodeNeed judges one node. It must not read in.Now: planCache keeps its
// verdict until the node or another input changes.
func nodeNeed(in PlanInput, trusted map[string]TrustedIssuer, n *corev1.Node) (need bool, trigger string, deadline time.Time, why string) {
	if ex := excludedBy(n); ex != "" {
		return false, "", time.Time{}, "excluded (" + AnnotationExclude + "): " + ex
	}
	if st := nodeStateIn(n, protocol.StepDryRun); st != nil && st.Evidence == evidenceOf(n, in.Issuer) {
		return false, "", time.Time{}, fmt.Sprintf("dry-run in rollout %s: its agent runs with --dry-run and did not act; planned again when its stale tokens change or on `tokenroll rollout retry %s`",
			st.Rollout, n.Name)
	}
	if rr, err := protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired]); err != nil {
		return false, "", time.Time{}, err.Error()
	} else if rr {
		return true, TriggerRebootRequired, time.Time{}, "the node reports a required reboot"
	}
	raw, ok := n.Annotations[protocol.AnnotationTokens]
	if !ok {
		return false, "", time.Time{}, "no report from a tokenroll agent on this node"
	}
	rep, err := protocol.ParseTokenReport(raw)
	if err != nil {
		return false, "", time.Time{}, err.Error()
	}
	if st := unresolvedState(n); st != nil && st.Evidence == rep.Evidence(in.Issuer) {
		return false, "", time.Time{}, fmt.Sprintf("unresolved since %s: its tokens stayed stale after a %s; retried when they change or on `tokenroll rollout retry %s`",
			st.StepAt.UTC().Format(time.RFC3339), st.Strategy, n.Name)
	}
	if k := rep.Count(protocol.State.NotRefreshed); k > 0 {
		return true, TriggerStaleTokens, time.Time{}, plural.Count(k, "token") + " expired or overdue (the kubelet is not refreshing them)"
	}
	var reasons, healing []string
	for _, it := range rep.Issuers {
		if it.Issuer == in.Issuer || it.Tokens == 0 {
			continue
		}
		t, ok := trusted[it.Issuer]
		switch {
		case !ok:
			need = true
			reasons = append(reasons, fmt.Sprintf("%s from %s, which the API servers no longer trust", plural.Count(it.Tokens, "token"), it.Issuer))
		case t.Expires.IsZero():
			healing = append(healing, fmt.Sprintf("%s from %s (still trusted), which the kubelet refreshes in time", plural.Count(it.Tokens, "token"), it.Issuer))
		case it.LastRefreshAt.IsZero():
			if in.WaitForReports && rep.Issuer != in.Issuer {
				return false, "wait", time.Time{}, ""
			}
			need = true
			deadline = minTime(deadline, t.Expires)
			reasons = append(reasons, fmt.Sprintf("%s from %s, trusted until %s; when they refresh is not known", plural.Count(it.Tokens, "token"), it.Issuer, t.Expires.UTC().Format(time.RFC3339)))
		case it.LastRefreshAt.Add(in.Margin).After(t.Expires):
			need = true
			deadline = minTime(deadline, t.Expires)
			reasons = append(reasons, fmt.Sprintf("%s from %s, trusted until %s, the last refreshing at %s", plural.Count(it.Tokens, "token"), it.Issuer, t.Expires.UTC().Format(time.RFC3339), it.LastRefreshAt.UTC().Format(time.RFC3339)))
		default:
			healing = append(healing, fmt.Sprintf("%s from %s, refreshed by %s, before its trust ends at %s", plural.Count(it.Tokens, "token"), it.Issuer, it.LastRefreshAt.UTC().Format(time.RFC3339), t.Expires.UTC().Format(time.RFC3339)))
		}
	}
	if rep.IssuersTruncated {
		need = true
		reasons = append(reasons, "the agent left issuers out of its report to keep it within its size budget, so their tokens cannot be judged")
	}
	if need {
		return true, TriggerIssuer, deadline, strings.Join(reasons, "; ")
	}
	if k := in.AppStale[n.Name]; k > 0 {
		// Fresh files do not help an app that read its token once: it
		// fails once the issuer that signed its token is no longer
		// trusted, or once that token expires.
		return true, TriggerAppStale, time.Time{}, plural.Count(k, "pod") + " whose apps present a token the kubelet replaced (app-stale)"
	}
	return false, "", time.Time{}, strings.Join(healing, "; ")
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// unresolvedState is the node's state when its last remediation left it
// unresolved (nil otherwise).
func unresolvedState(n *corev1.Node) *protocol.NodeState {
	return nodeStateIn(n, protocol.StepUnresolved)
}

// nodeStateIn is the node's state when it is at step, whatever the
// rollout (nil otherwise).
func nodeStateIn(n *corev1.Node, step protocol.Step) *protocol.NodeState {
	raw, ok := n.Annotations[protocol.AnnotationNodeState]
	if !ok {
		return nil
	}
	st, err := protocol.ParseNodeState(raw)
	if err != nil || st.Step != step {
		return nil
	}
	return &st
}
