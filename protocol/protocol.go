// Package protocol holds the names the agent and the coordinator share on
// the Node object: annotations, the condition type and the token states.
// Changing a value here is a wire-format change.
package protocol

// Prefix is the domain of every tokenroll annotation and label.
const Prefix = "tokenroll.io/"

// ConditionTokensStale is the Node condition an agent sets on its own Node:
// True when any projected token there is overdue, expired or from the wrong
// issuer.
const ConditionTokensStale = "ServiceAccountTokensStale"

// State is the verdict on one projected token file.
type State string

// The states, worst first; the order is the order of the rules that decide
// them (first match wins).
const (
	StateInvalid        State = "invalid"
	StateClockSkew      State = "clock-skew"
	StateExpired        State = "expired"
	StateIssuerMismatch State = "issuer-mismatch"
	StateOverdue        State = "overdue"
	StateRefreshDue     State = "refresh-due"
	StateFresh          State = "fresh"
	StateOrphaned       State = "orphaned"
)

// States lists every state in severity order, worst first. Orphaned tokens
// (left behind by a deleted pod) are not an alarm and sort last.
var States = []State{StateInvalid, StateClockSkew, StateExpired, StateIssuerMismatch, StateOverdue, StateRefreshDue, StateFresh, StateOrphaned}

// Severity orders states for display: lower is worse.
func (s State) Severity() int {
	for i, st := range States {
		if st == s {
			return i
		}
	}
	return len(States)
}

// Valid reports whether s names a known state.
func (s State) Valid() bool { return s.Severity() < len(States) }

// NeedsWork reports whether a token in state s is counted as stale: it will
// not heal by itself (invalid, clock-skew, expired, issuer-mismatch,
// overdue). Fresh and refresh-due tokens are refreshed by the kubelet, and
// orphaned ones go with their volume.
func (s State) NeedsWork() bool {
	switch s {
	case StateInvalid, StateClockSkew, StateExpired, StateIssuerMismatch, StateOverdue:
		return true
	}
	return false
}

// Alarm reports whether a token in state s is, or soon will be, rejected by
// the API server (expired, issuer-mismatch, overdue): such tokens make
// ConditionTokensStale True and their pods are the stale pods.
func (s State) Alarm() bool {
	return s == StateExpired || s == StateIssuerMismatch || s == StateOverdue
}

// NotRefreshed reports whether the kubelet should have replaced a token in
// state s and has not (expired, overdue): only a remediation refreshes it,
// whatever issuer signed it. Issuer-mismatch tokens are judged by their
// issuer's trust instead.
func (s State) NotRefreshed() bool { return s == StateExpired || s == StateOverdue }
