package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TokenRollout is one rollout: its spec is what a person asked (start,
// pause, resume, cancel; which nodes; a strategy), its status what the
// coordinator did. Finished rollouts are kept as history. The coordinator
// alone writes the status.
//
// +genclient
// +genclient:nonNamespaced
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=tro,categories=tokenroll
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Strategy",type=string,JSONPath=`.status.strategy`
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyName`
// +kubebuilder:printcolumn:name="Done",type=integer,JSONPath=`.status.summary.done`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.summary.total`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Halted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Waiting",type=string,JSONPath=`.status.waiting.reason`,priority=1
// +kubebuilder:printcolumn:name="Trigger",type=string,JSONPath=`.status.trigger`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.strategy) == has(oldSelf.spec.strategy) && (!has(self.spec.strategy) || self.spec.strategy == oldSelf.spec.strategy))",message="spec.strategy cannot change once the rollout has started (status.startTime is set); cancel it and create a new TokenRollout"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.policyName) == has(oldSelf.spec.policyName) && (!has(self.spec.policyName) || self.spec.policyName == oldSelf.spec.policyName))",message="spec.policyName cannot change once the rollout has started (status.startTime is set); cancel it and create a new TokenRollout"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.startTime) || ((has(self.spec.nodeNames) ? self.spec.nodeNames : []) == (has(oldSelf.spec.nodeNames) ? oldSelf.spec.nodeNames : []) && (has(self.spec.nodeSelector) == has(oldSelf.spec.nodeSelector)) && (!has(self.spec.nodeSelector) || self.spec.nodeSelector == oldSelf.spec.nodeSelector))",message="spec.nodeNames and spec.nodeSelector cannot change once the rollout has started (status.startTime is set): its nodes were planned then; create a new TokenRollout for other nodes"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.dryRun) ? self.spec.dryRun : false) == (has(oldSelf.spec.dryRun) ? oldSelf.spec.dryRun : false)",message="spec.dryRun cannot change once the rollout has started (status.startTime is set); create a new TokenRollout"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || !(oldSelf.status.phase in ['Complete', 'Cancelled']) || self.spec.state == oldSelf.spec.state",message="spec.state cannot change once the rollout is over (status.phase Complete or Cancelled); create a new TokenRollout"
type TokenRollout struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what a person asked.
	// +optional
	Spec TokenRolloutSpec `json:"spec,omitempty"`
	// status is what the coordinator did.
	// +optional
	Status TokenRolloutStatus `json:"status,omitempty"`
}

// DesiredState is the state a person wants a rollout in.
// +kubebuilder:validation:Enum=Running;Paused;Cancelled
type DesiredState string

// The desired states.
const (
	// StateRunning starts the rollout, or resumes a paused or halted one
	// (the node it halted on is tried again).
	StateRunning DesiredState = "Running"
	// StatePaused: no new node starts; nodes already acting finish. A
	// rollout created paused has not started and may still be changed.
	StatePaused DesiredState = "Paused"
	// StateCancelled ends the rollout for good: nodes already acting
	// finish, no other starts.
	StateCancelled DesiredState = "Cancelled"
)

// TokenRolloutSpec is what a person asked of a rollout. Which nodes it
// covers, its policy, strategy and dry run are fixed once it starts.
type TokenRolloutSpec struct {
	// state is Running (start, or resume), Paused or Cancelled. A
	// cancelled rollout stays cancelled.
	// +kubebuilder:default=Running
	// +kubebuilder:validation:XValidation:rule="oldSelf != 'Cancelled' || self == 'Cancelled'",message="a cancelled rollout cannot be resumed or paused; create a new TokenRollout"
	// +optional
	State DesiredState `json:"state,omitempty"`

	// policyName names the RolloutPolicy every node of this rollout follows.
	// Omitted: each node follows the policy that selects it.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="policyName must be a RolloutPolicy's name (lower-case letters, digits, '-' and '.')"
	// +optional
	PolicyName string `json:"policyName,omitempty"`

	// strategy overrides the policies' strategy for this rollout.
	// +optional
	Strategy Strategy `json:"strategy,omitempty"`

	// nodeSelector restricts the rollout to the nodes it selects. Omitted:
	// every node that needs remediation.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// nodeNames restricts the rollout to these nodes (with nodeSelector:
	// the nodes both name).
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=253
	// +listType=set
	// +optional
	NodeNames []string `json:"nodeNames,omitempty"`

	// dryRun makes this rollout a plan, whatever the policies say: the
	// coordinator reports each step it would take and acts on nothing.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`

	// resumeTime is when a person last asked this rollout to go on. A
	// halted rollout whose state is already Running resumes (its halted
	// node is tried again) only on a spec change: setting resumeTime is
	// that change (tokenroll rollout resume sets it).
	// +optional
	ResumeTime *metav1.Time `json:"resumeTime,omitempty"`

	// retry asks the coordinator to forget its record of nodes left
	// unresolved or halted, so they are planned again (tokenroll rollout
	// retry NODE adds to it). The coordinator applies the requests made
	// after status.retriedUntil.
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	// +optional
	Retry []RetryRequest `json:"retry,omitempty"`
}

// RetryRequest asks to plan one node again.
type RetryRequest struct {
	// node is the Node's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Node string `json:"node"`
	// requestTime is when it was asked.
	// +required
	RequestTime metav1.Time `json:"requestTime"`
	// requestedBy says who asked, for people.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	RequestedBy string `json:"requestedBy,omitempty"`
}

// RolloutPhase is where a rollout stands.
// +kubebuilder:validation:Enum=Pending;Running;Paused;Halted;Cancelled;Complete
type RolloutPhase string

// The phases. Complete and Cancelled are final.
const (
	// PhasePending: accepted, not started (created paused, or waiting for
	// the coordinator).
	PhasePending RolloutPhase = "Pending"
	// PhaseRunning: nodes start as the policy allows.
	PhaseRunning RolloutPhase = "Running"
	// PhasePaused: a person paused it.
	PhasePaused RolloutPhase = "Paused"
	// PhaseHalted: a node failed; the Halted condition says which and why.
	PhaseHalted RolloutPhase = "Halted"
	// PhaseCancelled: a person cancelled it.
	PhaseCancelled RolloutPhase = "Cancelled"
	// PhaseComplete: every node ended (done, unresolved, excluded or dry
	// run).
	PhaseComplete RolloutPhase = "Complete"
)

// The condition types of a TokenRollout.
const (
	// ConditionProgressing is True while nodes may start (False, with the
	// reason, while paused, halted or waiting for a window, the gate, a
	// blocker).
	ConditionProgressing = "Progressing"
	// ConditionHalted is True when a node failed and the rollout stopped on
	// it; its reason is the halt reason, its message the node and what to
	// do.
	ConditionHalted = "Halted"
	// ConditionComplete is True once the rollout is over; `kubectl wait
	// --for=condition=Complete` waits on it.
	ConditionComplete = "Complete"
)

// NodeStep is where one node of a rollout stands, as the per-node protocol
// on the Node records it.
// +kubebuilder:validation:Enum=pending;cordoned;acting;done;halted;unresolved;excluded;dry-run
type NodeStep string

// TokenRolloutStatus is what the coordinator did.
type TokenRolloutStatus struct {
	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase is where the rollout stands.
	// +optional
	Phase RolloutPhase `json:"phase,omitempty"`

	// conditions: Progressing, Halted, Complete.
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// strategy is the strategy in effect.
	// +optional
	Strategy Strategy `json:"strategy,omitempty"`

	// trigger says what started the rollout: issuer, stale-tokens,
	// reboot-required or manual (and who asked).
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Trigger string `json:"trigger,omitempty"`

	// issuer is the service-account issuer the rollout moves tokens to.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	Issuer string `json:"issuer,omitempty"`

	// startTime is when the first node was planned; from then on which
	// nodes the rollout covers and how is fixed.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// completionTime is when the rollout ended.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// updateTime is when the coordinator last changed the rollout's phase,
	// plan, halt or steering.
	// +optional
	UpdateTime *metav1.Time `json:"updateTime,omitempty"`

	// message says what happened last, for people (why it halted, who
	// resumed it, why nothing was planned).
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Message string `json:"message,omitempty"`

	// haltedNode is the node the rollout halted on.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	HaltedNode string `json:"haltedNode,omitempty"`

	// steered says what became of the last change of spec.state (or
	// spec.resumeTime): applied, or refused and why.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Steered string `json:"steered,omitempty"`

	// apps says, for strategy auto, when the rollout runs without evidence
	// of what apps present (no audit source) and what it does instead.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Apps string `json:"apps,omitempty"`

	// dryRunBy says, for a rollout that is a dry run, what made it one:
	// Request (its spec.dryRun) or Coordinator (the coordinator runs with
	// --dry-run, which makes every rollout a dry run). A RolloutPolicy's
	// dryRun, and an agent's --dry-run, make nodes dry-run, not the
	// rollout: each such node's result says which.
	// +kubebuilder:validation:Enum=Request;Coordinator
	// +optional
	DryRunBy DryRunSource `json:"dryRunBy,omitempty"`

	// retriedUntil is the newest spec.retry request applied.
	// +optional
	RetriedUntil *metav1.Time `json:"retriedUntil,omitempty"`

	// waiting says what holds the rollout while no node can start: the next
	// window, a blocking pod or alert, the revision gate.
	// +optional
	Waiting *RolloutWait `json:"waiting,omitempty"`

	// estimate is when the rollout is expected to end, as last recorded.
	// +optional
	Estimate *RolloutEstimate `json:"estimate,omitempty"`

	// raised records the raise of the nodes disrupted at once to meet the
	// previous issuer's trust deadline.
	// +optional
	Raised *MaxUnavailableRaise `json:"raised,omitempty"`

	// summary counts the nodes by step.
	// +optional
	Summary NodeSummary `json:"summary,omitempty"`

	// nodes is each planned node's result: its name and step, its strategy
	// when it differs from the rollout's, and the details (message,
	// reason, action, deadline, would, lastTransitionTime) for at most
	// MaxDetailedNodes nodes, those that need a person first (halted,
	// unresolved, in progress, pending, then the others); summary counts
	// them all. It
	// is rewritten as nodes progress, so it is kept small: an atomic list
	// (its managed fields do not name every node) of short entries.
	// +kubebuilder:validation:MaxItems=5000
	// +listType=atomic
	// +optional
	Nodes []NodeResult `json:"nodes,omitempty"`
}

// DryRunSource is what made a rollout a dry run.
type DryRunSource string

// The dry run sources.
const (
	// DryRunByRequest: the TokenRollout's spec.dryRun (tokenroll rollout
	// start --dry-run).
	DryRunByRequest DryRunSource = "Request"
	// DryRunByCoordinator: the coordinator runs with --dry-run.
	DryRunByCoordinator DryRunSource = "Coordinator"
)

// MaxDetailedNodes is how many of a TokenRollout's status.nodes carry
// their details.
const MaxDetailedNodes = 50

// RolloutWait is what holds a rollout while no node can start.
type RolloutWait struct {
	// reason is a short word for it (gate-closed, max-unavailable, window,
	// ...), as the coordinator's waiting metric labels it.
	// +kubebuilder:validation:MaxLength=64
	// +required
	Reason string `json:"reason"`
	// message says what is waited for, naming the nodes.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Message string `json:"message,omitempty"`
	// since is when the wait for reason began.
	// +optional
	Since metav1.Time `json:"since,omitempty"`
}

// RolloutEstimate is when a rollout is expected to end, and what that rests
// on.
type RolloutEstimate struct {
	// time is when it was made.
	// +optional
	Time metav1.Time `json:"time,omitempty"`
	// completion is when the last node is expected done (unset: no node
	// has finished yet, so nothing is measured).
	// +optional
	Completion *metav1.Time `json:"completion,omitempty"`
	// perNode is the median time a node took over the measured nodes.
	// +optional
	PerNode *metav1.Duration `json:"perNode,omitempty"`
	// measured, inProgress and pending count the nodes it rests on.
	// +optional
	Measured int32 `json:"measured,omitempty"`
	// +optional
	InProgress int32 `json:"inProgress,omitempty"`
	// +optional
	Pending int32 `json:"pending,omitempty"`
	// maxUnavailable is the nodes at once it assumes.
	// +optional
	MaxUnavailable int32 `json:"maxUnavailable,omitempty"`
	// deadline is when the previous issuer's trust ends (unset: none known).
	// +optional
	Deadline *metav1.Time `json:"deadline,omitempty"`
}

// MaxUnavailableRaise is a raise of the nodes disrupted at once to meet the
// previous issuer's trust deadline.
type MaxUnavailableRaise struct {
	// maxUnavailable is the nodes at once it allows; from what was allowed
	// before and ceiling what the coordinator's ceiling allowed.
	// +optional
	MaxUnavailable int32 `json:"maxUnavailable,omitempty"`
	// +optional
	From int32 `json:"from,omitempty"`
	// +optional
	Ceiling int32 `json:"ceiling,omitempty"`
	// time is when it was raised.
	// +optional
	Time metav1.Time `json:"time,omitempty"`
	// message says why, for people.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	Message string `json:"message,omitempty"`
}

// NodeSummary counts a rollout's nodes by step.
type NodeSummary struct {
	// total is the number of planned nodes.
	// +optional
	Total int32 `json:"total,omitempty"`
	// pending nodes have not started.
	// +optional
	Pending int32 `json:"pending,omitempty"`
	// inProgress nodes are cordoned or acting.
	// +optional
	InProgress int32 `json:"inProgress,omitempty"`
	// done nodes were verified and uncordoned.
	// +optional
	Done int32 `json:"done,omitempty"`
	// halted nodes stopped the rollout.
	// +optional
	Halted int32 `json:"halted,omitempty"`
	// unresolved nodes were acted on and their tokens stayed stale.
	// +optional
	Unresolved int32 `json:"unresolved,omitempty"`
	// excluded nodes were excluded by a person.
	// +optional
	Excluded int32 `json:"excluded,omitempty"`
	// dryRun nodes were planned only.
	// +optional
	DryRun int32 `json:"dryRun,omitempty"`
}

// NodeResult is what became of one node.
type NodeResult struct {
	// name is the Node's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// step is where the node stands.
	// +required
	Step NodeStep `json:"step"`
	// strategy is what the node gets.
	// +optional
	Strategy Strategy `json:"strategy,omitempty"`
	// policy names the RolloutPolicy that covered the node when it
	// started; omitted: none did, and the coordinator's flags applied.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Policy string `json:"policy,omitempty"`
	// drain says how the node's pods were to be drained or evicted: the
	// settings its policy gave it, or the coordinator's flags.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Drain string `json:"drain,omitempty"`
	// reason is a CamelCase word for why the node is in its step (for a
	// halted node, the halt reason, like DrainTimeout).
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Reason string `json:"reason,omitempty"`
	// message says why the node was planned, then what became of it.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Message string `json:"message,omitempty"`
	// action says what a person can do about it, like
	// `tokenroll rollout retry NODE`.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Action string `json:"action,omitempty"`
	// would is, in a dry run, what would have been done to the node.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Would string `json:"would,omitempty"`
	// deadline is when the node's old-issuer tokens stop working.
	// +optional
	Deadline *metav1.Time `json:"deadline,omitempty"`
	// lastTransitionTime is when the node entered its step.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
}

// TokenRolloutList is a list of TokenRollouts.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type TokenRolloutList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TokenRollout `json:"items"`
}
