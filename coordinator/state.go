// Package coordinator is tokenroll's leader-elected controller: it watches
// the Nodes (and the agents' reports on them), the revision gate and the
// issuer, plans the least disruptive remediation that meets the deadline,
// and walks the nodes through cordon, drain, action, verify and uncordon, at
// most --max-unavailable at a time. Every step is recorded on the Node and
// each rollout in a TokenRollout, so a new leader resumes where the last one
// stopped.
package coordinator

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// RolloutPhase is a rollout's state. Only the coordinator changes it; a
// person asks for a change with a SteerRequest.
type RolloutPhase string

// Rollout phases. Done and cancelled are final.
const (
	RolloutRunning   RolloutPhase = "running"
	RolloutPaused    RolloutPhase = "paused"
	RolloutHalted    RolloutPhase = "halted"
	RolloutCancelled RolloutPhase = "cancelled"
	RolloutDone      RolloutPhase = "done"
)

// Final reports whether a rollout in p starts no more nodes.
func (p RolloutPhase) Final() bool { return p == RolloutDone || p == RolloutCancelled }

// Verb is what a person asks of a running rollout.
type Verb string

// The verbs of `tokenroll rollout pause|resume|cancel`.
const (
	VerbPause  Verb = "pause"
	VerbResume Verb = "resume"
	VerbCancel Verb = "cancel"
)

// Steer is the phase a rollout in phase p moves to when a person asks
// verb, or why it cannot: pause a running rollout; resume a paused or
// halted one (the node it halted on is tried again); cancel one not over.
// The CLI checks a request with it before writing it, and the coordinator
// again when it applies it.
func Steer(verb Verb, p RolloutPhase) (RolloutPhase, error) {
	switch {
	case verb == VerbPause && p == RolloutRunning:
		return RolloutPaused, nil
	case verb == VerbResume && (p == RolloutPaused || p == RolloutHalted):
		return RolloutRunning, nil
	case verb == VerbCancel && !p.Final():
		return RolloutCancelled, nil
	}
	return p, fmt.Errorf("cannot %s a rollout that is %s", verb, p)
}

// Halt reasons (bounded: they label a metric).
const (
	HaltCordonFailed  = "CordonFailed"
	HaltDrainFailed   = "DrainFailed"
	HaltDrainTimeout  = "DrainTimeout"
	HaltActionFailed  = "ActionFailed"
	HaltActionTimeout = "ActionTimeout"
	HaltNodeNotBack   = "NodeNotBack"
	HaltVerifyTimeout = "VerifyTimeout"
	// HaltUncordoned: someone made the node schedulable before its action
	// was requested.
	HaltUncordoned = "Uncordoned"
)

// HaltReasons lists every halt reason.
var HaltReasons = []string{HaltCordonFailed, HaltDrainFailed, HaltDrainTimeout, HaltActionFailed, HaltActionTimeout, HaltNodeNotBack, HaltVerifyTimeout, HaltUncordoned}

// PlannedNode is one node of a plan: what it gets, why, and by when.
type PlannedNode struct {
	Name string `json:"name"`
	// Strategy is what the node gets ("action" on the wire, as it always
	// was).
	Strategy protocol.Strategy `json:"action"`
	Reason   string            `json:"reason"`
	// Deadline is when its tokens stop working (zero: already, or unknown).
	Deadline time.Time `json:"deadline,omitzero"`
	// Would is, in a dry run, what would have been done to the node.
	Would string `json:"would,omitempty"`
}

// Rollout is one pass over a set of nodes.
type Rollout struct {
	ID string `json:"id"`
	// Trigger says what started it: issuer, stale-tokens, reboot-required or
	// manual (and who asked).
	Trigger  string            `json:"trigger"`
	Strategy protocol.Strategy `json:"strategy"`
	Phase    RolloutPhase      `json:"phase"`
	Issuer   string            `json:"issuer,omitempty"`
	// DryRun: nothing was done; each node says what would have been. A dry
	// run is done as soon as it is planned.
	DryRun bool `json:"dryRun,omitempty"`
	// DryRunBy says what made it a dry run: its request's spec.dryRun, or
	// the coordinator's --dry-run.
	DryRunBy v1alpha1.DryRunSource `json:"dryRunBy,omitempty"`
	// Policy is the RolloutPolicy every node of the rollout follows
	// (spec.policyName; "": each node the one that selects it).
	Policy string        `json:"policy,omitempty"`
	Nodes  []PlannedNode `json:"nodes"`
	// HaltReason, HaltNode and Message say why it halted.
	HaltReason string `json:"haltReason,omitempty"`
	HaltNode   string `json:"haltNode,omitempty"`
	Message    string `json:"message,omitempty"`
	// Steered says what became of the last pause, resume or cancel, for
	// people.
	Steered string `json:"steered,omitempty"`
	// Apps, for auto, says when it starts without evidence of what apps
	// do (no audit source) and what it does instead.
	Apps string `json:"apps,omitempty"`
	// Estimate is when the rollout is expected to end, as last recorded
	// (nil: not estimated yet), and Raised the raise of its nodes at once
	// to meet the previous issuer's trust deadline (nil: none).
	Estimate   *Estimate `json:"estimate,omitempty"`
	Raised     *Raise    `json:"raised,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
}

// StartRequest is an administrator's `tokenroll rollout start`: a
// TokenRollout the coordinator has not started yet.
type StartRequest struct {
	// Name is the TokenRollout's, and becomes the rollout's ID.
	Name     string            `json:"name"`
	Strategy protocol.Strategy `json:"strategy"`
	// Selector is a label selector over Nodes; empty means every node.
	Selector string `json:"selector,omitempty"`
	// Nodes, when set, restricts the rollout to these nodes.
	Nodes []string `json:"nodes,omitempty"`
	// Policy names the RolloutPolicy every node is to follow ("": each
	// node the one that selects it).
	Policy string `json:"policy,omitempty"`
	// Invalid says why the node selector is not valid ("": it is).
	Invalid string `json:"invalid,omitempty"`
	// DryRun asks for a plan of what would be done, doing nothing.
	DryRun      bool      `json:"dryRun,omitempty"`
	RequestedAt time.Time `json:"requestedAt"`
	RequestedBy string    `json:"requestedBy,omitempty"`
}

// RetryRequest is an administrator's `tokenroll rollout retry NODE`: the
// coordinator forgets its record of the node (an unresolved or halted
// one), so the node is planned again like any other, and clears it.
type RetryRequest struct {
	// Rollout is the TokenRollout whose spec carries the request.
	Rollout     string    `json:"rollout"`
	Node        string    `json:"node"`
	RequestedAt time.Time `json:"requestedAt"`
	RequestedBy string    `json:"requestedBy,omitempty"`
}

// SteerRequest is an administrator's `tokenroll rollout pause|resume|cancel`:
// the coordinator applies it (Steer), or refuses it saying why in
// Rollout.Steered, and clears it.
type SteerRequest struct {
	Verb Verb `json:"verb"`
	// Rollout is the ID of the rollout it is for: a request for one that
	// has ended is refused, not applied to the next.
	Rollout     string    `json:"rollout"`
	RequestedAt time.Time `json:"requestedAt,omitzero"`
	RequestedBy string    `json:"requestedBy,omitempty"`
	// Generation is the TokenRollout's spec generation that asks it.
	Generation int64 `json:"generation"`
}

// State is the rollout record as the coordinator works on it: the
// TokenRollouts projected by StateOf.
type State struct {
	// Rollout is the current one (nil when none), Last the one before.
	Rollout *Rollout `json:"rollout,omitempty"`
	Last    *Rollout `json:"last,omitempty"`
	// Start and Steer are pending administrator requests.
	Start *StartRequest  `json:"start,omitempty"`
	Steer *SteerRequest  `json:"steer,omitempty"`
	Retry []RetryRequest `json:"retry,omitempty"`
	// Waiting is what the coordinator waits for while nothing of its own
	// is in progress (nil: it is not waiting). It is recorded on the
	// active rollout, else on the pending start request; with neither, it
	// is only in the metrics and the log.
	Waiting *Wait `json:"waiting,omitempty"`
}

// Active returns the current rollout if it is not over. A cancelled
// rollout stays active until the nodes it was acting on are finished.
func (s *State) Active() *Rollout {
	if s.Rollout != nil && s.Rollout.FinishedAt.IsZero() {
		return s.Rollout
	}
	return nil
}

// recordedIssuer is the signing issuer the state records: the active
// rollout's ("" when none).
func (s *State) recordedIssuer() string {
	if r := s.Active(); r != nil {
		return r.Issuer
	}
	return ""
}

// ParseMaxUnavailable checks a --max-unavailable value: a number of nodes,
// at least 1, or a percentage from 1% to 100%.
func ParseMaxUnavailable(v string) (intstr.IntOrString, error) {
	n, pct := strings.CutSuffix(v, "%")
	i, err := strconv.Atoi(n)
	switch {
	case err != nil:
		return intstr.IntOrString{}, errors.New("want a number of nodes (1) or a percentage (10%)")
	case i < 1:
		return intstr.IntOrString{}, errors.New("must be at least 1")
	case pct && i > 100:
		return intstr.IntOrString{}, errors.New("a percentage must be at most 100%")
	}
	return intstr.Parse(v), nil
}

// ResolveMaxUnavailable turns a count or percentage into a node count for a
// fleet of nodes: a percentage is rounded down, and the result is at least 1.
func ResolveMaxUnavailable(v intstr.IntOrString, nodes int) (int, error) {
	if _, err := ParseMaxUnavailable(v.String()); err != nil {
		return 0, fmt.Errorf("max unavailable %q: %w", v.String(), err)
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(&v, nodes, false)
	if err != nil {
		return 0, fmt.Errorf("max unavailable %q: %w", v.String(), err)
	}
	return max(n, 1), nil
}

// readNodeState reads the coordinator's record on a Node for rollout id
// (nil: pending, or a record of another rollout), parsed anew.
func readNodeState(n *corev1.Node, id string) *protocol.NodeState {
	var uncached *parsedNodes
	return uncached.readNodeState(n, id)
}

// readNodeState is readNodeState through the cache: the record returned
// is the caller's to change, not the slices it holds.
func (p *parsedNodes) readNodeState(n *corev1.Node, id string) *protocol.NodeState {
	raw, ok := n.Annotations[protocol.AnnotationNodeState]
	if !ok {
		return nil
	}
	s, err := p.nodeStateOf(n.Name, raw)
	if err != nil || s.Rollout != id {
		return nil
	}
	return &s
}
