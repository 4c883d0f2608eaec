package token

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// realisticToken is shaped like a kubelet-requested bound token from the API
// server: an RS256 header with a key id, every claim the API server sets and
// a 256-byte signature, about 1 KiB in all.
func realisticToken() []byte {
	enc := base64.RawURLEncoding
	header := `{"alg":"RS256","kid":"h7Ymf3pXWq0ZrN2cV9kLdS4tB8eJuGaQ1oIxE6yTnCw"}`
	payload, _ := json.Marshal(map[string]any{
		"aud": []string{"https://kubernetes.default.svc.cluster.local", "vault"},
		"exp": iat + 3607, "iat": iat, "nbf": iat,
		"iss": "https://kubernetes.default.svc.cluster.local",
		"jti": "6f1c8b0e-2d4a-4f7e-9b3c-5a8d7e6f1029",
		"kubernetes.io": map[string]any{
			"namespace":      "build-pipelines",
			"node":           map[string]any{"name": "ip-10-0-12-34.eu-west-1.compute.internal", "uid": "0b5d6c1e-8f2a-4e3b-a7c9-1d2e3f4a5b6c"},
			"pod":            map[string]any{"name": "build-robot-7d9f8c6b5-x2k4q", "uid": "c3e1a2b4-5d6f-4a8b-9c0d-e1f2a3b4c5d6"},
			"serviceaccount": map[string]any{"name": "build-robot", "uid": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"},
			"warnafter":      iat + 2886,
		},
		"sub": "system:serviceaccount:build-pipelines:build-robot",
	})
	sig := strings.Repeat("\x5a\xa5", 128)
	return []byte(enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte(sig)) + "\n")
}

func BenchmarkParse(b *testing.B) {
	tok := realisticToken()
	if _, err := Parse(tok); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(tok)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}
