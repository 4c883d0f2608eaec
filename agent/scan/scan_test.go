package scan

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/protocol"
)

const iat = 1795000000

var now = time.Unix(iat+600, 0).UTC()

func jwt(claims map[string]any) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(claims)
	return enc.EncodeToString([]byte(`{"alg":"ES256"}`)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte("sig"))
}

// claimsFor are a bound token's claims; the pod's UID is uid-<pod>, as the
// tests name pod directories.
func claimsFor(ns, pod, node, iss string, iatOff, ttl int64) map[string]any {
	return map[string]any{
		"iss": iss, "aud": []string{"https://kubernetes.default.svc"}, "iat": iat + iatOff, "exp": iat + iatOff + ttl,
		"kubernetes.io": map[string]any{
			"namespace": ns, "pod": map[string]any{"name": pod, "uid": "uid-" + pod},
			"serviceaccount": map[string]any{"name": "default"}, "node": map[string]any{"name": node},
		},
	}
}

// volume lays out files in dir as the kubelet's AtomicWriter does: a
// timestamped payload directory, ..data, and visible links.
func volume(t *testing.T, root, podUID, vol string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(root, "pods", podUID, ProjectedDir, vol)
	ts := "..2026_11_27_10_31_05.123"
	for rel, content := range files {
		p := filepath.Join(dir, ts, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
	must(t, os.MkdirAll(filepath.Join(dir, ts), 0o755))
	must(t, os.Symlink(ts, filepath.Join(dir, "..data")))
	seen := map[string]bool{}
	for rel := range files {
		top := strings.SplitN(rel, "/", 2)[0]
		if !seen[top] {
			seen[top] = true
			must(t, os.Symlink(filepath.Join("..data", top), filepath.Join(dir, top)))
		}
	}
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// scanWithin fails the test if a scan does not finish in a minute: a scan
// that blocks on a hostile file would otherwise hang the suite.
func scanWithin(t *testing.T, opts Options) *Report {
	t.Helper()
	type result struct {
		r   *Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := NewScanner().Scan(opts)
		done <- result{r, err}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatal(res.err)
		}
		return res.r
	case <-time.After(time.Minute):
		t.Fatal("scan blocked")
		return nil
	}
}

func find(r *Report, vol, path string) *Token {
	for i := range r.Tokens {
		if r.Tokens[i].Volume == vol && r.Tokens[i].Path == path {
			return &r.Tokens[i]
		}
	}
	return nil
}

func TestScanJudgesAndAttributes(t *testing.T) {
	root := t.TempDir()
	const iss = "https://kubernetes.default.svc"
	volume(t, root, "uid-web", "kube-api-access-abcde", map[string]string{
		"token":     jwt(claimsFor("apps", "web", "worker-1", iss, 0, 3600)),
		"ca.crt":    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		"namespace": "apps",
	})
	volume(t, root, "uid-nginx", "vault-token", map[string]string{
		"a/b/token": jwt(claimsFor("build", "nginx", "worker-1", "https://old.example", 0, 7200)),
	})
	volume(t, root, "uid-cron", "stale", map[string]string{
		"token": jwt(claimsFor("apps", "cron", "worker-1", iss, -2800, 3600)), // refreshAt 80 s after the base: overdue by 8m40s
	})
	volume(t, root, "uid-deleted", "kube-api-access-zzzzz", map[string]string{
		"token": jwt(claimsFor("apps", "deleted", "worker-1", iss, 0, 3600)),
	})

	r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: 5 * time.Minute, Pods: map[string]podsapi.Pod{
		"uid-web":   {Namespace: "apps", Name: "web", ServiceAccount: "default", TokenPaths: map[string][]string{"kube-api-access-abcde": {"token"}}},
		"uid-nginx": {Namespace: "build", Name: "nginx", ServiceAccount: "default", TokenPaths: map[string][]string{"vault-token": {"a/b/token"}}},
		"uid-cron":  {Namespace: "apps", Name: "cron", ServiceAccount: "default", TokenPaths: map[string][]string{"stale": {"token"}}},
	}})
	if len(r.Tokens) != 4 {
		t.Fatalf("got %d tokens, want 4 (ca.crt and namespace are not tokens): %+v", len(r.Tokens), r.Tokens)
	}
	if r.Node != "worker-1" {
		t.Errorf("node %q, want the node the tokens name", r.Node)
	}
	web := find(r, "kube-api-access-abcde", "token")
	if web == nil || web.State != protocol.StateFresh || web.Namespace != "apps" || web.Pod != "web" || web.ServiceAccount != "default" ||
		web.PodUID != "uid-web" || web.TTLSeconds != 3600 || !web.RefreshAt.Equal(time.Unix(iat+2880, 0)) {
		t.Errorf("web token: %+v", web)
	}
	if v := find(r, "vault-token", "a/b/token"); v == nil || v.State != protocol.StateIssuerMismatch || !strings.Contains(v.Reason, "https://old.example") {
		t.Errorf("nested old-issuer token: %+v", v)
	}
	if v := find(r, "stale", "token"); v == nil || v.State != protocol.StateOverdue {
		t.Errorf("stale token: %+v", v)
	}
	if v := find(r, "kube-api-access-zzzzz", "token"); v == nil || v.State != protocol.StateOrphaned {
		t.Errorf("token of a pod the kubelet does not run: %+v", v)
	}
	// Worst first; orphaned last.
	if r.Tokens[0].State != protocol.StateIssuerMismatch || r.Tokens[3].State != protocol.StateOrphaned {
		t.Errorf("order: %s ... %s", r.Tokens[0].State, r.Tokens[3].State)
	}
	want := map[protocol.State]int{protocol.StateFresh: 1, protocol.StateIssuerMismatch: 1, protocol.StateOverdue: 1, protocol.StateOrphaned: 1}
	for s, n := range want {
		if r.Summary[s] != n {
			t.Errorf("summary[%s] = %d, want %d (%v)", s, r.Summary[s], n, r.Summary)
		}
	}

	// Without the Pods API nothing is orphaned.
	r = scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: 5 * time.Minute})
	if v := find(r, "kube-api-access-zzzzz", "token"); v == nil || v.State != protocol.StateFresh {
		t.Errorf("without the Pods API: %+v", v)
	}
}

func TestScanJSONShape(t *testing.T) {
	root := t.TempDir()
	volume(t, root, "uid-web", "v", map[string]string{
		"token": jwt(claimsFor("apps", "web", "worker-1", "https://i", 0, 3600)),
		"bad":   "eyJh.a.c2ln",
	})
	r := scanWithin(t, Options{Root: root, Now: now, Grace: time.Minute})
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Node    string           `json:"node"`
		Now     string           `json:"now"`
		Tokens  []map[string]any `json:"tokens"`
		Summary map[string]int   `json:"summary"`
	}
	must(t, json.Unmarshal(data, &doc))
	if doc.Now != now.Format(time.RFC3339) || doc.Summary["fresh"] != 1 || doc.Summary["foreign"] != 1 {
		t.Errorf("document: %s", data)
	}
	for _, tok := range doc.Tokens {
		switch tok["state"] {
		case "foreign":
			for _, absent := range []string{"namespace", "pod", "issuer", "issuedAt", "expiresAt", "ttlSeconds", "refreshAt", "warnAfter"} {
				if _, ok := tok[absent]; ok {
					t.Errorf("foreign token has %q: %v", absent, tok)
				}
			}
			if tok["reason"] == "" || tok["path"] != "bad" || tok["podUID"] != "uid-web" || tok["volume"] != "v" {
				t.Errorf("foreign token: %v", tok)
			}
		case "fresh":
			for _, present := range []string{"podUID", "namespace", "pod", "serviceAccount", "volume", "path", "issuer", "audiences", "issuedAt", "expiresAt", "ttlSeconds", "refreshAt", "state", "reason"} {
				if _, ok := tok[present]; !ok {
					t.Errorf("fresh token lacks %q: %v", present, tok)
				}
			}
			if _, ok := tok["warnAfter"]; ok {
				t.Errorf("warnAfter present on a token without it: %v", tok)
			}
			if tok["refreshAt"] != time.Unix(iat+2880, 0).UTC().Format(time.RFC3339) {
				t.Errorf("refreshAt %v", tok["refreshAt"])
			}
		}
	}
}

// TestHostileFiles: everything "Reading files safely" names is reported as
// invalid with its reason, quickly, and nothing outside the volume is read.
func TestHostileFiles(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside-token")
	must(t, os.WriteFile(outside, []byte(jwt(claimsFor("x", "y", "z", "https://i", 0, 3600))), 0o644))
	dir := volume(t, root, "uid-web", "hostile", map[string]string{"good": jwt(claimsFor("apps", "web", "worker-1", "https://i", 0, 3600))})

	must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	must(t, os.Symlink(outside, filepath.Join(dir, "abs-link-out")))
	must(t, os.Symlink("../../../../../../"+filepath.Base(filepath.Dir(outside))+"/outside-token", filepath.Join(dir, "rel-link-out")))
	must(t, os.Symlink("..data/../../other", filepath.Join(dir, "dotdot-out")))
	big, err := os.Create(filepath.Join(dir, "huge"))
	must(t, err)
	must(t, big.Truncate(9<<20))
	big.Close()
	must(t, os.Symlink(".", filepath.Join(dir, "loop")))
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	must(t, os.Symlink("..", filepath.Join(dir, "sub", "up")))
	must(t, os.Symlink("ping", filepath.Join(dir, "pong")))
	must(t, os.Symlink("pong", filepath.Join(dir, "ping")))
	must(t, os.Symlink("nowhere", filepath.Join(dir, "dangling")))
	deep := dir
	for i := 0; i < 12; i++ {
		deep = filepath.Join(deep, "d")
	}
	must(t, os.MkdirAll(deep, 0o755))
	ln, err := net.Listen("unix", filepath.Join(dir, "sock"))
	must(t, err)
	defer ln.Close()
	devErr := syscall.Mknod(filepath.Join(dir, "null"), syscall.S_IFCHR|0o644, 1<<8|3) // like /dev/null

	r := scanWithin(t, Options{Root: root, Now: now, Grace: time.Minute})
	cases := map[string]string{
		"fifo":            "named pipe",
		"abs-link-out":    "outside the volume",
		"rel-link-out":    "outside the volume",
		"dotdot-out":      "outside the volume",
		"huge":            "9437184 bytes, larger than the 65536",
		"loop":            "directory loop",
		"sub/up":          "directory loop",
		"ping":            "loop",
		"pong":            "loop",
		"dangling":        "dangling",
		"d/d/d/d/d/d/d/d": "deeper than 8",
		"sock":            "socket",
	}
	if devErr == nil {
		cases["null"] = "character device"
	} else {
		t.Logf("mknod not permitted here (%v); device case skipped", devErr)
	}
	for path, want := range cases {
		tok := find(r, "hostile", path)
		if tok == nil {
			t.Errorf("%s: not reported", path)
			continue
		}
		if tok.State != protocol.StateInvalid || !strings.Contains(tok.Reason, want) {
			t.Errorf("%s: %s %q, want invalid with %q", path, tok.State, tok.Reason, want)
		}
	}
	if g := find(r, "hostile", "good"); g == nil || g.State != protocol.StateFresh {
		t.Errorf("the good token beside them: %+v", g)
	}
	for _, tok := range r.Tokens {
		if tok.Namespace == "x" {
			t.Errorf("a token outside the volume was read through %s", tok.Path)
		}
	}
}

func TestScanErrors(t *testing.T) {
	if _, err := NewScanner().Scan(Options{Root: filepath.Join(t.TempDir(), "nope"), Now: now}); err == nil || !strings.Contains(err.Error(), "--kubelet-root") {
		t.Errorf("missing root: %v", err)
	}
	// A root with no pods directory yet is an empty node, not an error.
	r, err := NewScanner().Scan(Options{Root: t.TempDir(), Now: now})
	if err != nil || len(r.Tokens) != 0 {
		t.Errorf("empty root: %v %v", r, err)
	}
}

func TestWriteJSONIsTheReportAsJSON(t *testing.T) {
	root := t.TempDir()
	volume(t, root, "uid-web", "v", map[string]string{"token": jwt(claimsFor("apps", "web", "worker-1", "https://i", 0, 3600)), "bad": "eyJh.a.c2ln"})
	r := scanWithin(t, Options{Root: root, Now: now, Grace: time.Minute})
	var streamed, whole bytes.Buffer
	must(t, WriteJSON(&streamed, r))
	must(t, json.NewEncoder(&whole).Encode(r))
	var a, b any
	must(t, json.Unmarshal(streamed.Bytes(), &a))
	must(t, json.Unmarshal(whole.Bytes(), &b))
	if !reflect.DeepEqual(a, b) {
		t.Errorf("streamed JSON differs:\n%s\nvs\n%s", streamed.String(), whole.String())
	}
	empty := &Report{Node: "n", Now: now, Tokens: []Token{}, Summary: map[protocol.State]int{}}
	streamed.Reset()
	must(t, WriteJSON(&streamed, empty))
	if err := json.Unmarshal(streamed.Bytes(), &a); err != nil {
		t.Errorf("empty report: %v\n%s", err, streamed.String())
	}
}
