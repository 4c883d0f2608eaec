// Package token decodes the claims of a projected service-account token and
// judges it by the kubelet's rotation rules. It is pure: no files, no clock,
// no network. Token bytes go in; only claims come out, and no error message
// quotes the token.
package token

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"time"
)

// MaxSize is the largest token file read: a bound token is about 1 KiB.
const MaxSize = 64 << 10

// Claims are what tokenroll needs from a bound token.
type Claims struct {
	Issuer    string
	Audiences []string
	IssuedAt  time.Time
	Expires   time.Time
	// WarnAfter is kubernetes.io.warnafter: set on extended tokens, whose
	// exp is a year out; zero when absent.
	WarnAfter      time.Time
	Namespace      string
	PodName        string
	PodUID         string
	ServiceAccount string
	NodeName       string
}

// LooksLikeJWT reports whether data has the JWT compact shape: three
// dot-separated base64url segments (a trailing newline allowed). Files that do
// not (ca.crt, namespace) are not tokens and are not reported.
func LooksLikeJWT(data []byte) bool {
	data = bytes.TrimRight(data, "\r\n")
	segments, n := 0, 0
	for _, c := range data {
		switch {
		case c == '.':
			if n == 0 {
				return false
			}
			segments++
			n = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
			n++
		default:
			return false
		}
	}
	return segments == 2 && n > 0
}

// claimError describes a malformed claim in words of our own, never the
// claim's value.
type claimError string

func (e claimError) Error() string { return string(e) }

// seconds turns a NumericDate into whole seconds, refusing what no token
// carries (negative, NaN, beyond year 36812).
func seconds(name string, n number) (int64, bool, error) {
	if !n.set {
		return 0, false, nil
	}
	if math.IsNaN(n.f) || n.f < 0 || n.f > 1<<40 {
		return 0, false, fmt.Errorf("claim %q is not a plausible NumericDate", name)
	}
	return int64(math.Floor(n.f)), true, nil
}

// Parse decodes the claims of a compact JWT. It does not verify the
// signature. Its errors describe the defect without quoting the token.
func Parse(data []byte) (Claims, error) {
	data = bytes.TrimRight(data, "\r\n")
	if len(data) > MaxSize {
		return Claims{}, fmt.Errorf("token is %d bytes, larger than the %d a token can be", len(data), MaxSize)
	}
	first := bytes.IndexByte(data, '.')
	if first < 0 {
		return Claims{}, errors.New("not a JWT: no '.' separating header and payload")
	}
	rest := data[first+1:]
	second := bytes.IndexByte(rest, '.')
	if second < 0 || bytes.IndexByte(rest[second+1:], '.') >= 0 {
		return Claims{}, errors.New("not a JWT: want exactly three dot-separated segments")
	}
	seg := bytes.TrimRight(rest[:second], "=")
	// A bound token's payload, about 700 bytes, decodes on the stack; the
	// claims keep copies of what they need.
	var stack [2048]byte
	var payload []byte
	if n := base64.RawURLEncoding.DecodedLen(len(seg)); n <= len(stack) {
		payload = stack[:n]
	} else {
		payload = make([]byte, n)
	}
	n, err := base64.RawURLEncoding.Decode(payload, seg)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return Claims{}, fmt.Errorf("payload is not base64url (bad input at byte %d)", int64(ce))
		}
		return Claims{}, errors.New("payload is not base64url")
	}
	payload = payload[:n]
	defer clear(payload)

	w, err := decodeWire(payload)
	if err != nil {
		return Claims{}, err
	}
	iat, hasIat, err := seconds("iat", w.Iat)
	if err != nil {
		return Claims{}, err
	}
	exp, hasExp, err := seconds("exp", w.Exp)
	if err != nil {
		return Claims{}, err
	}
	warn, hasWarn, err := seconds("kubernetes.io.warnafter", w.WarnAfter)
	if err != nil {
		return Claims{}, err
	}
	var missing []string
	if !hasIat {
		missing = append(missing, "iat")
	}
	if !hasExp {
		missing = append(missing, "exp")
	}
	if len(missing) > 0 {
		return Claims{}, fmt.Errorf("missing claim %v", missing)
	}
	if exp <= iat {
		return Claims{}, fmt.Errorf("exp %d is not after iat %d", exp, iat)
	}
	if hasWarn && warn <= iat {
		return Claims{}, fmt.Errorf("kubernetes.io.warnafter %d is not after iat %d", warn, iat)
	}
	if w.AudBad {
		return Claims{}, claimError(`claim "aud" is neither a string nor a list of strings`)
	}
	c := Claims{
		Issuer:         w.Iss,
		Audiences:      w.Aud,
		IssuedAt:       time.Unix(iat, 0).UTC(),
		Expires:        time.Unix(exp, 0).UTC(),
		Namespace:      w.Namespace,
		PodName:        w.PodName,
		PodUID:         w.PodUID,
		ServiceAccount: w.ServiceAccount,
		NodeName:       w.NodeName,
	}
	if hasWarn {
		c.WarnAfter = time.Unix(warn, 0).UTC()
	}
	return c, nil
}
