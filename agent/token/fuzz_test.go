package token

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// parseErr is every error Parse may return. Its only variable parts are
// decimal numbers (offsets, sizes, dates) and claim names from a fixed list:
// nothing else from the input can reach an error.
var parseErr = regexp.MustCompile(`^(` +
	`token is \d+ bytes, larger than the 65536 a token can be` +
	`|not a JWT: no '\.' separating header and payload` +
	`|not a JWT: want exactly three dot-separated segments` +
	`|payload is not base64url( \(bad input at byte \d+\))?` +
	`|payload is not valid JSON \(at byte \d+\)` +
	`|payload is a JSON (object|array|string|number|bool|value), not an object of claims` +
	`|payload is not a JSON object of claims with the expected types` +
	`|claim "` + claimName + `" has the wrong type \((object|array|string|number|bool|value)\)` +
	`|claim "(iat|exp|kubernetes\.io\.warnafter)" is a number out of range` +
	`|claim "(iat|exp|kubernetes\.io\.warnafter)" is not a plausible NumericDate` +
	`|missing claim \[(iat exp|iat|exp)\]` +
	`|exp \d+ is not after iat \d+` +
	`|kubernetes\.io\.warnafter \d+ is not after iat \d+` +
	`|claim "aud" is neither a string nor a list of strings` +
	`|claim "aud" lists \d+ audiences, more than the 64 a token can have` +
	`|claim "` + claimName + `" is \d+ bytes, longer than the \d+ it can be` +
	`|claim "` + claimName + `" holds a character that is not printable` +
	`)$`)

const claimName = `(iss|jti|aud|iat|exp|kubernetes\.io(\.(namespace|warnafter|(pod|serviceaccount|node)(\.(name|uid))?))?)`

// FuzzParse: no input panics Parse, every error is one of its own (so none
// quotes the input), and every accepted token satisfies the limits Parse
// promises.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		jwt(bound(nil)),
		jwt(bound(map[string]any{"exp": iat + 365*86400, "kubernetes.io": map[string]any{"warnafter": iat + 3607}})),
		string(realisticToken()),
		jwt(map[string]any{"aud": "api", "iat": 1, "exp": 2}),
		jwt(map[string]any{"iat": 1.5, "exp": 2.5}),
		jwt(map[string]any{"iat": nil, "exp": nil}),
		jwt(map[string]any{"iat": 1e300, "exp": 1e301}),
		jwt(map[string]any{"iat": -5, "exp": 10}),
		jwt(bound(nil)) + "==",
		"eyJh.%%%.c2ln",
		"eyJh.WzEsMl0.c2ln",
		"a.b.c",
		"eyJhbGciOiJub25lIn0.eyJpYXQiOjEsImV4cCI6Mn0.",
		tokenOf(`{"IAT":1,"exp":2,"Iss":"x"}`),
		tokenOf(`{"iat":1e999,"exp":2}`),
		tokenOf(`{"iat":1,"exp":2,"aud":["a",null,7]}`),
		tokenOf(`{"iat":1,"exp":2,"iss":"a\u001b[2Jb"}`),
		tokenOf(`{"iat":1,"exp":2,"kubernetes.io":{"pod":{"name":"` + strings.Repeat("p", 254) + `"}}}`),
		tokenOf(`{"x":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `,"iat":1,"exp":2}`),
		tokenOf("{\"iss\":\"a\xff\xfeb\",\"iat\":1,\"exp\":2}"),
		tokenOf(`{"kubernetes.io":{"pod":{"uid":1}},"iat":"x"}`),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if end, ok := ClaimsEnd(data); ok && (data[end] != '.' || !CouldBeJWT(data[:min(len(data), MinClaims)])) {
			// The scanner reads MinClaims bytes first and maps the file
			// only when CouldBeJWT: it must never drop a JWT there.
			t.Fatalf("ClaimsEnd ends at %d, but the prefix check rejects the file", end)
		}
		if end, ok := ClaimsEnd(data); ok && err == nil {
			// What the scanner reads (the claims alone) decodes to what
			// the whole token does.
			if part, perr := ParseClaims(data[:end]); perr != nil || !reflect.DeepEqual(part, c) {
				t.Fatalf("ParseClaims of the claims: %+v %v, Parse of the token: %+v", part, perr, c)
			}
		}
		if err != nil {
			if !parseErr.MatchString(err.Error()) {
				t.Fatalf("error %q is not one of Parse's own", err)
			}
			return
		}
		if !c.Expires.After(c.IssuedAt) {
			t.Fatalf("accepted exp %v not after iat %v", c.Expires, c.IssuedAt)
		}
		if c.IssuedAt.Unix() < 0 || c.Expires.Unix() > maxDate {
			t.Fatalf("accepted dates %v..%v outside [0, 2^40]", c.IssuedAt, c.Expires)
		}
		if !c.WarnAfter.IsZero() && !c.WarnAfter.After(c.IssuedAt) {
			t.Fatalf("accepted warnafter %v not after iat %v", c.WarnAfter, c.IssuedAt)
		}
		r := c.RefreshAt()
		if r.Before(c.IssuedAt) || r.After(c.IssuedAt.Add(MaxTTL)) {
			t.Fatalf("refreshAt %v outside [iat, iat+24h]", r)
		}
		if len(c.Audiences) > maxAudiences {
			t.Fatalf("accepted %d audiences", len(c.Audiences))
		}
		for _, a := range c.Audiences {
			checkAccepted(t, "aud", a, maxURL)
		}
		checkAccepted(t, "iss", c.Issuer, maxURL)
		checkAccepted(t, "namespace", c.Namespace, maxNamespace)
		checkAccepted(t, "pod name", c.PodName, maxName)
		checkAccepted(t, "pod uid", c.PodUID, maxUID)
		checkAccepted(t, "service account", c.ServiceAccount, maxName)
		checkAccepted(t, "node name", c.NodeName, maxName)
		_ = Judge(c, time.Unix(0, 0), "x", time.Minute)
	})
}

func checkAccepted(t *testing.T, name, s string, limit int) {
	t.Helper()
	if len(s) > limit || !utf8.ValidString(s) {
		t.Fatalf("accepted %s of %d bytes (limit %d), valid UTF-8 %v", name, len(s), limit, utf8.ValidString(s))
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			t.Fatalf("accepted %s with unprintable %U", name, r)
		}
	}
}
