package token

import (
	"fmt"
	"time"

	"github.com/tokenroll/tokenroll/protocol"
)

// The kubelet's rotation rule (pkg/kubelet/token/token_manager.go): refresh
// once older than 24 hours or within 20% of the lifetime of expiry.
const (
	MaxTTL = 24 * time.Hour
	// MaxClockSkew is how far in the future an iat may be before the token
	// is judged clock-skew rather than trusted.
	MaxClockSkew = time.Minute
	// DefaultGrace covers the kubelet's 60-90 s volume rewrite period.
	DefaultGrace = 5 * time.Minute
)

// TTL is the lifetime the kubelet refreshes by: warnafter - iat for an
// extended token, else exp - iat, in whole seconds.
func (c Claims) TTL() time.Duration {
	if !c.WarnAfter.IsZero() {
		return c.WarnAfter.Sub(c.IssuedAt).Truncate(time.Second)
	}
	return c.Expires.Sub(c.IssuedAt).Truncate(time.Second)
}

// RefreshAt is the latest moment the kubelet will have decided to refresh
// the token: min(iat + ttl - floor(ttl*20/100), iat + 24h), integer seconds
// as the kubelet computes it.
func (c Claims) RefreshAt() time.Time {
	ttl := int64(c.TTL() / time.Second)
	at := c.IssuedAt.Add(time.Duration(ttl-ttl*20/100) * time.Second)
	if limit := c.IssuedAt.Add(MaxTTL); limit.Before(at) {
		return limit
	}
	return at
}

// Verdict is the judgement on one token.
type Verdict struct {
	State  protocol.State
	Reason string
}

// Judge applies the rules in order, first match wins: clock-skew, expired,
// issuer-mismatch, overdue, refresh-due, fresh. expectedIssuer "" means the
// issuer is unknown and not checked. (invalid and orphaned are decided
// before the claims are judged.)
func Judge(c Claims, now time.Time, expectedIssuer string, grace time.Duration) Verdict {
	refreshAt := c.RefreshAt()
	switch {
	case c.IssuedAt.After(now.Add(MaxClockSkew)):
		return Verdict{protocol.StateClockSkew, fmt.Sprintf("issued %s in the future; check the clocks of this node and the API server", c.IssuedAt.Sub(now).Round(time.Second))}
	case !now.Before(c.Expires):
		return Verdict{protocol.StateExpired, fmt.Sprintf("expired %s ago; the API server rejects it", now.Sub(c.Expires).Round(time.Second))}
	case expectedIssuer != "" && c.Issuer != expectedIssuer:
		return Verdict{protocol.StateIssuerMismatch, fmt.Sprintf("issued by %q, the API server now signs as %q", protocol.Truncate(c.Issuer), protocol.Truncate(expectedIssuer))}
	case !now.Before(refreshAt.Add(grace)):
		return Verdict{protocol.StateOverdue, fmt.Sprintf("due for refresh %s ago (grace %s); the kubelet has not replaced it", now.Sub(refreshAt).Round(time.Second), grace)}
	case !now.Before(refreshAt):
		return Verdict{protocol.StateRefreshDue, fmt.Sprintf("due for refresh %s ago; the kubelet replaces it within its sync period", now.Sub(refreshAt).Round(time.Second))}
	default:
		return Verdict{protocol.StateFresh, ""}
	}
}
