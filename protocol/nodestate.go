package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
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
	// StepUnresolved: the action ran, the node came back, and its tokens
	// were still stale when --verify-timeout ran out. Uncordoned if we
	// cordoned it; the rollout goes on without it, and the planner leaves
	// it alone until its stale tokens change (Evidence) or a person asks
	// for a retry.
	StepUnresolved Step = "unresolved"
	// StepExcluded: a person excluded the node (tokenroll.io/exclude) while
	// we worked on it: our work on it ended there and its cordon was left as
	// it was.
	StepExcluded Step = "excluded"
	// StepDryRun: the agent answered that it runs with --dry-run and did
	// not act. Nothing was verified; the node was uncordoned (if we
	// cordoned it), and the planner leaves it alone until its stale tokens
	// change (Evidence) or a person asks for a retry.
	StepDryRun Step = "dry-run"
	// StepApps: the node's own remediation is verified and the node
	// uncordoned (if we cordoned it); its pods' apps are watched, and those
	// that still present a stale credential evicted, before it is done. It
	// holds the rollout open but disrupts no node.
	StepApps Step = "apps"
)

// InProgress reports whether a node in step s is being disrupted by us.
func (s Step) InProgress() bool { return s == StepCordoned || s == StepActing }

// Strategy names a remediation: what a node gets (kubelet-restart,
// pod-restart, reboot). The coordinator defines and registers the
// strategies; a strategy decides which Action, if any, it asks an agent for.
type Strategy string

// OwnerRef names the controller of an evicted pod.
type OwnerRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// String is Kind/namespace/name.
func (o OwnerRef) String() string { return o.Kind + "/" + o.Namespace + "/" + o.Name }

// UnmarshalJSON reads an object, or the "Kind/namespace/name" string that
// coordinators before OwnerRef wrote, so a coordinator upgraded in the
// middle of a rollout resumes the nodes its predecessor left.
func (o *OwnerRef) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		kind, rest, ok1 := strings.Cut(s, "/")
		ns, name, ok2 := strings.Cut(rest, "/")
		if !ok1 || !ok2 || kind == "" || name == "" {
			return fmt.Errorf("owner %q is not Kind/namespace/name", s)
		}
		*o = OwnerRef{Kind: kind, Namespace: ns, Name: name}
		return nil
	}
	type plain OwnerRef // no UnmarshalJSON: no recursion
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("owner is neither an object nor Kind/namespace/name: %w", err)
	}
	*o = OwnerRef(p)
	return nil
}

// NodeState is the coordinator's record on one Node.
type NodeState struct {
	Rollout string `json:"rollout"`
	Step    Step   `json:"step"`
	// Strategy is what this node gets. (The key is "action" on the wire, as
	// it always was.)
	Strategy Strategy `json:"action"`
	// CordonedByUs is false when the node was already unschedulable: it is
	// then left cordoned at the end.
	CordonedByUs bool `json:"cordonedByUs"`
	// Rung is the strategy a ladder of strategies (auto) runs on this
	// node at this step ("" for any other strategy).
	Rung Strategy `json:"rung,omitempty"`
	// NoCordon: the node was started without a cordon (auto's kubelet
	// restart, which evicts no pod, once the previous issuer is no longer
	// trusted); it is cordoned if it climbs to a rung that evicts or
	// reboots.
	NoCordon bool `json:"noCordon,omitempty"`
	// Request is the ID of the request written to the agent.
	Request string `json:"request,omitempty"`
	// BootID is the node's boot ID when the action was requested.
	BootID string `json:"bootID,omitempty"`
	// Evicted are the pods a pod restart evicted.
	Evicted []PodRef `json:"evicted,omitempty"`
	// Owners are the evicted pods' controllers: verified when they report
	// every replica ready again.
	Owners []OwnerRef `json:"owners,omitempty"`
	// Policy names the RolloutPolicy whose settings the node got when it
	// started ("": none covered it, and the coordinator's flags applied).
	Policy string `json:"policy,omitempty"`
	// Drain is how the node's pods are drained or evicted, set when its
	// policy says more than the coordinator's flags (nil: the flags).
	Drain *DrainSettings `json:"drain,omitempty"`
	// StepAt is when the node entered Step.
	StepAt time.Time `json:"stepAt"`
	// StartedAt is when the node was cordoned (or started, NoCordon).
	StartedAt time.Time `json:"startedAt"`
	// AppsAt is when the node's own remediation was verified and the
	// watch of its apps began (auto): from then on it is out of the
	// disruption budget.
	AppsAt time.Time `json:"appsAt,omitzero"`
	// Reason is a halt's reason (CamelCase, bounded) and Message what happened.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Evidence is the agent's stale-token evidence (TokenReport.Evidence)
	// when the node became unresolved: it is retried once that changes.
	Evidence string `json:"evidence,omitempty"`
}

// DrainSettings are a RolloutPolicy's drain settings as a node got them
// when it started, so that every leader drains it alike whatever becomes
// of the policy meanwhile.
type DrainSettings struct {
	// TimeoutSeconds bounds the drain or evictions (0: --drain-timeout).
	TimeoutSeconds int64 `json:"timeoutSeconds,omitempty"`
	// GracePeriodSeconds overrides each pod's termination grace period
	// (nil: the pod's own).
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds,omitempty"`
	// EvictUnmanaged lets a drain evict pods no controller recreates
	// (false: as --drain-force says).
	EvictUnmanaged bool `json:"evictUnmanaged,omitempty"`
	// ForceDelete select the pods that may be deleted outright when their
	// eviction is still refused at the timeout.
	ForceDelete []PodSelector `json:"forceDelete,omitempty"`
}

// PodSelector selects pods by label and, when Namespaces is not empty,
// their namespace's labels; both in label-selector syntax (app=web,tier!=db).
type PodSelector struct {
	Pods       string `json:"pods"`
	Namespaces string `json:"namespaces,omitempty"`
}

// ParseNodeState decodes a node-state annotation.
func ParseNodeState(value string) (NodeState, error) {
	type plain NodeState
	var s struct {
		versionRead
		plain
	}
	if err := decode(AnnotationNodeState, "a JSON node state", value, &s, &s.versionRead); err != nil {
		return NodeState{}, err
	}
	return NodeState(s.plain), nil
}
