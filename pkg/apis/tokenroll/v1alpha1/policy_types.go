package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Strategy names a remediation: what a node gets between its cordon and
// its uncordon. The values are the coordinator's strategies, least
// disruptive first (a test holds them equal).
// +kubebuilder:validation:Enum=auto;kubelet-restart;pod-restart;reboot
type Strategy string

// The strategies.
const (
	// StrategyAuto restarts the kubelet, then evicts only the pods whose
	// apps still present a replaced token (from the API servers' audit
	// events), and reboots only a node whose kubelet restart refreshed
	// nothing or that asks for it.
	StrategyAuto Strategy = "auto"
	// StrategyKubeletRestart restarts kubelet.service: the kubelet's token
	// cache is empty afterwards, so every projected token on the node is
	// requested again without restarting a pod.
	StrategyKubeletRestart Strategy = "kubelet-restart"
	// StrategyPodRestart evicts only the pods whose tokens are stale,
	// honouring PodDisruptionBudgets.
	StrategyPodRestart Strategy = "pod-restart"
	// StrategyReboot drains and reboots the node, as the OpenShift
	// documentation's procedure does by hand.
	StrategyReboot Strategy = "reboot"
)

// RolloutPolicy says how the nodes it selects (a pool) may be remediated:
// the strategy, how many at once, when, what blocks a node, how to drain,
// and whom to tell. A policy without a node selector is the default one: it
// covers every node no other policy selects.
//
// +genclient
// +genclient:nonNamespaced
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=rp,categories=tokenroll
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Strategy",type=string,JSONPath=`.spec.strategy`
// +kubebuilder:printcolumn:name="Max-Unavailable",type=string,JSONPath=`.spec.maxUnavailable`
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodes`
// +kubebuilder:printcolumn:name="Dry-Run",type=boolean,JSONPath=`.spec.dryRun`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Next-Window",type=string,JSONPath=`.status.nextWindowStart`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RolloutPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the administrator wants.
	// +optional
	Spec RolloutPolicySpec `json:"spec,omitempty"`
	// status is what the coordinator found: whether it accepted the policy,
	// how many nodes it covers, its next window.
	// +optional
	Status RolloutPolicyStatus `json:"status,omitempty"`
}

// RolloutPolicySpec is a pool's rollout policy.
//
// +kubebuilder:validation:XValidation:rule="!has(self.deadlineMaxUnavailable) || type(self.deadlineMaxUnavailable) != int || type(self.maxUnavailable) != int || self.deadlineMaxUnavailable >= self.maxUnavailable",message="deadlineMaxUnavailable is a ceiling above maxUnavailable: it must be at least maxUnavailable"
type RolloutPolicySpec struct {
	// nodeSelector selects the nodes this policy covers: one policy per
	// pool. Policies whose selectors both match a node are refused for that
	// node (the coordinator reports it in each policy's Accepted condition
	// and leaves the node alone). Omitted: the default policy, for every
	// node no other policy selects; there is at most one.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// strategy is what each node gets, unless a TokenRollout overrides it
	// or the node reports a required reboot. Omitted: the coordinator's
	// --strategy.
	// +optional
	Strategy Strategy `json:"strategy,omitempty"`

	// maxUnavailable is the most nodes of this pool disrupted at once, as a
	// number (at least 1) or a percentage of the pool's nodes (1% to 100%,
	// rounded down, and never less than one node). Nodes already NotReady
	// or cordoned by others count against it.
	// +kubebuilder:default=1
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) != int || self >= 1",message="maxUnavailable must be at least 1 node"
	// +kubebuilder:validation:XValidation:rule="type(self) != string || self.matches('^([1-9][0-9]?|100)%$')",message="maxUnavailable as a string must be a percentage from 1% to 100%, like 10%"
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`

	// deadlineMaxUnavailable is the ceiling the coordinator may raise the
	// pool's concurrency to when, at maxUnavailable, the rollout would end
	// after the old issuer stops being trusted (OpenShift keeps it 24
	// hours): a number or a percentage, like maxUnavailable, and not below
	// it. Omitted: never above maxUnavailable, whatever the deadline.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) != int || self >= 1",message="deadlineMaxUnavailable must be at least 1 node"
	// +kubebuilder:validation:XValidation:rule="type(self) != string || self.matches('^([1-9][0-9]?|100)%$')",message="deadlineMaxUnavailable as a string must be a percentage from 1% to 100%, like 25%"
	// +optional
	DeadlineMaxUnavailable *intstr.IntOrString `json:"deadlineMaxUnavailable,omitempty"`

	// zones limits and orders the work by zone.
	// +optional
	Zones *ZonePolicy `json:"zones,omitempty"`

	// windows are the times a node may start: outside every window no new
	// node starts, nodes already acting finish, and the rollout resumes in
	// the next window. Windows may overlap. Empty: any time.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Windows []MaintenanceWindow `json:"windows,omitempty"`

	// blockers keep a node from starting while they hold.
	// +optional
	Blockers *Blockers `json:"blockers,omitempty"`

	// healthGate holds the pool's next node until the cluster has
	// recovered from the last one.
	// +optional
	HealthGate *HealthGate `json:"healthGate,omitempty"`

	// drain says how a node's pods are moved off it (the reboot strategy)
	// or evicted (pod-restart).
	// +optional
	Drain *DrainOptions `json:"drain,omitempty"`

	// notifications are the webhooks told of the rollouts of this pool.
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=name
	// +optional
	Notifications []Notification `json:"notifications,omitempty"`

	// dryRun makes every rollout of this pool a plan: the coordinator
	// reports each step it would take and acts on nothing.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
}

// ZoneOrder says how the zones of a pool take their turns.
// +kubebuilder:validation:Enum=Sequential;Parallel
type ZoneOrder string

// The zone orders.
const (
	// ZoneOrderSequential: a zone finishes before the next starts.
	ZoneOrderSequential ZoneOrder = "Sequential"
	// ZoneOrderParallel: nodes of every zone start as the limits allow.
	ZoneOrderParallel ZoneOrder = "Parallel"
)

// ZonePolicy limits and orders a pool's work by zone.
type ZonePolicy struct {
	// topologyKey is the node label that names a node's zone. Nodes without
	// it form one zone of their own, named "".
	// +kubebuilder:default="topology.kubernetes.io/zone"
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:XValidation:rule="self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",message="topologyKey must be a label key, like topology.kubernetes.io/zone"
	// +optional
	TopologyKey string `json:"topologyKey,omitempty"`

	// maxUnavailable is the most nodes of one zone disrupted at once, on
	// top of the pool's maxUnavailable. Omitted: no limit per zone.
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="zones.maxUnavailable must be at least 1 node per zone; omit it for no limit per zone"
	// +optional
	MaxUnavailable *int32 `json:"maxUnavailable,omitempty"`

	// order is Sequential (a zone finishes before the next starts) or
	// Parallel.
	// +kubebuilder:default=Sequential
	// +optional
	Order ZoneOrder `json:"order,omitempty"`

	// sequence is the order of the zones when Sequential; zones not listed
	// follow in the order of their names.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=63
	// +listType=set
	// +optional
	Sequence []string `json:"sequence,omitempty"`
}

// Weekday is a day of the week.
// +kubebuilder:validation:Enum=Monday;Tuesday;Wednesday;Thursday;Friday;Saturday;Sunday
type Weekday string

// MaintenanceWindow is a time of day, on some days of the week, in one time
// zone, when nodes may start.
//
// +kubebuilder:validation:XValidation:rule="self.start != self.end",message="a window's end must differ from its start; for a whole day, omit windows or use start 00:00 and end 23:59"
type MaintenanceWindow struct {
	// days the window opens on (the day of its start, when it runs past
	// midnight). Empty: every day.
	// +kubebuilder:validation:MaxItems=7
	// +listType=set
	// +optional
	Days []Weekday `json:"days,omitempty"`

	// start is when the window opens, HH:MM on a 24-hour clock.
	// +kubebuilder:validation:MaxLength=5
	// +kubebuilder:validation:XValidation:rule="self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')",message="start must be a time of day HH:MM from 00:00 to 23:59, like 22:00"
	// +required
	Start string `json:"start"`

	// end is when the window closes, HH:MM on a 24-hour clock; an end
	// before the start closes the window the next day.
	// +kubebuilder:validation:MaxLength=5
	// +kubebuilder:validation:XValidation:rule="self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')",message="end must be a time of day HH:MM from 00:00 to 23:59, like 06:00"
	// +required
	End string `json:"end"`

	// timeZone is the IANA time zone the times are in, like Europe/Paris.
	// The schema checks its form only: the coordinator reports a zone its
	// time zone database does not know in the policy's Accepted condition,
	// and never opens such a window.
	// +kubebuilder:default=UTC
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$')",message="timeZone must be an IANA time zone name, like UTC or America/New_York"
	// +optional
	TimeZone string `json:"timeZone,omitempty"`
}

// HealthGate holds a pool's next node until the cluster has recovered
// from the nodes already done.
//
// +kubebuilder:validation:XValidation:rule="self.evictedPodsReady || self.nodesReady",message="a health gate must wait for something: set evictedPodsReady, nodesReady or both"
type HealthGate struct {
	// evictedPodsReady waits until the controllers of the pods tokenroll
	// evicted from the pool's nodes (ReplicaSets, StatefulSets,
	// DaemonSets) report every replica Ready again.
	// +optional
	EvictedPodsReady bool `json:"evictedPodsReady,omitempty"`

	// nodesReady waits until every node of the cluster tokenroll is not
	// working on is Ready.
	// +optional
	NodesReady bool `json:"nodesReady,omitempty"`
}

// Blockers keep a node from starting while they hold.
type Blockers struct {
	// pods: a non-terminal pod on a node that one of these selects keeps
	// the node from starting.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Pods []PodSelector `json:"pods,omitempty"`

	// alerts: firing (and optionally pending) Prometheus alerts that hold
	// the whole pool, checked before each disruptive step.
	// +optional
	Alerts *AlertBlocker `json:"alerts,omitempty"`
}

// PodSelector selects pods by their labels and their namespace's.
type PodSelector struct {
	// selector selects pods by label.
	// +required
	Selector metav1.LabelSelector `json:"selector"`
	// namespaceSelector selects the namespaces the pods may be in. Omitted:
	// every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
}

// AlertBlocker reads alerts from a Prometheus (or Alertmanager-compatible
// /api/v1/alerts) endpoint.
type AlertBlocker struct {
	// prometheusURL is the base URL of the Prometheus server, http or
	// https.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http')",message="prometheusURL must be an http or https URL, like https://prometheus.monitoring.svc:9090"
	// +required
	PrometheusURL string `json:"prometheusURL"`

	// bearerTokenSecretRef names the Secret key holding a bearer token sent
	// to Prometheus.
	// +optional
	BearerTokenSecretRef *SecretKeyRef `json:"bearerTokenSecretRef,omitempty"`

	// caSecretRef names the Secret key holding the PEM CA bundle that
	// Prometheus' certificate must chain to. Omitted: the system's roots.
	// +optional
	CASecretRef *SecretKeyRef `json:"caSecretRef,omitempty"`

	// alertNames are regular expressions (RE2, anchored) over alert names:
	// an alert whose name matches any blocks. Empty: every alert.
	// The coordinator reports an expression that does not compile in the
	// policy's Accepted condition.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=256
	// +listType=atomic
	// +optional
	AlertNames []string `json:"alertNames,omitempty"`

	// matchers further restrict the blocking alerts by label: all must
	// match.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Matchers []AlertMatcher `json:"matchers,omitempty"`

	// includePending blocks on pending alerts too, not only firing ones.
	// +optional
	IncludePending bool `json:"includePending,omitempty"`

	// ignore are regular expressions (RE2, anchored) over alert names that
	// never block. The default ignores tokenroll's own alerts, which fire
	// because tokens are stale: the rollout is their cure.
	// +kubebuilder:default={"Tokenroll.*"}
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=256
	// +listType=atomic
	// +optional
	Ignore []string `json:"ignore,omitempty"`
}

// MatchOperator compares an alert label with a value, as Alertmanager's
// matchers do.
// +kubebuilder:validation:Enum="=";"!=";"=~";"!~"
type MatchOperator string

// AlertMatcher matches one label of an alert.
type AlertMatcher struct {
	// label is the alert label's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-zA-Z_][a-zA-Z0-9_]*$')",message="label must be a Prometheus label name, like severity"
	// +required
	Label string `json:"label"`
	// operator is =, !=, =~ or !~ (the last two: an anchored RE2 regular
	// expression).
	// +kubebuilder:default="="
	// +optional
	Operator MatchOperator `json:"operator,omitempty"`
	// value is what the label is compared with.
	// +kubebuilder:validation:MaxLength=256
	// +required
	Value string `json:"value"`
}

// SecretKeyRef names one key of a Secret in the coordinator's own
// namespace: a cluster-scoped policy names no namespace, so that the
// coordinator reads Secrets of its own namespace only.
type SecretKeyRef struct {
	// name is the Secret's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="name must be a Secret's name (lower-case letters, digits, '-' and '.')"
	// +required
	Name string `json:"name"`
	// key is the key in the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="key must be a Secret data key (letters, digits, '-', '_' and '.')"
	// +required
	Key string `json:"key"`
}

// DrainOptions say how a node's pods are evicted.
type DrainOptions struct {
	// timeout is the longest a drain (or a pod restart's evictions) may
	// take before the rollout halts. Omitted: the coordinator's
	// --drain-timeout.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// gracePeriodSeconds overrides each evicted pod's
	// terminationGracePeriodSeconds. Omitted: the pod's own.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	// +optional
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds,omitempty"`

	// evictUnmanagedPods lets a drain evict pods that no controller
	// recreates (they are lost); without it such a pod halts the rollout,
	// unless the coordinator runs with --drain-force.
	// +optional
	EvictUnmanagedPods bool `json:"evictUnmanagedPods,omitempty"`

	// forceDeletePods selects the pods a drain may delete outright when
	// their eviction is still refused (a PodDisruptionBudget) at the
	// timeout, instead of halting; a deleted pod is not waited for. Empty:
	// none; every pod is evicted.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	ForceDeletePods []PodSelector `json:"forceDeletePods,omitempty"`
}

// NotificationEvent is something a webhook can be told.
// +kubebuilder:validation:Enum=RolloutStarted;RolloutHalted;NodeDone;RolloutComplete;DeadlineAtRisk
type NotificationEvent string

// The notification events.
const (
	NotifyRolloutStarted  NotificationEvent = "RolloutStarted"
	NotifyRolloutHalted   NotificationEvent = "RolloutHalted"
	NotifyNodeDone        NotificationEvent = "NodeDone"
	NotifyRolloutComplete NotificationEvent = "RolloutComplete"
	NotifyDeadlineAtRisk  NotificationEvent = "DeadlineAtRisk"
)

// NotificationFormat is the body a webhook receives.
// +kubebuilder:validation:Enum=JSON;Slack
type NotificationFormat string

// The notification formats.
const (
	// NotificationJSON posts tokenroll's own JSON document.
	NotificationJSON NotificationFormat = "JSON"
	// NotificationSlack posts a Slack-compatible incoming-webhook message.
	NotificationSlack NotificationFormat = "Slack"
)

// Notification is one webhook. Deliveries are retried and never hold a
// rollout.
type Notification struct {
	// name identifies the webhook in the policy's status and in events.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="name must be a DNS label (lower-case letters, digits and '-')"
	// +required
	Name string `json:"name"`

	// urlSecretRef names the Secret key holding the webhook's URL: a Slack
	// incoming webhook's URL is its credential.
	// +required
	URLSecretRef SecretKeyRef `json:"urlSecretRef"`

	// format is JSON (tokenroll's document) or Slack.
	// +kubebuilder:default=JSON
	// +optional
	Format NotificationFormat `json:"format,omitempty"`

	// events are what the webhook is told. Empty: all but NodeDone.
	// +kubebuilder:validation:MaxItems=5
	// +listType=set
	// +optional
	Events []NotificationEvent `json:"events,omitempty"`
}

// RolloutPolicyStatus is what the coordinator found of a policy.
type RolloutPolicyStatus struct {
	// observedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted (False with the reason when the policy cannot be
	// used: a selector overlapping another policy's, a second default
	// policy, an unknown time zone, an alert expression that does not
	// compile, a Secret that cannot be read).
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// nodes is how many nodes the policy covers.
	// +optional
	Nodes int32 `json:"nodes,omitempty"`

	// nextWindowStart is when the policy's next window opens (omitted while
	// one is open, or without windows).
	// +optional
	NextWindowStart *metav1.Time `json:"nextWindowStart,omitempty"`
}

// RolloutPolicyList is a list of RolloutPolicies.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type RolloutPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RolloutPolicy `json:"items"`
}
