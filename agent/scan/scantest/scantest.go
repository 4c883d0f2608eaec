// Package scantest builds synthetic kubelet roots for benchmarks: many pods,
// each with projected volumes in the kubelet's AtomicWriter layout.
package scantest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Tree describes a generated kubelet root.
type Tree struct {
	Root string
	// Files are the visible paths a scan reads (tokens, ca.crt, namespace).
	Files []string
	// Tokens is how many of Files are tokens.
	Tokens int
}

// Build writes tokens token files spread over pods pod directories under root:
// every pod gets a kube-api-access volume (token, ca.crt, namespace), and the
// remaining tokens go into extra volumes round-robin.
func Build(root string, pods, tokens int, now time.Time) (*Tree, error) {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"RS256","kid":"abcdefghijklmnopqrstuvwxyz0123456789"}`))
	sig := enc.EncodeToString(make([]byte, 256))
	ca := "-----BEGIN CERTIFICATE-----\n" + enc.EncodeToString(make([]byte, 800)) + "\n-----END CERTIFICATE-----\n"
	t := &Tree{Root: root}
	write := func(uid, vol string, files map[string]string) error {
		dir := filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~projected", vol)
		ts := "..2026_11_27_10_31_05.123456789"
		if err := os.MkdirAll(filepath.Join(dir, ts), 0o755); err != nil {
			return err
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(content), 0o644); err != nil {
				return err
			}
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				return err
			}
			t.Files = append(t.Files, filepath.Join(dir, name))
		}
		return os.Symlink(ts, filepath.Join(dir, "..data"))
	}
	tok := func(i int, uid string) string {
		iat := now.Add(-time.Duration(i%3000) * time.Second).Unix()
		payload, _ := json.Marshal(map[string]any{
			"aud": []string{"https://kubernetes.default.svc"}, "exp": iat + 365*86400, "iat": iat, "nbf": iat,
			"iss": "https://kubernetes.default.svc", "jti": fmt.Sprintf("%08d-aaaa-bbbb-cccc-dddddddddddd", i),
			"sub": fmt.Sprintf("system:serviceaccount:ns-%d:sa-%d", i%50, i%7),
			"kubernetes.io": map[string]any{
				"namespace": fmt.Sprintf("ns-%d", i%50), "warnafter": iat + 3607,
				"node":           map[string]any{"name": "worker-1", "uid": "11111111-2222-3333-4444-555555555555"},
				"pod":            map[string]any{"name": fmt.Sprintf("pod-%d", i%pods), "uid": uid},
				"serviceaccount": map[string]any{"name": fmt.Sprintf("sa-%d", i%7), "uid": "66666666-7777-8888-9999-000000000000"},
			},
		})
		return header + "." + enc.EncodeToString(payload) + "." + sig
	}
	for i := 0; i < tokens; i++ {
		p := i % pods
		uid := fmt.Sprintf("%08d-0000-4000-8000-000000000000", p)
		var err error
		if i < pods {
			err = write(uid, fmt.Sprintf("kube-api-access-%05d", p), map[string]string{"token": tok(i, uid), "ca.crt": ca, "namespace": fmt.Sprintf("ns-%d", i%50)})
		} else {
			err = write(uid, fmt.Sprintf("extra-%d", i/pods), map[string]string{"token": tok(i, uid)})
		}
		if err != nil {
			return nil, err
		}
		t.Tokens++
	}
	return t, nil
}
