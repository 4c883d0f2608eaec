package app

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenroll/tokenroll/internal/cli"
)

// fakeVolume writes one token in the kubelet's layout.
func fakeVolume(t *testing.T, root, uid, vol, iss string, iat, exp int64) {
	t.Helper()
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(map[string]any{"iss": iss, "iat": iat, "exp": exp,
		"kubernetes.io": map[string]any{"namespace": "apps", "pod": map[string]any{"name": "web-" + uid, "uid": uid}, "node": map[string]any{"name": "worker-9"}}})
	tok := enc.EncodeToString([]byte(`{"alg":"ES256"}`)) + "." + enc.EncodeToString(payload) + ".c2ln"
	dir := filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~projected", vol)
	if err := os.MkdirAll(filepath.Join(dir, "..2026_11_27_00_00_00.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "..2026_11_27_00_00_00.1", "token"), []byte(tok), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..2026_11_27_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/token", filepath.Join(dir, "token")); err != nil {
		t.Fatal(err)
	}
}

func TestScanCommand(t *testing.T) {
	root := t.TempDir()
	const base = 1795000000 // 2026-11-18T11:06:40Z
	fakeVolume(t, root, "a", "kube-api-access-1", "https://new", base, base+3600)
	fakeVolume(t, root, "b", "kube-api-access-2", "https://old", base, base+3600)
	now := "2026-11-18T11:16:40Z"

	code, out, stderr := run(t, "scan", "--kubelet-root="+root, "--issuer=https://new", "--now="+now)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(out, "\n")
	if !strings.Contains(lines[0], "worker-9") || !strings.Contains(out, "2 tokens: 1 issuer-mismatch, 1 fresh") {
		t.Errorf("table:\n%s", out)
	}
	if i, j := strings.Index(out, "issuer-mismatch  apps/web-b"), strings.Index(out, "fresh            apps/web-a"); i < 0 || j < 0 || i > j {
		t.Errorf("not worst first:\n%s", out)
	}

	code, out, _ = run(t, "scan", "--kubelet-root="+root, "--issuer=https://new", "--now="+now, "-o", "json")
	var doc struct {
		Node    string         `json:"node"`
		Summary map[string]int `json:"summary"`
		Tokens  []struct {
			State string `json:"state"`
			Path  string `json:"path"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 {
		t.Fatalf("json: exit %d, %v\n%s", code, err, out)
	}
	if doc.Node != "worker-9" || doc.Summary["issuer-mismatch"] != 1 || doc.Summary["fresh"] != 1 || len(doc.Tokens) != 2 || doc.Tokens[0].Path != "token" {
		t.Errorf("json: %+v", doc)
	}

	code, _, stderr = run(t, "scan", "--kubelet-root="+root, "--issuer=https://new", "--now="+now, "--fail-on=issuer-mismatch,expired")
	if code != cli.ExitFailure || !strings.Contains(stderr, "1 issuer-mismatch") {
		t.Errorf("--fail-on hit: exit %d, %q", code, stderr)
	}
	if code, _, _ := run(t, "scan", "--kubelet-root="+root, "--issuer=https://new", "--now="+now, "--fail-on=expired"); code != 0 {
		t.Errorf("--fail-on miss: exit %d", code)
	}
}
