// Package protocol holds the names the agent and the coordinator share on
// the Node object: annotations, the condition type and the token states.
// Changing a value here is a wire-format change.
package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"unicode/utf8"
)

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
	// StateForeign is a JWT in a pod's volume that is not one of the pod's
	// service-account tokens: a ConfigMap, Secret or downward API item (a
	// GitHub or Vault token, or a forgery). It is listed and counted, and
	// never judged, never an alarm, never a reason to act.
	StateForeign State = "foreign"
)

// States lists every state in severity order, worst first. Orphaned tokens
// (left behind by a deleted pod) and foreign ones (not service-account
// tokens) are not an alarm and sort last.
var States = []State{StateInvalid, StateClockSkew, StateExpired, StateIssuerMismatch, StateOverdue, StateRefreshDue, StateFresh, StateOrphaned, StateForeign}

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
// overdue). Fresh and refresh-due tokens are refreshed by the kubelet,
// orphaned ones go with their volume, and foreign ones are not tokens the
// kubelet manages.
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

// PodsAPI says where a scan learnt which pods run on the node and which of
// their files are service-account tokens.
type PodsAPI string

// The answers a scan can have had from the kubelet Pods API.
const (
	// PodsAPIListed: the kubelet listed its pods; only their
	// serviceAccountToken projections are judged, and volumes of pods it
	// does not run are orphaned.
	PodsAPIListed PodsAPI = "listed"
	// PodsAPIAbsent: the node has no Pods API (feature off, or its socket
	// not mounted): tokens are attributed by their claims and nothing is
	// judged orphaned, which can only make a node look worse, never clean.
	PodsAPIAbsent PodsAPI = "absent"
	// PodsAPIUnavailable: the socket is there but the kubelet did not
	// answer (it refuses connections just after a restart).
	PodsAPIUnavailable PodsAPI = "unavailable"
	// PodsAPIInitializing: the kubelet answered "Kubelet is initializing"
	// (about a second after a restart).
	PodsAPIInitializing PodsAPI = "initializing"
	// PodsAPIEmpty: the kubelet listed no pods while pod directories with
	// projected volumes exist; not believed.
	PodsAPIEmpty PodsAPI = "empty"
)

// Complete reports whether a scan with this answer saw every pod the
// kubelet runs, or knew it could not ask (absent). "" is a report from an
// agent that predates the field: complete.
func (p PodsAPI) Complete() bool {
	return p == "" || p == PodsAPIListed || p == PodsAPIAbsent
}

// MaxClaimLen is the most bytes of a string from a token (a claim), a file
// name or a path that tokenroll puts in any output: the scan's table and
// JSON, metric labels, Node annotations and conditions, Events and logs.
const MaxClaimLen = 256

// Truncate caps s at MaxClaimLen bytes. A longer s keeps its first bytes
// (cut on a character boundary) and ends in "…" and eight hex digits of its
// SHA-256, so two long values that share a prefix stay distinct (as metric
// labels and issuer names must).
func Truncate(s string) string {
	if len(s) <= MaxClaimLen {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	suffix := "…" + hex.EncodeToString(sum[:4])
	cut := MaxClaimLen - len(suffix)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + suffix
}
