package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// AnnotationNodeState is the coordinator's record of where a node stands in
// a rollout, a NodeState as JSON. Only the coordinator writes it; any leader
// resumes from it.
const AnnotationNodeState = Prefix + "node-state"

// Step is a node's place in the per-node protocol.
type Step string

// The steps. A node with no state for the current rollout is pending.
const (
	// StepCordoned: cordoned (or found cordoned); draining, evicting or
	// requesting the action comes next.
	StepCordoned Step = "cordoned"
	// StepActing: the action was requested of the agent (or, for a pod
	// restart, the stale pods were evicted); being verified.
	StepActing Step = "acting"
	// StepDone: verified and uncordoned.
	StepDone Step = "done"
	// StepHalted: a step failed or timed out; uncordoned if we cordoned it,
	// and the rollout halted.
	StepHalted Step = "halted"
)

// InProgress reports whether a node in step s is being disrupted by us.
func (s Step) InProgress() bool { return s == StepCordoned || s == StepActing }

// NodeState is the coordinator's record on one Node.
type NodeState struct {
	Rollout string `json:"rollout"`
	Step    Step   `json:"step"`
	// Action is what this node gets: reboot, kubelet-restart or pod-restart.
	Action string `json:"action"`
	// CordonedByUs is false when the node was already unschedulable: it is
	// then left cordoned at the end.
	CordonedByUs bool `json:"cordonedByUs"`
	// Request is the ID of the request written to the agent.
	Request string `json:"request,omitempty"`
	// BootID is the node's boot ID when the action was requested.
	BootID string `json:"bootID,omitempty"`
	// Evicted are the pods a pod restart evicted.
	Evicted []PodRef `json:"evicted,omitempty"`
	// Owners are the evicted pods' controllers, as Kind/namespace/name:
	// verified when they report every replica ready again.
	Owners []string `json:"owners,omitempty"`
	// StepAt is when the node entered Step.
	StepAt time.Time `json:"stepAt"`
	// StartedAt is when the node was cordoned.
	StartedAt time.Time `json:"startedAt"`
	// Reason is a halt's reason (CamelCase, bounded) and Message what happened.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// ParseNodeState decodes a node-state annotation.
func ParseNodeState(value string) (NodeState, error) {
	var s NodeState
	if err := json.Unmarshal([]byte(value), &s); err != nil {
		return NodeState{}, fmt.Errorf("annotation %s is not a JSON node state: %w", AnnotationNodeState, err)
	}
	return s, nil
}
