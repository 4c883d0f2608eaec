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
