package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"
)

// AnnotationTokens is the agent's summary of the tokens on its node, a
// TokenReport as JSON. The agent writes it at once when what the
// coordinator acts on changes (stale tokens and the pods holding them,
// tokens of issuers other than the expected one), and otherwise at most
// once an hour: routine refreshes and pods coming and going change only
// the counts of healthy tokens, which wait for that hourly rewrite.
const AnnotationTokens = Prefix + "tokens"

// MaxStalePods bounds TokenReport.StalePods, so the annotation stays small
// on a node with many pods (the kubelet's default is 110 per node).
const MaxStalePods = 250

// MaxTokenReportBytes bounds the tokens annotation, whatever the node's
// volumes hold: detail is left out (StalePods first, then Issuers) and
// flagged until the value fits.
const MaxTokenReportBytes = 16 << 10

// TokenReport is what the coordinator needs from one node's scan.
type TokenReport struct {
	// Issuer is the signing issuer the agent judged against (OIDC discovery);
	// empty when it could not read it.
	Issuer string `json:"issuer"`
	// Tokens counts the tokens of live pods (orphaned volumes left out), as
	// of the last write: a change in it alone waits for the hourly rewrite.
	Tokens int `json:"tokens"`
	// Stale counts tokens in the states that need work (State.NeedsWork);
	// fresh and refresh-due are not counted, so a routine refresh does not
	// rewrite the annotation.
	Stale map[State]int `json:"stale,omitempty"`
	// Issuers has one entry per issuer seen in live pods' tokens, sorted by
	// name. The expected issuer's count, like Tokens, is as of the last
	// write. IssuersTruncated says some issuers were left out to keep the
	// annotation within MaxTokenReportBytes (those with the fewest tokens).
	Issuers          []IssuerTokens `json:"issuers,omitempty"`
	IssuersTruncated bool           `json:"issuersTruncated,omitempty"`
	// StalePods are the pods holding tokens in an alarm state (State.Alarm),
	// at most MaxStalePods of them and fewer when the annotation would
	// exceed MaxTokenReportBytes; StalePodsTruncated says some were left
	// out.
	StalePods          []PodRef `json:"stalePods,omitempty"`
	StalePodsTruncated bool     `json:"stalePodsTruncated,omitempty"`
}

// IssuerTokens counts the tokens from one issuer on a node.
type IssuerTokens struct {
	Issuer string `json:"issuer"`
	Tokens int    `json:"tokens"`
	// LastRefreshAt is the latest moment one of these tokens is due for
	// refresh by the kubelet: when all of them will have healed by
	// themselves, rounded up to the minute. Given only for issuers other than
	// the report's Issuer (the current issuer's tokens refresh all the time,
	// and writing that would rewrite the annotation on every refresh).
	LastRefreshAt time.Time `json:"lastRefreshAt,omitzero"`
}

// PodRef names a pod.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// String is namespace/name.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// ParseTokenReport decodes a tokens annotation.
func ParseTokenReport(value string) (TokenReport, error) {
	var r TokenReport
	if err := decode(AnnotationTokens, "a JSON token report", value, &r); err != nil {
		return TokenReport{}, err
	}
	return r, nil
}

// StaleTotal is the number of tokens needing work.
func (r TokenReport) StaleTotal() int { return r.Count(State.NeedsWork) }

// Count is the number of stale tokens in the states that match.
func (r TokenReport) Count(match func(State) bool) int {
	n := 0
	for s, c := range r.Stale {
		if match(s) {
			n += c
		}
	}
	return n
}

// Evidence is a short digest of what makes the node's tokens stale, apart
// from issuer: which states are present, which other issuers hold
// tokens, and which pods hold stale ones. Counts are left out, so pods
// coming and going with fresh tokens do not change it; a new stale pod, a
// new state or a new issuer does.
func (r TokenReport) Evidence(issuer string) string {
	var parts []string
	for s, c := range r.Stale {
		if c > 0 {
			parts = append(parts, "state="+string(s))
		}
	}
	for _, it := range r.Issuers {
		if it.Issuer != issuer && it.Tokens > 0 {
			parts = append(parts, "issuer="+it.Issuer)
		}
	}
	for _, p := range r.StalePods {
		parts = append(parts, "pod="+p.UID)
	}
	if r.StalePodsTruncated {
		parts = append(parts, "truncated")
	}
	slices.Sort(parts)
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
