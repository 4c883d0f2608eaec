package scan

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/protocol"
)

const iss = "https://kubernetes.default.svc"

// with changes claims (a copy) at a dotted path ("kubernetes.io.pod.uid").
func with(c map[string]any, path string, v any) map[string]any {
	out, _ := json.Marshal(c)
	var cp map[string]any
	_ = json.Unmarshal(out, &cp)
	m := cp
	keys := strings.Split(strings.Replace(path, "kubernetes.io", "kubernetes·io", 1), ".")
	for i, k := range keys {
		k = strings.Replace(k, "·", ".", 1)
		if i == len(keys)-1 {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
			break
		}
		m = m[k].(map[string]any)
	}
	return cp
}

// TestForeignFiles: which JWTs in a pod's volumes are its service-account
// tokens, with the kubelet's pod list and without it.
func TestForeignFiles(t *testing.T) {
	web := claimsFor("apps", "web", "worker-1", iss, 0, 3600)
	expired := claimsFor("apps", "web", "worker-1", "https://old", -7200, 3600)
	coredns := claimsFor("kube-system", "coredns", "worker-1", iss, -7200, 3600)
	github := map[string]any{"iss": "https://token.actions.githubusercontent.com", "aud": "sts.amazonaws.com", "iat": iat, "exp": iat + 300, "sub": "repo:o/r"}
	pods := map[string]podsapi.Pod{"uid-web": {Namespace: "apps", Name: "web", ServiceAccount: "default",
		TokenPaths: map[string][]string{"kube-api-access-x": {"token"}, "mixed": {"sa/token"}}}}

	cases := []struct {
		name    string
		vol     string
		files   map[string]string
		pods    map[string]podsapi.Pod
		node    string
		path    string
		state   protocol.State
		reason  string
		ns, pod string
	}{
		{"the spec's token path is judged, names from the pod", "kube-api-access-x", map[string]string{"token": jwt(web)}, pods, "", "token", protocol.StateFresh, "", "apps", "web"},
		{"an expired token in a Secret of a listed pod is foreign", "mixed", map[string]string{"sa/token": jwt(web), "vault": jwt(expired)}, pods, "", "vault", protocol.StateForeign, "not a serviceAccountToken projection", "apps", "web"},
		{"a GitHub token in a projected Secret is foreign", "mixed", map[string]string{"sa/token": jwt(web), "gh": jwt(github)}, pods, "", "gh", protocol.StateForeign, "not a serviceAccountToken projection", "apps", "web"},
		{"a forged coredns token in a listed pod is never coredns's", "mixed", map[string]string{"sa/token": jwt(web), "forged": jwt(coredns)}, pods, "", "forged", protocol.StateForeign, "not a serviceAccountToken projection", "apps", "web"},
		{"a nested token path of the spec", "mixed", map[string]string{"sa/token": jwt(expired)}, pods, "", "sa/token", protocol.StateExpired, "expired", "apps", "web"},
		{"a token at the spec's path naming another pod", "kube-api-access-x", map[string]string{"token": jwt(coredns)}, pods, "", "token", protocol.StateForeign, "another pod", "apps", "web"},
		{"the spec's token path not a JWT", "kube-api-access-x", map[string]string{"token": "hello, world"}, pods, "", "token", protocol.StateInvalid, "not a JWT", "apps", "web"},

		{"without the pod list: claims naming this pod", "kube-api-access-x", map[string]string{"token": jwt(expired)}, nil, "worker-1", "token", protocol.StateExpired, "expired", "apps", "web"},
		{"without the pod list: claims naming another pod", "kube-api-access-x", map[string]string{"token": jwt(coredns)}, nil, "worker-1", "token", protocol.StateForeign, "another pod", "", ""},
		{"without the pod list: claims naming no pod", "kube-api-access-x", map[string]string{"token": jwt(github)}, nil, "worker-1", "token", protocol.StateForeign, "name no pod", "", ""},
		{"without the pod list: another node", "kube-api-access-x", map[string]string{"token": jwt(with(expired, "kubernetes.io.node.name", "worker-2"))}, nil, "worker-1", "token", protocol.StateForeign, "another node", "", ""},
		{"without the pod list: node unknown, UID alone", "kube-api-access-x", map[string]string{"token": jwt(with(expired, "kubernetes.io.node.name", "worker-2"))}, nil, "", "token", protocol.StateExpired, "expired", "apps", "web"},
		{"without the pod list: a token with no node claim (before 1.30)", "kube-api-access-x", map[string]string{"token": jwt(with(expired, "kubernetes.io.node", nil))}, nil, "worker-1", "token", protocol.StateExpired, "expired", "apps", "web"},
		{"without the pod list: a namespace that is no Kubernetes name", "kube-api-access-x", map[string]string{"token": jwt(with(expired, "kubernetes.io.namespace", "Kube System"))}, nil, "worker-1", "token", protocol.StateForeign, "not a Kubernetes name", "", ""},
		{"without the pod list: a pod name that is no Kubernetes name", "kube-api-access-x", map[string]string{"token": jwt(with(expired, "kubernetes.io.pod.name", "web/../x"))}, nil, "worker-1", "token", protocol.StateForeign, "not a Kubernetes name", "", ""},
		{"without the pod list: claims that cannot be read", "kube-api-access-x", map[string]string{"token": "eyJh.eyJh.c2ln"}, nil, "worker-1", "token", protocol.StateForeign, "cannot be read", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			volume(t, root, "uid-web", c.vol, c.files)
			r := scanWithin(t, Options{Root: root, Node: c.node, Now: now, ExpectedIssuer: iss, Grace: time.Minute, Pods: c.pods})
			tok := find(r, c.vol, c.path)
			if tok == nil {
				t.Fatalf("not reported: %+v", r.Tokens)
			}
			if tok.State != c.state || !strings.Contains(tok.Reason, c.reason) || tok.Namespace != c.ns || tok.Pod != c.pod {
				t.Errorf("%s %s/%s (%q), want %s %s/%s (%q)", tok.State, tok.Namespace, tok.Pod, tok.Reason, c.state, c.ns, c.pod, c.reason)
			}
			if tok.State == protocol.StateForeign && (!tok.IssuedAt.IsZero() || !tok.RefreshAt.IsZero() || tok.ServiceAccount != "") {
				t.Errorf("a foreign token carries judged fields: %+v", tok)
			}
			if c.pods != nil && r.PodsAPI != protocol.PodsAPIListed || c.pods == nil && r.PodsAPI != protocol.PodsAPIAbsent {
				t.Errorf("podsAPI %q", r.PodsAPI)
			}
		})
	}
}

// TestForeignNeverCounts: foreign tokens are in the summary, and nothing a
// tenant can place makes the node look stale to the rules that act.
func TestForeignNeverCounts(t *testing.T) {
	root := t.TempDir()
	volume(t, root, "uid-web", "mixed", map[string]string{
		"sa/token": jwt(claimsFor("apps", "web", "worker-1", iss, 0, 3600)),
		"a":        jwt(claimsFor("kube-system", "coredns", "worker-1", "https://old", -7200, 3600)),
		"b":        jwt(claimsFor("apps", "web", "worker-1", "https://old", -7200, 3600)),
	})
	r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute,
		Pods: map[string]podsapi.Pod{"uid-web": {Namespace: "apps", Name: "web", TokenPaths: map[string][]string{"mixed": {"sa/token"}}}}})
	if r.Summary[protocol.StateForeign] != 2 || r.Summary[protocol.StateFresh] != 1 || len(r.Summary) != 2 {
		t.Errorf("summary %v", r.Summary)
	}
	for _, tok := range r.Tokens {
		if tok.State.NeedsWork() || tok.State.Alarm() || tok.State.NotRefreshed() {
			t.Errorf("%s/%s is %s", tok.Volume, tok.Path, tok.State)
		}
	}
	if last := r.Tokens[len(r.Tokens)-1]; last.State != protocol.StateForeign {
		t.Errorf("foreign does not sort last: %s", last.State)
	}
}

// TestPodsListCollapsed: an empty list from the kubelet while pods have
// volumes is not believed, and neither is no answer: nothing is orphaned,
// claims attribute the tokens, and the report says it is incomplete.
func TestPodsListCollapsed(t *testing.T) {
	root := t.TempDir()
	volume(t, root, "uid-web", "kube-api-access-x", map[string]string{"token": jwt(claimsFor("apps", "web", "worker-1", "https://old", 0, 3600))})
	for _, c := range []struct {
		name string
		pods map[string]podsapi.Pod
		api  protocol.PodsAPI
		want protocol.PodsAPI
	}{
		{"empty list", map[string]podsapi.Pod{}, "", protocol.PodsAPIEmpty},
		{"initializing", nil, protocol.PodsAPIInitializing, protocol.PodsAPIInitializing},
		{"refused", nil, protocol.PodsAPIUnavailable, protocol.PodsAPIUnavailable},
	} {
		r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute, Pods: c.pods, PodsAPI: c.api})
		tok := find(r, "kube-api-access-x", "token")
		if r.PodsAPI != c.want || r.Complete() || tok == nil || tok.State != protocol.StateIssuerMismatch || tok.Pod != "web" {
			t.Errorf("%s: podsAPI %q complete %v, token %+v", c.name, r.PodsAPI, r.Complete(), tok)
		}
	}
	// An empty list on a node with no pod volumes is believed.
	r := scanWithin(t, Options{Root: t.TempDir(), Now: now, Pods: map[string]podsapi.Pod{}})
	if r.PodsAPI != protocol.PodsAPIListed || !r.Complete() {
		t.Errorf("empty node: %q", r.PodsAPI)
	}
}

// TestEntryCapIsReported: a volume, a directory in it and a pod's list of
// volumes cut at the entry cap are problems in the report; the pod's own
// token is judged whether or not the listing reached it (see
// TestSpecPathsReadDirectly for one it cannot reach).
func TestEntryCapIsReported(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{"zz-token": jwt(claimsFor("apps", "web", "worker-1", "https://old", 0, 3600))}
	for i := range maxDirEntries + 10 {
		files[fmt.Sprintf("d/k%04d", i)] = "v"
		files[fmt.Sprintf("k%04d", i)] = "v"
	}
	volume(t, root, "uid-web", "big", files)
	pods := map[string]podsapi.Pod{"uid-web": {Namespace: "apps", Name: "web", TokenPaths: map[string][]string{"big": {"zz-token"}}}}
	r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute, Pods: pods})
	if !r.Partial || len(r.Errors) != 2 {
		t.Fatalf("partial %v, errors %q", r.Partial, r.Errors)
	}
	for _, want := range []string{`/big" holds more than 1024 entries`, `/big/d" holds more than 1024 entries`} {
		if !strings.Contains(strings.Join(r.Errors, "\n"), want) {
			t.Errorf("errors %q lack %q", r.Errors, want)
		}
	}
	if tok := find(r, "big", "zz-token"); tok == nil || tok.State != protocol.StateIssuerMismatch {
		t.Errorf("the pod's token: %+v", tok)
	}
	var out bytes.Buffer
	must(t, WriteTable(&out, r, iss))
	if !strings.Contains(out.String(), "holds more than 1024 entries") {
		t.Errorf("the table does not say so:\n%s", out.String())
	}
}

// TestOutputsCapClaims: a long issuer and a path with control characters
// reach the JSON capped and the table capped and escaped.
func TestOutputsCapClaims(t *testing.T) {
	root := t.TempDir()
	long := "https://" + strings.Repeat("i", 1500)
	evil := "x\x1b[2Jy"
	volume(t, root, "uid-web", "v", map[string]string{
		"token": jwt(claimsFor("apps", "web", "worker-1", long, 0, 3600)),
		evil:    jwt(map[string]any{"iss": long, "aud": []string{long}, "iat": iat, "exp": iat + 60}),
	})
	r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute})
	var js, table bytes.Buffer
	must(t, WriteJSON(&js, r))
	must(t, WriteTable(&table, r, iss))
	for _, out := range []string{js.String(), table.String()} {
		if strings.Contains(out, long[:protocol.MaxClaimLen+1]) {
			t.Errorf("an issuer longer than %d bytes reached the output", protocol.MaxClaimLen)
		}
	}
	if strings.ContainsRune(table.String(), '\x1b') {
		t.Error("a control character reached the table")
	}
	if !strings.Contains(table.String(), `"v/x\x1b[2Jy"`) {
		t.Errorf("the path is not shown escaped:\n%s", table.String())
	}
	if tok := find(r, "v", evil); tok == nil || tok.State != protocol.StateForeign {
		t.Errorf("the file with no pod claims: %+v", tok)
	}
}

// claimsOnPage is a token whose claims, with the '.' that ends them, fill
// exactly one page: its signature starts on the next.
func claimsOnPage(t *testing.T) string {
	t.Helper()
	page := os.Getpagesize()
	enc := base64.RawURLEncoding
	for pad := range 4 * page {
		for kid := range 3 {
			c := claimsFor("apps", "web", "worker-1", iss, 0, 3600)
			c["x-pad"] = strings.Repeat("j", pad) // a claim tokenroll does not read
			payload, _ := json.Marshal(c)
			head := enc.EncodeToString([]byte(`{"alg":"RS256","kid":"` + strings.Repeat("k", kid) + `"}`))
			if claims := head + "." + enc.EncodeToString(payload) + "."; len(claims) == page {
				return claims
			}
		}
	}
	t.Fatal("no padding puts the claims on one page")
	return ""
}

// TestReadStopsAtClaims: the reader maps a token file whose signature
// pages are gone (the file was cut to its claims after the size was read),
// so touching any byte of the signature faults. It must return exactly the
// claims, without a fault.
func TestReadStopsAtClaims(t *testing.T) {
	claims := claimsOnPage(t)
	path := filepath.Join(t.TempDir(), "token")
	must(t, os.WriteFile(path, []byte(claims+strings.Repeat("A", 60<<10)), 0o644))
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	must(t, os.Truncate(path, int64(len(claims))))
	r := newVolumeReader()
	got, problem := r.mapClaims(int(f.Fd()), len(claims)+60<<10)
	if problem != "" || string(got) != claims[:len(claims)-1] {
		t.Fatalf("got %d bytes, problem %q; want the %d bytes of the claims", len(got), problem, len(claims)-1)
	}
	// A file cut inside its claims is a problem, not a crash.
	must(t, os.Truncate(path, 0))
	if _, problem := r.mapClaims(int(f.Fd()), len(claims)+60<<10); !strings.Contains(problem, "shrank") {
		t.Errorf("file cut to nothing: problem %q", problem)
	}
}

// TestSignatureNeverRead: a scan of a token with a signature of 60 KiB reads
// (read(2)) only the first bytes of each file; the rest of the claims come
// from the mapping, and the signature from nowhere.
func TestSignatureNeverRead(t *testing.T) {
	root := t.TempDir()
	claims := claimsOnPage(t)
	volume(t, root, "uid-web", "v", map[string]string{"token": claims + strings.Repeat("A", 60<<10)})
	s := NewScanner()
	before := readBytes(t)
	r, err := s.Scan(Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute})
	read := readBytes(t) - before
	must(t, err)
	if tok := find(r, "v", "token"); tok == nil || tok.State != protocol.StateFresh {
		t.Fatalf("token: %+v", tok)
	}
	// What reading /proc/self/io itself counts, and eight bytes of the token.
	if read > 4096 {
		t.Errorf("the scan read %d bytes; the signature alone is %d", read, 60<<10)
	}
}

// readBytes is this process's rchar: bytes read through read(2) and the
// like, not through a mapping.
func readBytes(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			var n int64
			if _, err := fmt.Sscan(v, &n); err == nil {
				return n
			}
		}
	}
	t.Skip("no rchar in /proc/self/io")
	return 0
}

// TestScannerClearsWhatItRead: after a scan the reader's buffer holds no
// byte of any token.
func TestScannerClearsWhatItRead(t *testing.T) {
	root := t.TempDir()
	volume(t, root, "uid-web", "v", map[string]string{"token": jwt(claimsFor("apps", "web", "worker-1", iss, 0, 3600)), "ca.crt": "-----BEGIN CERTIFICATE-----\n"})
	s := NewScanner()
	r, err := s.Scan(Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute})
	if err != nil || len(r.Tokens) != 1 {
		t.Fatalf("%v %+v", err, r)
	}
	if i := bytes.IndexFunc(s.reader.buf, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("the read buffer still holds data at byte %d", i)
	}
}

// TestSpecPathsReadDirectly: a token path of the pod's spec that the walk
// does not reach (deeper than it goes) is read from the spec's path.
func TestSpecPathsReadDirectly(t *testing.T) {
	root := t.TempDir()
	deep := strings.Repeat("d/", maxDepth+2) + "token"
	volume(t, root, "uid-web", "v", map[string]string{deep: jwt(claimsFor("apps", "web", "worker-1", "https://old", 0, 3600))})
	pods := map[string]podsapi.Pod{"uid-web": {Namespace: "apps", Name: "web", TokenPaths: map[string][]string{"v": {deep, "missing"}}}}
	r := scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute, Pods: pods})
	if tok := find(r, "v", deep); tok == nil || tok.State != protocol.StateIssuerMismatch || len(r.Tokens) != 1 {
		t.Errorf("tokens %+v", r.Tokens)
	}
	// Without the spec the walk stops at its depth and says so.
	r = scanWithin(t, Options{Root: root, Now: now, ExpectedIssuer: iss, Grace: time.Minute})
	if tok := find(r, "v", deep); tok != nil || len(r.Tokens) != 1 || !strings.Contains(r.Tokens[0].Reason, "deeper than") {
		t.Errorf("without the spec: %+v", r.Tokens)
	}
}
