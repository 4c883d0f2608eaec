package token

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/protocol"
)

// jwt builds a compact token from claims; the signature is not checked here.
func jwt(claims any) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(claims)
	return enc.EncodeToString([]byte(`{"alg":"ES256","kid":"k"}`)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte("signature"))
}

// tokenOf wraps a raw JSON payload in a compact token.
func tokenOf(payload string) string {
	return "eyJhbGciOiJFUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".c2ln"
}

const iat = 1795000000 // 2026-11-18T...

func bound(extra map[string]any) map[string]any {
	c := map[string]any{
		"iss": "https://kubernetes.default.svc", "aud": []string{"vault"}, "iat": iat, "nbf": iat, "exp": iat + 7200,
		"sub": "system:serviceaccount:build:build-robot",
		"kubernetes.io": map[string]any{
			"namespace":      "build",
			"pod":            map[string]any{"name": "nginx", "uid": "u-1"},
			"serviceaccount": map[string]any{"name": "build-robot", "uid": "s-1"},
			"node":           map[string]any{"name": "worker-1", "uid": "n-1"},
		},
	}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func TestParseBoundToken(t *testing.T) {
	c, err := Parse([]byte(jwt(bound(nil)) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{
		Issuer: "https://kubernetes.default.svc", Audiences: []string{"vault"},
		IssuedAt: time.Unix(iat, 0).UTC(), Expires: time.Unix(iat+7200, 0).UTC(),
		Namespace: "build", PodName: "nginx", PodUID: "u-1", ServiceAccount: "build-robot", NodeName: "worker-1",
	}
	if c.Issuer != want.Issuer || strings.Join(c.Audiences, ",") != "vault" || !c.IssuedAt.Equal(want.IssuedAt) || !c.Expires.Equal(want.Expires) ||
		c.Namespace != want.Namespace || c.PodName != want.PodName || c.PodUID != want.PodUID || c.ServiceAccount != want.ServiceAccount || c.NodeName != want.NodeName || !c.WarnAfter.IsZero() {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	// aud as a single string, fractional dates
	c, err = Parse([]byte(jwt(map[string]any{"iss": "x", "aud": "api", "iat": 100.7, "exp": 200.2})))
	if err != nil || c.Audiences[0] != "api" || c.IssuedAt.Unix() != 100 || c.Expires.Unix() != 200 {
		t.Errorf("string aud / fractional dates: %+v %v", c, err)
	}
}

func TestParseRejectsWithoutQuotingTheToken(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	secretish := "c2VjcmV0LXNpZ25hdHVyZQ"
	cases := []struct {
		name, token, want string
	}{
		{"two segments", "a.b", "three"},
		{"four segments", "a.b.c.d", "three"},
		{"bad base64", "eyJh.%%%." + secretish, "not base64url"},
		{"bad length", "eyJh.a." + secretish, "not base64url"},
		{"not json", "eyJh." + enc([]byte("hello secret world")) + "." + secretish, "not valid JSON"},
		{"json array", "eyJh." + enc([]byte(`[1,2]`)) + "." + secretish, "claims"},
		{"missing iat and exp", jwt(map[string]any{"iss": "x"}), "missing claim [iat exp]"},
		{"missing exp", jwt(map[string]any{"iat": 5}), "missing claim [exp]"},
		{"exp before iat", jwt(map[string]any{"iat": 10, "exp": 10}), "exp 10 is not after iat 10"},
		{"string iat", jwt(map[string]any{"iat": "soon", "exp": 10}), "iat"},
		{"bad aud", jwt(map[string]any{"iat": 1, "exp": 10, "aud": 7}), "aud"},
		{"warnafter before iat", jwt(map[string]any{"iat": 10, "exp": 100, "kubernetes.io": map[string]any{"warnafter": 5}}), "warnafter"},
		{"huge", strings.Repeat("a", MaxSize+1), "larger than"},
		{"syntax error", tokenOf(`{"iss":"secret","iat":1,}`), "payload is not valid JSON (at byte 25)"},
		{"syntax beats type", tokenOf(`{"iat":"secret",]`), "payload is not valid JSON (at byte 17)"},
		{"nested wrong type", tokenOf(`{"kubernetes.io":{"pod":{"uid":1234567}},"iat":1,"exp":2}`), `claim "kubernetes.io.pod.uid" has the wrong type (number)`},
		{"first wrong type wins", tokenOf(`{"kubernetes.io":{"pod":{"uid":1}},"iat":"secret"}`), `claim "kubernetes.io.pod.uid" has the wrong type (number)`},
		{"object for a string", tokenOf(`{"iss":{"secret":1},"iat":1,"exp":2}`), `claim "iss" has the wrong type (object)`},
		{"out of range is not quoted", tokenOf(`{"iat":1e999,"exp":2}`), `claim "iat" is a number out of range`},
		{"negative date", jwt(map[string]any{"iat": -5, "exp": 10}), `claim "iat" is not a plausible NumericDate`},
		{"top-level string", tokenOf(`"secret"`), "payload is a JSON string, not an object of claims"},
		{"long namespace", jwt(bound(map[string]any{"kubernetes.io": map[string]any{"namespace": strings.Repeat("secret", 11)}})), `claim "kubernetes.io.namespace" is 66 bytes, longer than the 63 it can be`},
		{"long pod name", jwt(bound(map[string]any{"kubernetes.io": map[string]any{"pod": map[string]any{"name": strings.Repeat("secret", 50)}}})), `claim "kubernetes.io.pod.name" is 300 bytes, longer than the 253 it can be`},
		{"long issuer", jwt(bound(map[string]any{"iss": strings.Repeat("secret", 400)})), `claim "iss" is 2400 bytes, longer than the 2048 it can be`},
		{"too many audiences", jwt(bound(map[string]any{"aud": make([]string, 65)})), `claim "aud" lists 65 audiences, more than the 64 a token can have`},
		{"escape sequence in issuer", jwt(bound(map[string]any{"iss": "secret\x1b[2J"})), `claim "iss" holds a character that is not printable`},
		{"bidi override in audience", jwt(bound(map[string]any{"aud": []string{"ok", "secret\u202e"}})), `claim "aud" holds a character that is not printable`},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.token))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), secretish) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error quotes the token: %v", c.name, err)
		}
	}
}

func TestParseMatchesKeysExactly(t *testing.T) {
	// encoding/json alone would take IAT for iat and Iss for iss.
	c, err := Parse([]byte(tokenOf(`{"IAT":1,"Exp":2,"exp":3,"iat":2,"Iss":"x"}`)))
	if err != nil {
		t.Fatal(err)
	}
	if c.IssuedAt.Unix() != 2 || c.Expires.Unix() != 3 || c.Issuer != "" {
		t.Errorf("keys differing in case were taken: %+v", c)
	}
	if _, err := Parse([]byte(tokenOf(`{"IAT":1,"EXP":2}`))); err == nil || err.Error() != "missing claim [iat exp]" {
		t.Errorf("upper-case keys only: %v, want missing claim [iat exp]", err)
	}
}

func TestParseReadsOnlyThePayload(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"iat":1,"exp":2}`))
	// Neither the header nor the signature is valid base64url or JSON:
	// Parse never decodes them, let alone verifies the signature.
	for _, tok := range []string{"%%." + payload + ".%%", "." + payload + ".", "x." + payload + ".not a signature"} {
		if c, err := Parse([]byte(tok)); err != nil || c.Expires.Unix() != 2 {
			t.Errorf("Parse(%q) = %+v, %v; want the payload's claims", tok, c, err)
		}
	}
}

func TestParseRealisticToken(t *testing.T) {
	c, err := Parse(realisticToken())
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{
		Issuer:    "https://kubernetes.default.svc.cluster.local",
		Audiences: []string{"https://kubernetes.default.svc.cluster.local", "vault"},
		IssuedAt:  at(iat), Expires: at(iat + 3607), WarnAfter: at(iat + 2886),
		Namespace: "build-pipelines", PodName: "build-robot-7d9f8c6b5-x2k4q", PodUID: "c3e1a2b4-5d6f-4a8b-9c0d-e1f2a3b4c5d6",
		ServiceAccount: "build-robot", NodeName: "ip-10-0-12-34.eu-west-1.compute.internal",
		JTI: "6f1c8b0e-2d4a-4f7e-9b3c-5a8d7e6f1029",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestParseNullsAndDuplicates(t *testing.T) {
	// encoding/json's rules: the last duplicate wins, objects merge, null
	// unsets a date and leaves a string as it was.
	c, err := Parse([]byte(tokenOf(`{"iat":1,"iat":5,"exp":9,"exp":null,"exp":10,"iss":"a","iss":null,` +
		`"kubernetes.io":{"namespace":"n","pod":{"name":"p"},"warnafter":7},"kubernetes.io":{"pod":{"uid":"u"},"warnafter":null},"aud":"x","aud":null}`)))
	if err != nil {
		t.Fatal(err)
	}
	if c.IssuedAt.Unix() != 5 || c.Expires.Unix() != 10 || c.Issuer != "a" || c.Namespace != "n" || c.PodName != "p" || c.PodUID != "u" ||
		!c.WarnAfter.IsZero() || c.Audiences != nil {
		t.Errorf("got %+v", c)
	}
	c, err = Parse([]byte(tokenOf(`{"iat":1,"exp":2,"aud":["a",null,"b"]}`)))
	if err != nil || strings.Join(c.Audiences, ",") != "a,,b" {
		t.Errorf("aud with a null: %q, %v", c.Audiences, err)
	}
}

func TestClaimsEnd(t *testing.T) {
	tok := jwt(bound(nil))
	want := strings.LastIndexByte(tok, '.')
	for s, end := range map[string]int{
		tok:                      want,
		tok + "\n":               want,
		"eyJh.eyJh.c2ln":         9,
		"eyJh.eyJh.":             9, // the signature is not looked at, so not judged
		"IHt9.e30.x":             8, // JSON led by white space
		"a.b.c":                  -1,
		"default":                -1,
		"e30":                    -1,
		"e30.e30":                -1,
		"e30..c":                 -1,
		".e30.c":                 -1,
		"e30.e 0.c":              -1,
		"-----BEGIN CERTIFICATE": -1,
		"":                       -1,
	} {
		got, ok := ClaimsEnd([]byte(s))
		if end < 0 && ok || end >= 0 && (!ok || got != end) {
			t.Errorf("ClaimsEnd(%.30q) = %d %v, want %d", s, got, ok, end)
		}
	}
}

// TestClaimsEndReadsNoSignature places a token so that its signature starts
// on a page the process may not read: ClaimsEnd must find the claims
// without a fault.
func TestClaimsEndReadsNoSignature(t *testing.T) {
	page := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Munmap(mem) }()
	tok := jwt(bound(nil))
	claims := tok[:strings.LastIndexByte(tok, '.')+1]
	copy(mem[page-len(claims):], claims)
	copy(mem[page:], "c2lnbmF0dXJl")
	if err := unix.Mprotect(mem[page:], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	data := mem[page-len(claims):]
	end, ok := ClaimsEnd(data)
	if !ok || end != len(claims)-1 {
		t.Fatalf("ClaimsEnd = %d %v, want %d", end, ok, len(claims)-1)
	}
	c, err := ParseClaims(data[:end])
	if err != nil || c.PodUID != "u-1" {
		t.Errorf("ParseClaims: %+v %v", c, err)
	}
}

func TestParseClaimsIsParse(t *testing.T) {
	for _, tok := range []string{jwt(bound(nil)), tokenOf(`{"iat":1,"exp":2}`), tokenOf(`{"iat":2,"exp":1}`), "eyJh.%%%.c2ln"} {
		full, errFull := Parse([]byte(tok))
		end := strings.LastIndexByte(tok, '.')
		part, errPart := ParseClaims([]byte(tok[:end]))
		if !reflect.DeepEqual(full, part) || fmt.Sprint(errFull) != fmt.Sprint(errPart) {
			t.Errorf("%.20q: Parse %+v %v, ParseClaims %+v %v", tok, full, errFull, part, errPart)
		}
	}
	if _, err := ParseClaims([]byte("e30.e30.e30")); err == nil {
		t.Error("ParseClaims accepted three segments")
	}
}

func at(sec int64) time.Time { return time.Unix(sec, 0).UTC() }

func TestRefreshAtIsTheKubeletsRule(t *testing.T) {
	cases := []struct {
		name      string
		exp, warn int64 // seconds after iat; warn 0 = absent
		want      int64 // refreshAt, seconds after iat
	}{
		{"1 h default: 3600-720", 3600, 0, 2880},
		{"the documentation's 7200 s: 7200-1440", 7200, 0, 5760},
		{"extended 3607 s: judged by warnafter, not the year-long exp", 365 * 86400, 3607, 3607 - 721},
		{"ttl not divisible by 5: 601 - floor(120.2)", 601, 0, 481},
		{"ttl 599: 599 - floor(119.8)", 599, 0, 480},
		{"48 h: the 24 h rule wins", 48 * 3600, 0, 24 * 3600},
		{"30 h: 80% is 24 h exactly", 30 * 3600, 0, 24 * 3600},
		{"29 h: 80% wins", 29 * 3600, 0, 29*3600 - 29*3600*20/100},
	}
	for _, c := range cases {
		cl := Claims{IssuedAt: at(iat), Expires: at(iat + c.exp)}
		if c.warn != 0 {
			cl.WarnAfter = at(iat + c.warn)
		}
		if got := cl.RefreshAt(); !got.Equal(at(iat + c.want)) {
			t.Errorf("%s: refreshAt = iat+%d, want iat+%d", c.name, got.Unix()-iat, c.want)
		}
	}
}

func TestJudgeAtTheBoundaries(t *testing.T) {
	const iss = "https://kubernetes.default.svc"
	robot := Claims{Issuer: iss, IssuedAt: at(iat), Expires: at(iat + 7200)} // refreshAt iat+5760
	ext := Claims{Issuer: iss, IssuedAt: at(iat), Expires: at(iat + 365*86400), WarnAfter: at(iat + 3607)}
	grace := 5 * time.Minute
	cases := []struct {
		name     string
		c        Claims
		now      int64 // seconds after iat
		expected string
		want     protocol.State
	}{
		{"just issued", robot, 0, iss, protocol.StateFresh},
		{"a second before refreshAt", robot, 5759, iss, protocol.StateFresh},
		{"exactly at refreshAt", robot, 5760, iss, protocol.StateRefreshDue},
		{"a second before refreshAt+grace", robot, 5760 + 299, iss, protocol.StateRefreshDue},
		{"exactly at refreshAt+grace", robot, 5760 + 300, iss, protocol.StateOverdue},
		{"a second before exp", robot, 7199, iss, protocol.StateOverdue},
		{"exactly at exp", robot, 7200, iss, protocol.StateExpired},
		{"expired beats issuer mismatch", robot, 7200, "https://new", protocol.StateExpired},
		{"issuer mismatch beats overdue", robot, 7000, "https://new", protocol.StateIssuerMismatch},
		{"issuer mismatch when fresh", robot, 10, "https://new", protocol.StateIssuerMismatch},
		{"unknown issuer is not checked", robot, 10, "", protocol.StateFresh},
		{"iat 60 s ahead is tolerated", robot, -60, iss, protocol.StateFresh},
		{"iat 61 s ahead is clock skew", robot, -61, iss, protocol.StateClockSkew},
		{"extended: fresh before warnafter's 80%", ext, 2885, iss, protocol.StateFresh},
		{"extended: due at iat+2886", ext, 2886, iss, protocol.StateRefreshDue},
		{"extended: overdue though exp is a year out", ext, 2886 + 300, iss, protocol.StateOverdue},
		{"extended: past warnafter is overdue, not expired", ext, 4000, iss, protocol.StateOverdue},
	}
	for _, c := range cases {
		v := Judge(c.c, at(iat+c.now), c.expected, grace)
		if v.State != c.want {
			t.Errorf("%s: %s (%s), want %s", c.name, v.State, v.Reason, c.want)
		}
		if v.State != protocol.StateFresh && v.Reason == "" {
			t.Errorf("%s: state %s without a reason", c.name, v.State)
		}
	}
	if v := Judge(robot, at(iat+5760+60), iss, 0); v.State != protocol.StateOverdue {
		t.Errorf("grace 0: %s, want overdue", v.State)
	}
}

// TestJudgeReasonCapsIssuers: an issuer is up to maxURL bytes in a token,
// but the reason, which reaches the scan's output, carries at most
// protocol.MaxClaimLen bytes of it.
func TestJudgeReasonCapsIssuers(t *testing.T) {
	long := "https://" + strings.Repeat("i", 1500)
	c, err := Parse([]byte(jwt(bound(map[string]any{"iss": long}))))
	if err != nil {
		t.Fatal(err)
	}
	v := Judge(c, at(iat+60), "https://kubernetes.default.svc", time.Minute)
	if v.State != protocol.StateIssuerMismatch || strings.Contains(v.Reason, long[:protocol.MaxClaimLen+1]) || len(v.Reason) > 3*protocol.MaxClaimLen {
		t.Errorf("%s: reason of %d bytes", v.State, len(v.Reason))
	}
}
