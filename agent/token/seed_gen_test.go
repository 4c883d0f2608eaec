package token

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzParse when
// TOKENROLL_UPDATE_SEEDS=1; otherwise it checks the committed corpus exists.
func TestWriteFuzzSeeds(t *testing.T) {
	seeds := map[string]string{
		"bound":         jwt(bound(nil)),
		"extended":      jwt(bound(map[string]any{"exp": iat + 365*86400, "kubernetes.io": map[string]any{"warnafter": iat + 3607}})),
		"string-aud":    jwt(map[string]any{"aud": "api", "iat": 1, "exp": 2}),
		"fractional":    jwt(map[string]any{"iat": 1.5, "exp": 2.5}),
		"null-dates":    jwt(map[string]any{"iat": nil, "exp": nil}),
		"padded":        jwt(bound(nil)) + "==",
		"bad-base64":    "eyJh.%%%.c2ln",
		"array-payload": "eyJh.WzEsMl0.c2ln",
		"huge-iat":      jwt(map[string]any{"iat": 1e300, "exp": 1e301}),
		"negative":      jwt(map[string]any{"iat": -5, "exp": 10}),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if os.Getenv("TOKENROLL_UPDATE_SEEDS") == "" {
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) < len(seeds) {
			t.Fatalf("seed corpus %s has %d files (%v); run with TOKENROLL_UPDATE_SEEDS=1", dir, len(entries), err)
		}
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
