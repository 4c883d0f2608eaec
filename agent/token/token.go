// Package token decodes the claims of a projected service-account token and
// judges it by the kubelet's rotation rules. It is pure: no files, no clock,
// no network. Token bytes go in; only claims come out, and no error message
// quotes the token.
package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
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

// wireClaims mirrors the payload. Dates are JSON numbers (NumericDate,
// possibly fractional); aud is a string or a list, decoded by hand.
type wireClaims struct {
	Iss  string          `json:"iss"`
	Aud  json.RawMessage `json:"aud"`
	Iat  *float64        `json:"iat"`
	Exp  *float64        `json:"exp"`
	Kube struct {
		Namespace string `json:"namespace"`
		Pod       struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
		ServiceAccount struct {
			Name string `json:"name"`
		} `json:"serviceaccount"`
		Node struct {
			Name string `json:"name"`
		} `json:"node"`
		WarnAfter *float64 `json:"warnafter"`
	} `json:"kubernetes.io"`
}

// seconds turns a NumericDate into whole seconds, refusing what no token
// carries (negative, NaN, beyond year 36812).
func seconds(name string, f *float64) (int64, bool, error) {
	if f == nil {
		return 0, false, nil
	}
	if math.IsNaN(*f) || *f < 0 || *f > 1<<40 {
		return 0, false, fmt.Errorf("claim %q is not a plausible NumericDate", name)
	}
	return int64(math.Floor(*f)), true, nil
}

func audiences(raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] == '"' {
		var one string
		if err := json.Unmarshal(raw, &one); err == nil {
			return []string{one}, nil
		}
	} else {
		var many []string
		if err := json.Unmarshal(raw, &many); err == nil {
			return many, nil
		}
	}
	return nil, claimError(`claim "aud" is neither a string nor a list of strings`)
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
	payload := make([]byte, base64.RawURLEncoding.DecodedLen(len(seg)))
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

	var w wireClaims
	if err := json.Unmarshal(payload, &w); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return Claims{}, fmt.Errorf("payload is not valid JSON (at byte %d)", se.Offset)
		case errors.As(err, &te) && te.Field == "":
			return Claims{}, fmt.Errorf("payload is a JSON %s, not an object of claims", te.Value)
		case errors.As(err, &te):
			return Claims{}, fmt.Errorf("claim %q has the wrong type (%s)", te.Field, te.Value)
		default:
			return Claims{}, errors.New("payload is not a JSON object of claims with the expected types")
		}
	}
	iat, hasIat, err := seconds("iat", w.Iat)
	if err != nil {
		return Claims{}, err
	}
	exp, hasExp, err := seconds("exp", w.Exp)
	if err != nil {
		return Claims{}, err
	}
	warn, hasWarn, err := seconds("kubernetes.io.warnafter", w.Kube.WarnAfter)
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
	aud, err := audiences(w.Aud)
	if err != nil {
		return Claims{}, err
	}
	c := Claims{
		Issuer:         w.Iss,
		Audiences:      aud,
		IssuedAt:       time.Unix(iat, 0).UTC(),
		Expires:        time.Unix(exp, 0).UTC(),
		Namespace:      w.Kube.Namespace,
		PodName:        w.Kube.Pod.Name,
		PodUID:         w.Kube.Pod.UID,
		ServiceAccount: w.Kube.ServiceAccount.Name,
		NodeName:       w.Kube.Node.Name,
	}
	if hasWarn {
		c.WarnAfter = time.Unix(warn, 0).UTC()
	}
	return c, nil
}
