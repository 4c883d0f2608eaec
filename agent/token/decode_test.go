package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The reference: Parse as it was when it decoded the payload with
// encoding/json. decodeWire must agree with it but for the differences
// documented in decode.go.

type refWire struct {
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

func refSeconds(name string, f *float64) (int64, bool, error) {
	if f == nil {
		return 0, false, nil
	}
	if math.IsNaN(*f) || *f < 0 || *f > 1<<40 {
		return 0, false, fmt.Errorf("claim %q is not a plausible NumericDate", name)
	}
	return int64(math.Floor(*f)), true, nil
}

func refAudiences(raw json.RawMessage) ([]string, error) {
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

func refUnmarshal(payload []byte) (refWire, error) {
	var w refWire
	if err := json.Unmarshal(payload, &w); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return refWire{}, fmt.Errorf("payload is not valid JSON (at byte %d)", se.Offset)
		case errors.As(err, &te) && te.Field == "":
			return refWire{}, fmt.Errorf("payload is a JSON %s, not an object of claims", te.Value)
		case errors.As(err, &te):
			return refWire{}, fmt.Errorf("claim %q has the wrong type (%s)", te.Field, te.Value)
		default:
			return refWire{}, errors.New("payload is not a JSON object of claims with the expected types")
		}
	}
	return w, nil
}

// refDecodeWire is decodeWire by encoding/json.
func refDecodeWire(payload []byte) (wireClaims, error) {
	r, err := refUnmarshal(payload)
	if err != nil {
		return wireClaims{}, err
	}
	num := func(f *float64) number {
		if f == nil {
			return number{}
		}
		return number{set: true, f: *f}
	}
	w := wireClaims{
		Iss: r.Iss, Iat: num(r.Iat), Exp: num(r.Exp),
		Namespace: r.Kube.Namespace, PodName: r.Kube.Pod.Name, PodUID: r.Kube.Pod.UID,
		ServiceAccount: r.Kube.ServiceAccount.Name, NodeName: r.Kube.Node.Name,
		WarnAfter: num(r.Kube.WarnAfter),
	}
	if aud, err := refAudiences(r.Aud); err != nil {
		w.AudBad = true
	} else {
		w.Aud = aud
	}
	return w, nil
}

// refParse is Parse as it was.
func refParse(data []byte) (Claims, error) {
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
	w, err := refUnmarshal(payload)
	if err != nil {
		return Claims{}, err
	}
	iat, hasIat, err := refSeconds("iat", w.Iat)
	if err != nil {
		return Claims{}, err
	}
	exp, hasExp, err := refSeconds("exp", w.Exp)
	if err != nil {
		return Claims{}, err
	}
	warn, hasWarn, err := refSeconds("kubernetes.io.warnafter", w.Kube.WarnAfter)
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
	aud, err := refAudiences(w.Aud)
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

// claimKeys are the keys decodeWire knows, at any level.
var claimKeys = []string{"iss", "aud", "iat", "exp", "kubernetes.io", "namespace", "pod", "serviceaccount", "node", "warnafter", "name", "uid"}

// hasFoldedKey reports whether payload has an object key that encoding/json
// would match to a claim case-insensitively but decodeWire, matching
// exactly, would not. It looks at keys at every level, which is more than
// needed but never less.
func hasFoldedKey(payload []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	type frame struct{ object, wantKey bool }
	var stack []frame
	// value notes that a value has begun in the innermost container.
	value := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				value()
				stack = append(stack, frame{object: v == '{', wantKey: v == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
				stack[n-1].wantKey = false
				for _, k := range claimKeys {
					if v != k && strings.EqualFold(v, k) {
						return true
					}
				}
				continue
			}
			value()
		default:
			value()
		}
	}
}

// decodeErr is every error decodeWire may return: none quotes the payload.
var decodeErr = regexp.MustCompile(`^(payload is not valid JSON \(at byte \d+\)` +
	`|payload is a JSON (object|array|string|number|bool), not an object of claims` +
	`|claim "[a-z.]+" has the wrong type \((object|array|string|number|bool)\)` +
	`|claim "[a-z.]+" is a number out of range` +
	`|payload nests arrays and objects deeper than 64 \(at byte \d+\))$`)

var refOutOfRange = regexp.MustCompile(`^claim ("[a-z.]+") has the wrong type \(number .*\)$`)

// normalize turns the reference's error into decodeWire's where they differ
// on purpose: encoding/json quotes a number out of range.
func normalize(err error) string {
	if err == nil {
		return "<nil>"
	}
	return refOutOfRange.ReplaceAllString(err.Error(), `claim $1 is a number out of range`)
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func sameNumber(a, b number) bool {
	return a.set == b.set && math.Float64bits(a.f) == math.Float64bits(b.f)
}

func sameWire(a, b wireClaims) bool {
	return sameNumber(a.Iat, b.Iat) && sameNumber(a.Exp, b.Exp) && sameNumber(a.WarnAfter, b.WarnAfter) &&
		reflect.DeepEqual(a, b)
}

// tokenOf wraps a payload in a compact JWT.
func tokenOf(payload []byte) []byte {
	enc := base64.RawURLEncoding
	return []byte("eyJhbGciOiJFUzI1NiJ9." + enc.EncodeToString(payload) + ".c2ln")
}

// checkDecode compares decodeWire and Parse with the reference on payload.
func checkDecode(t *testing.T, payload []byte) {
	t.Helper()
	got, gotErr := decodeWire(payload)
	if gotErr != nil && !decodeErr.MatchString(gotErr.Error()) {
		t.Fatalf("decodeWire error %q is not one of ours", gotErr)
	}
	if gotErr != nil && strings.HasPrefix(gotErr.Error(), "payload nests") {
		return // encoding/json allows 10000 levels
	}
	if hasFoldedKey(payload) {
		return // encoding/json matches keys case-insensitively
	}
	want, wantErr := refDecodeWire(payload)
	if errString(gotErr) != normalize(wantErr) {
		t.Fatalf("payload %q:\ndecodeWire error %v\nencoding/json    %v", payload, gotErr, wantErr)
	}
	if gotErr == nil && !sameWire(got, want) {
		t.Fatalf("payload %q:\ndecodeWire    %#v\nencoding/json %#v", payload, got, want)
	}

	tok := tokenOf(payload)
	c, err := Parse(tok)
	rc, rerr := refParse(tok)
	if errString(err) != normalize(rerr) {
		t.Fatalf("payload %q:\nParse error %v\nreference   %v", payload, err, rerr)
	}
	if !reflect.DeepEqual(c, rc) {
		t.Fatalf("payload %q:\nParse     %#v\nreference %#v", payload, c, rc)
	}
}

// FuzzDecodeMatchesEncodingJSON: for any payload, decodeWire and Parse agree
// with encoding/json, but for the differences documented in decode.go. The
// seed corpus is in testdata/fuzz/FuzzDecodeMatchesEncodingJSON.
func FuzzDecodeMatchesEncodingJSON(f *testing.F) {
	f.Fuzz(checkDecode)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// decodeSeeds are realistic and tricky payloads.
func decodeSeeds() map[string]string {
	tok := realisticToken()
	parts := bytes.Split(bytes.TrimSpace(tok), []byte("."))
	realistic, _ := base64.RawURLEncoding.DecodeString(string(parts[1]))
	return map[string]string{
		"bound":        mustJSON(bound(nil)),
		"extended":     mustJSON(bound(map[string]any{"exp": iat + 365*86400, "kubernetes.io": map[string]any{"warnafter": iat + 3607}})),
		"realistic":    string(realistic),
		"indented":     "\r\n\t {\n  \"iat\" :\t1 ,\r\n \"exp\"\n:\n2 , \"aud\" : [ \"a\" , \"b\" ] ,\"kubernetes.io\" : { } }\n ",
		"string-aud":   `{"aud":"api","iat":1,"exp":2}`,
		"aud-empty":    `{"aud":[],"iat":1,"exp":2}`,
		"aud-nulls":    `{"aud":["a",null,"b",null],"iat":1,"exp":2}`,
		"aud-null":     `{"aud":"x","aud":null,"iat":1,"exp":2}`,
		"aud-bad":      `{"aud":["a",1],"iat":1,"exp":2}`,
		"aud-object":   `{"aud":{"a":"b"},"iat":1,"exp":2}`,
		"aud-nested":   `{"aud":[["a"]],"iat":1,"exp":2}`,
		"aud-bool":     `{"aud":true,"iat":1,"exp":2}`,
		"aud-then-ok":  `{"aud":7,"aud":["ok"],"iat":1,"exp":2}`,
		"escapes":      `{"iss":"a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00\u0000","iat":1,"exp":2}`,
		"surrogates":   `{"iss":"\ud800|\ud800\u0041|\udc00\ud800|\udbff\udfff|\ud800\n","iat":1,"exp":2}`,
		"invalid-utf8": "{\"iss\":\"a\xff\xfeb\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xe2\x82\",\"kubernetes.io\":{\"namespace\":\"\xef\xbf\xbd\xe9\x87\x8e\"},\"iat\":1,\"exp\":2}",
		"utf8-key":     "{\"\xc3\xa9\":1,\"i\xffat\":\"x\",\"iat\":1,\"exp\":2}",
		"escaped-keys": `{"i\u0061t":1,"\u0065xp":2,"kubernetes\u002eio":{"pod":{"n\u0061me":"p"}},"\u0069\u0073\u0073":"i"}`,
		"nested-unknown": `{"x":{"a":[1,{"b":[true,false,null,"s\"}",-1.5e-3]}],"c":{},"d":[]},"iat":1,` +
			`"kubernetes.io":{"pod":{"name":"p","extra":{"name":7}},"zone":["a",{"uid":[]}]},"exp":2}`,
		"duplicates":        `{"iat":1,"iat":5,"exp":9,"exp":null,"exp":10,"iss":"a","iss":null}`,
		"merge":             `{"kubernetes.io":{"namespace":"a","pod":{"name":"p"}},"kubernetes.io":{"pod":{"uid":"u"},"node":null},"kubernetes.io":null,"iat":1,"exp":2}`,
		"warnafter-null":    `{"kubernetes.io":{"warnafter":5},"kubernetes.io":{"warnafter":null},"iat":1,"exp":2}`,
		"numbers":           `{"iat":1e9,"exp":1.5e9,"kubernetes.io":{"warnafter":1000000000.5}}`,
		"fractional":        `{"iat":1.5,"exp":2.5}`,
		"negative-zero":     `{"iat":-0,"exp":1E+2}`,
		"zero-fraction":     `{"iat":0.0,"exp":10e0}`,
		"long-integer":      `{"iat":123456789012345678,"exp":1234567890123456789012}`,
		"fifteen-digits":    `{"iat":999999999999999,"exp":9999999999999999}`,
		"negative":          `{"iat":-5,"exp":10}`,
		"underflow":         `{"iat":1e-400,"exp":1}`,
		"overflow":          `{"iat":1e400,"exp":1}`,
		"overflow-then-bad": `{"iat":1e400,"exp":"x"}`,
		"huge":              `{"iat":1e300,"exp":1e301}`,
		"iat-string":        `{"iat":"soon","exp":10}`,
		"iat-bool":          `{"iat":true,"exp":10}`,
		"iat-object":        `{"iat":{},"exp":10}`,
		"iat-array":         `{"iat":[1],"exp":10}`,
		"iss-number":        `{"iss":5,"iat":1,"exp":10}`,
		"kube-string":       `{"kubernetes.io":"x","iat":1,"exp":10}`,
		"pod-array":         `{"kubernetes.io":{"pod":[]},"iat":1,"exp":10}`,
		"name-number":       `{"kubernetes.io":{"node":{"name":1}},"iat":1,"exp":10}`,
		"sa-name-bool":      `{"kubernetes.io":{"serviceaccount":{"name":false}},"iat":1,"exp":10}`,
		"warnafter-string":  `{"kubernetes.io":{"warnafter":"x"},"iat":1,"exp":10}`,
		"two-wrong-types":   `{"exp":"x","iat":"y"}`,
		"wrong-then-syntax": `{"iat":"x","exp":1,}`,
		"top-array":         `[1,2]`,
		"top-string":        `"x"`,
		"top-number":        `-12.5e3`,
		"top-true":          `true`,
		"top-false":         ` false `,
		"top-null":          `null`,
		"empty":             ``,
		"space":             " \t\r\n",
		"empty-object":      `{}`,
		"trailing-garbage":  `{"iat":1,"exp":2}x`,
		"two-values":        `{} {}`,
		"unterminated":      `{"iss":"abc`,
		"unterminated-esc":  `{"iss":"abc\`,
		"bad-literal":       `{"a":tru}`,
		"short-literal":     `{"a":nul`,
		"leading-zero":      `{"a":01}`,
		"lone-minus":        `{"a":-}`,
		"bad-fraction":      `{"a":1.}`,
		"bad-exponent":      `{"a":1e+}`,
		"comma-for-colon":   `{"a",1}`,
		"trailing-comma":    `{"a":1,}`,
		"array-trailing":    `{"a":[1,]}`,
		"control-char":      "{\"iss\":\"a\tb\"}",
		"bad-escape":        `{"iss":"\x"}`,
		"bad-unicode":       `{"iss":"\u12G4"}`,
		"unquoted-key":      `{iat:1}`,
		"single-quotes":     `{'iat':1}`,
		"plus-number":       `{"iat":+1}`,
		"nan":               `{"iat":NaN}`,
		"deep":              `{"x":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `,"iat":1,"exp":2}`,
		"deep-64":           strings.Repeat("[", 64) + strings.Repeat("]", 64),
		"deep-objects":      strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65),
		"case-keys":         `{"IAT":1,"exp":2,"Iss":"x"}`,
		"kelvin-key":        "{\"iat\":1,\"exp\":2,\"\xe2\x84\xaaubernetes.io\":{\"namespace\":\"n\"}}",
		"unclosed-object":   `{"iat":1,"exp":2`,
		"unclosed-array":    `{"aud":["a"`,
		"nul-byte":          "{\"iat\":1,\"exp\":2}\x00",
		"bom":               "\xef\xbb\xbf{\"iat\":1,\"exp\":2}",
	}
}

// TestWriteDecodeSeeds regenerates testdata/fuzz/FuzzDecodeMatchesEncodingJSON
// when TOKENROLL_UPDATE_SEEDS=1; otherwise it checks the seeds are committed.
func TestWriteDecodeSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeMatchesEncodingJSON")
	for name, s := range decodeSeeds() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		file := filepath.Join(dir, name)
		if os.Getenv("TOKENROLL_UPDATE_SEEDS") != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if b, err := os.ReadFile(file); err != nil || string(b) != body {
			t.Errorf("seed %s is missing or stale (%v); run with TOKENROLL_UPDATE_SEEDS=1", file, err)
		}
	}
}

// TestDecodeDifferences pins the documented differences from encoding/json.
func TestDecodeDifferences(t *testing.T) {
	cases := []struct {
		name, payload, want string
	}{
		{"keys match exactly", `{"IAT":1,"exp":2}`, "<nil>"},
		{"nesting is bounded", `{"x":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, "payload nests arrays and objects deeper than 64 (at byte 69)"},
		{"64 levels are fine", `{"x":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`, "<nil>"},
		{"out of range is not quoted", `{"iat":1e999,"exp":2}`, `claim "iat" is a number out of range`},
		{"error offsets are encoding/json's", `{"iat":1,}`, "payload is not valid JSON (at byte 10)"},
		{"end of input", `{"iat":1`, "payload is not valid JSON (at byte 8)"},
		{"syntax beats type", `{"iat":"x",]`, "payload is not valid JSON (at byte 12)"},
		{"first wrong type wins", `{"kubernetes.io":{"pod":{"uid":1}},"iat":"x"}`, `claim "kubernetes.io.pod.uid" has the wrong type (number)`},
	}
	for _, c := range cases {
		w, err := decodeWire([]byte(c.payload))
		if errString(err) != c.want {
			t.Errorf("%s: got %v, want %s", c.name, err, c.want)
		}
		if c.name == "keys match exactly" && w.Iat.set {
			t.Errorf("%s: IAT taken for iat", c.name)
		}
	}
}

func TestDecodeWireBound(t *testing.T) {
	tok := realisticToken()
	parts := bytes.Split(bytes.TrimSpace(tok), []byte("."))
	payload, _ := base64.RawURLEncoding.DecodeString(string(parts[1]))
	w, err := decodeWire(payload)
	if err != nil {
		t.Fatal(err)
	}
	want := wireClaims{
		Iss:       "https://kubernetes.default.svc.cluster.local",
		Aud:       []string{"https://kubernetes.default.svc.cluster.local", "vault"},
		Iat:       number{true, iat},
		Exp:       number{true, iat + 3607},
		Namespace: "build-pipelines", PodName: "build-robot-7d9f8c6b5-x2k4q", PodUID: "c3e1a2b4-5d6f-4a8b-9c0d-e1f2a3b4c5d6",
		ServiceAccount: "build-robot", NodeName: "ip-10-0-12-34.eu-west-1.compute.internal",
		WarnAfter: number{true, iat + 2886},
	}
	if !sameWire(w, want) {
		t.Errorf("got  %#v\nwant %#v", w, want)
	}
	checkDecode(t, payload)
}

func TestDecodeWireAllocs(t *testing.T) {
	tok := realisticToken()
	parts := bytes.Split(bytes.TrimSpace(tok), []byte("."))
	payload, _ := base64.RawURLEncoding.DecodeString(string(parts[1]))
	// Iss, two audiences and their slice, five kubernetes.io strings.
	if n := testing.AllocsPerRun(100, func() { _, _ = decodeWire(payload) }); n > 9 {
		t.Errorf("decodeWire allocates %v times, want at most 9", n)
	}
	// Parse decodes the payload on the stack: nothing more.
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(tok) }); n > 9 {
		t.Errorf("Parse allocates %v times, want at most 9", n)
	}
}
