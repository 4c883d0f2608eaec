package protocol

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
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
	// name, at most MaxIssuers of them (see CapIssuers). The expected
	// issuer's count, like Tokens, is as of the last write. IssuersTruncated
	// says some issuers were left out to keep the annotation within
	// MaxTokenReportBytes (those with the fewest tokens).
	Issuers          []IssuerTokens `json:"issuers,omitempty"`
	IssuersTruncated bool           `json:"issuersTruncated,omitempty"`
	// StalePods are the pods holding tokens in an alarm state (State.Alarm),
	// at most MaxStalePods of them and fewer when the annotation would
	// exceed MaxTokenReportBytes; StalePodsTruncated says some were left
	// out.
	StalePods          []PodRef `json:"stalePods,omitempty"`
	StalePodsTruncated bool     `json:"stalePodsTruncated,omitempty"`
	// PodsAPI is set only when the scan had no complete list of the
	// kubelet's pods (PodsAPI.Complete is false): its tokens were attributed
	// by their claims and nothing was judged orphaned. Such a report never
	// verifies an action.
	PodsAPI PodsAPI `json:"podsAPI,omitempty"`
	// PartialScan says some directory held more entries than the scanner
	// reads; the agent's log and `tokenroll scan` name it.
	PartialScan bool `json:"partialScan,omitempty"`
	// TokenIDs maps a live pod's UID to the tokens its volumes held at the
	// scan, each as TokenIDEntry (at most MaxTokenIDsPerPod): app
	// detection matches them with the credential IDs the API server audits
	// when its audit events do not name the pod a token was issued for
	// (OpenShift's default audit profile). They change with every token
	// refresh, so they never make the agent write by themselves: they ride
	// along with the writes the rest of the report makes (at once on a
	// change the coordinator acts on, else at most hourly). Left out first
	// when the report outgrows MaxTokenReportBytes.
	TokenIDs map[string][]string `json:"tokenIDs,omitempty"`
}

// MaxTokenIDsPerPod bounds a pod's entries in TokenReport.TokenIDs: a pod
// has one token per projected serviceAccountToken source.
const MaxTokenIDsPerPod = 8

// TokenID names a token in a report by its jti claim: the first 8 bytes of
// the jti's SHA-256, in hex. A jti is an identifier, not a secret (the API
// server audits it with every request the token makes, and it
// authenticates nothing); the digest makes it short and of one size.
func TokenID(jti string) string {
	sum := sha256.Sum256([]byte(jti))
	return hex.EncodeToString(sum[:8])
}

// TokenIDEntry is one token of a pod in TokenReport.TokenIDs: "ID@iat",
// iat in Unix seconds.
func TokenIDEntry(id string, issuedAt time.Time) string {
	return id + "@" + strconv.FormatInt(issuedAt.Unix(), 10)
}

// ParseTokenIDEntry reads a TokenIDEntry; ok is false for anything else.
func ParseTokenIDEntry(e string) (id string, issuedAt time.Time, ok bool) {
	id, at, found := strings.Cut(e, "@")
	if !found || len(id) != 16 {
		return "", time.Time{}, false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", time.Time{}, false
	}
	sec, err := strconv.ParseInt(at, 10, 64)
	if err != nil || sec <= 0 || sec > 1<<40 {
		return "", time.Time{}, false
	}
	return id, time.Unix(sec, 0).UTC(), true
}

// Complete reports whether the scan behind the report saw every pod the
// kubelet runs (see PodsAPI.Complete).
func (r TokenReport) Complete() bool { return r.PodsAPI.Complete() }

// MaxIssuers bounds TokenReport.Issuers: tokens from issuers beyond it are
// counted under IssuerOverflow.
const MaxIssuers = 8

// IssuerOverflow is the issuer name under which CapIssuers counts the
// tokens of the issuers it leaves out. It is no issuer's name (an issuer is
// a URL), so it is never trusted and never the current issuer.
const IssuerOverflow = "(other issuers)"

// CapIssuers keeps at most MaxIssuers entries: current (the issuer the
// agent judged against) first, then those with the most tokens; the rest are
// summed into one IssuerOverflow entry with the latest LastRefreshAt. The
// result is sorted by name with the overflow entry last.
func CapIssuers(its []IssuerTokens, current string) []IssuerTokens {
	out := slices.Clone(its)
	if len(out) > MaxIssuers {
		slices.SortFunc(out, func(a, b IssuerTokens) int {
			return cmp.Or(-cmp.Compare(boolInt(a.Issuer == current), boolInt(b.Issuer == current)),
				-cmp.Compare(a.Tokens, b.Tokens), cmp.Compare(a.Issuer, b.Issuer))
		})
		rest := IssuerTokens{Issuer: IssuerOverflow}
		for _, it := range out[MaxIssuers-1:] {
			rest.Tokens += it.Tokens
			if it.LastRefreshAt.After(rest.LastRefreshAt) {
				rest.LastRefreshAt = it.LastRefreshAt
			}
		}
		out = append(out[:MaxIssuers-1], rest)
	}
	slices.SortFunc(out, func(a, b IssuerTokens) int {
		return cmp.Or(cmp.Compare(boolInt(a.Issuer == IssuerOverflow), boolInt(b.Issuer == IssuerOverflow)), cmp.Compare(a.Issuer, b.Issuer))
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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
	type plain TokenReport
	var r struct {
		versionRead
		plain
	}
	if err := decode(AnnotationTokens, "a JSON token report", value, &r, &r.versionRead); err != nil {
		return TokenReport{}, err
	}
	return TokenReport(r.plain), nil
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
