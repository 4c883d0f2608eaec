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
	"strings"
	"time"
	"unicode"

	sigsjson "sigs.k8s.io/json"
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
	// JTI is the jti claim: the token's identifier, which the API server
	// audits as the credential ID of every request made with it. Not a
	// secret (it authenticates nothing), and capped like a UID.
	JTI string
}

// ClaimsEnd finds where the claims of a compact JWT end: the index of the
// second '.', which closes the payload. It looks at data one byte at a time,
// in order, and never at a byte past that '.', so data may map a file whose
// signature must not be read. ok is false as soon as data cannot be a JWT: a
// header that cannot start a JSON object, a byte outside base64url, an empty
// header or payload, or no second '.' in data. Files that are not JWTs
// (ca.crt, namespace) are rejected within their first bytes.
func ClaimsEnd(data []byte) (end int, ok bool) {
	end, v := claimsScan(data)
	return end, v == claimsFound
}

// CouldBeJWT reports whether prefix, the first bytes of a file, can begin a
// JWT: ClaimsEnd does not reject it within them.
func CouldBeJWT(prefix []byte) bool {
	_, v := claimsScan(prefix)
	return v != claimsRejected
}

type claimsVerdict int

const (
	claimsRejected claimsVerdict = iota
	claimsFound
	claimsUnfinished // no second '.' yet, nothing rejected
)

func claimsScan(data []byte) (int, claimsVerdict) {
	if len(data) == 0 || !headerStart(data[0]) {
		return 0, claimsRejected
	}
	dots, n := 0, 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case c == '.':
			if n == 0 {
				return 0, claimsRejected
			}
			if dots++; dots == 2 {
				return i, claimsFound
			}
			n = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
			n++
		default:
			return 0, claimsRejected
		}
	}
	return 0, claimsUnfinished
}

// MinClaims is the shortest header and payload, with the '.' that ends
// them, that can hold a JWT: each segment base64url of a JSON object is at
// least three characters ("e30" is "{}"). A reader may read this many bytes
// of a file before it knows where the claims end without ever reading a
// usable token's signature.
const MinClaims = 3 + 1 + 3 + 1

// headerStart reports whether c can begin a JWT header: base64url of a JSON
// object starts with 'e' ('{'), or with 'I', 'C' or 'D' when the JSON
// begins with white space.
func headerStart(c byte) bool { return c == 'e' || c == 'I' || c == 'C' || c == 'D' }

// Limits on what a token may carry. The API server writes Kubernetes names
// (a namespace is a DNS label, other names DNS subdomains), UIDs, and an
// issuer and audiences that are URLs or short strings; a file in a projected
// volume (where tenants' ConfigMaps also land) that carries more is not a
// token it wrote. Claims go on into reports, metric labels and Node
// annotations, so they are capped here.
const (
	maxNamespace = 63
	maxName      = 253
	maxUID       = 128
	// maxURL caps iss and each audience.
	maxURL       = 2048
	maxAudiences = 64
	// maxDate is a NumericDate beyond year 36812, which no token carries.
	maxDate = 1 << 40
)

// wireClaims is the payload as the API server writes it. Dates are JSON
// numbers (NumericDate, possibly fractional); aud is a string or a list.
type wireClaims struct {
	Iss  string          `json:"iss"`
	Jti  string          `json:"jti"`
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

// claimPaths are the paths encoding/json gives a wireClaims field in its
// errors. An error names a claim only from this list.
var claimPaths = map[string]bool{
	"iss": true, "jti": true, "aud": true, "iat": true, "exp": true, "kubernetes.io": true,
	"kubernetes.io.namespace": true, "kubernetes.io.pod": true, "kubernetes.io.pod.name": true, "kubernetes.io.pod.uid": true,
	"kubernetes.io.serviceaccount": true, "kubernetes.io.serviceaccount.name": true,
	"kubernetes.io.node": true, "kubernetes.io.node.name": true, "kubernetes.io.warnafter": true,
}

var dateClaims = map[string]bool{"iat": true, "exp": true, "kubernetes.io.warnafter": true}

// jsonKind is the kind of JSON value an UnmarshalTypeError describes, without
// the literal encoding/json appends to a number ("number 1e999").
func jsonKind(value string) string {
	kind, _, _ := strings.Cut(value, " ")
	switch kind {
	case "object", "array", "string", "number", "bool":
		return kind
	}
	return "value"
}

// decodeClaims unmarshals the payload with keys matched case-sensitively:
// encoding/json would also take "IAT" or "Iss" for "iat" and "iss", and a
// token whose keys differ only in case is not one the API server wrote.
// Errors keep offsets, claim names and kinds from encoding/json's errors,
// never their text: it quotes numbers from the input.
func decodeClaims(payload []byte) (wireClaims, error) {
	var w wireClaims
	err := sigsjson.UnmarshalCaseSensitivePreserveInts(payload, &w)
	if err == nil {
		return w, nil
	}
	if ok, offset := sigsjson.SyntaxErrorOffset(err); ok {
		return wireClaims{}, fmt.Errorf("payload is not valid JSON (at byte %d)", offset)
	}
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field == "":
		return wireClaims{}, fmt.Errorf("payload is a JSON %s, not an object of claims", jsonKind(te.Value))
	case errors.As(err, &te) && dateClaims[te.Field] && jsonKind(te.Value) == "number":
		return wireClaims{}, fmt.Errorf("claim %q is a number out of range", te.Field)
	case errors.As(err, &te) && claimPaths[te.Field]:
		return wireClaims{}, fmt.Errorf("claim %q has the wrong type (%s)", te.Field, jsonKind(te.Value))
	default:
		return wireClaims{}, errors.New("payload is not a JSON object of claims with the expected types")
	}
}

// audiences reads aud: absent or null is none, a string is one audience.
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
	return nil, errors.New(`claim "aud" is neither a string nor a list of strings`)
}

// seconds turns a NumericDate into whole seconds, refusing what no token
// carries (negative, NaN, beyond year 36812).
func seconds(name string, f *float64) (int64, bool, error) {
	if f == nil {
		return 0, false, nil
	}
	if math.IsNaN(*f) || *f < 0 || *f > maxDate {
		return 0, false, fmt.Errorf("claim %q is not a plausible NumericDate", name)
	}
	return int64(math.Floor(*f)), true, nil
}

// checkString refuses a claim longer than limit bytes, or holding a
// character that is not printable (a control character, a bidirectional
// override) that could rewrite a terminal line or a log; the API server
// writes neither.
func checkString(name, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("claim %q is %d bytes, longer than the %d it can be", name, len(s), limit)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("claim %q holds a character that is not printable", name)
		}
	}
	return nil
}

// Parse decodes the claims of a compact JWT: only the payload segment, never
// the header or the signature, which it neither reads nor verifies. Its
// errors describe the defect without quoting the token.
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
	return parsePayload(rest[:second])
}

// ParseClaims decodes the claims of a JWT from its header and payload
// ("header.payload", as ClaimsEnd delimits them), without the signature.
// Its errors are Parse's.
func ParseClaims(claims []byte) (Claims, error) {
	if len(claims) > MaxSize {
		return Claims{}, fmt.Errorf("token is %d bytes, larger than the %d a token can be", len(claims), MaxSize)
	}
	first := bytes.IndexByte(claims, '.')
	if first < 0 {
		return Claims{}, errors.New("not a JWT: no '.' separating header and payload")
	}
	if bytes.IndexByte(claims[first+1:], '.') >= 0 {
		return Claims{}, errors.New("not a JWT: want exactly three dot-separated segments")
	}
	return parsePayload(claims[first+1:])
}

// parsePayload decodes and checks the payload segment.
func parsePayload(seg []byte) (Claims, error) {
	seg = bytes.TrimRight(seg, "=")
	payload := make([]byte, base64.RawURLEncoding.DecodedLen(len(seg)))
	defer clear(payload)
	n, err := base64.RawURLEncoding.Decode(payload, seg)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return Claims{}, fmt.Errorf("payload is not base64url (bad input at byte %d)", int64(ce))
		}
		return Claims{}, errors.New("payload is not base64url")
	}
	w, err := decodeClaims(payload[:n])
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
	if len(aud) > maxAudiences {
		return Claims{}, fmt.Errorf("claim \"aud\" lists %d audiences, more than the %d a token can have", len(aud), maxAudiences)
	}
	type capped struct {
		name, value string
		limit       int
	}
	strs := []capped{
		{"iss", w.Iss, maxURL},
		{"jti", w.Jti, maxUID},
		{"kubernetes.io.namespace", w.Kube.Namespace, maxNamespace},
		{"kubernetes.io.pod.name", w.Kube.Pod.Name, maxName},
		{"kubernetes.io.pod.uid", w.Kube.Pod.UID, maxUID},
		{"kubernetes.io.serviceaccount.name", w.Kube.ServiceAccount.Name, maxName},
		{"kubernetes.io.node.name", w.Kube.Node.Name, maxName},
	}
	for _, a := range aud {
		strs = append(strs, capped{"aud", a, maxURL})
	}
	for _, c := range strs {
		if err := checkString(c.name, c.value, c.limit); err != nil {
			return Claims{}, err
		}
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
		JTI:            w.Jti,
	}
	if hasWarn {
		c.WarnAfter = time.Unix(warn, 0).UTC()
	}
	return c, nil
}
