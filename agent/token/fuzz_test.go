package token

import (
	"testing"
	"time"
)

// FuzzParse: no input may panic the parser or yield claims that break its
// own promises. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(jwt(bound(nil))))
	f.Add([]byte(jwt(bound(map[string]any{"kubernetes.io": map[string]any{"warnafter": iat + 3607}, "exp": iat + 365*86400}))))
	f.Add([]byte("a.b.c"))
	f.Add([]byte("eyJhbGciOiJub25lIn0.eyJpYXQiOjEsImV4cCI6Mn0."))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if !c.Expires.After(c.IssuedAt) {
			t.Fatalf("accepted exp %v not after iat %v", c.Expires, c.IssuedAt)
		}
		if !c.WarnAfter.IsZero() && !c.WarnAfter.After(c.IssuedAt) {
			t.Fatalf("accepted warnafter %v not after iat %v", c.WarnAfter, c.IssuedAt)
		}
		r := c.RefreshAt()
		if r.Before(c.IssuedAt) || r.After(c.IssuedAt.Add(MaxTTL)) {
			t.Fatalf("refreshAt %v outside [iat, iat+24h]", r)
		}
		_ = Judge(c, time.Unix(0, 0), "x", time.Minute)
	})
}
