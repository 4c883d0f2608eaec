package kubeletsim

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestWriteAtomically(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	now := time.Date(2026, 11, 27, 10, 31, 5, 0, time.UTC)
	payload := map[string]file{
		"token":     {Data: []byte("a"), Mode: 0o644},
		"a/b/token": {Data: []byte("b"), Mode: 0o600},
	}
	wrote, err := writeAtomically(dir, payload, nil, now)
	if err != nil || !wrote {
		t.Fatalf("first write: wrote=%v err=%v", wrote, err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	if got, _ := os.Readlink(filepath.Join(dir, "a")); got != "..data/a" {
		t.Errorf("a -> %q, want only the first path component linked", got)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "a", "b", "token")); string(data) != "b" {
		t.Errorf("nested file reads %q", data)
	}
	if st, _ := os.Stat(filepath.Join(dir, "a", "b", "token")); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}

	// Same payload: nothing written, the link unchanged.
	if wrote, err := writeAtomically(dir, payload, nil, now.Add(time.Minute)); err != nil || wrote {
		t.Fatalf("unchanged payload: wrote=%v err=%v", wrote, err)
	}

	// New payload without "a": the link moves, the old directory and the
	// stale visible link go.
	wrote, err = writeAtomically(dir, map[string]file{"token": {Data: []byte("c"), Mode: 0o644}}, nil, now.Add(2*time.Minute))
	if err != nil || !wrote {
		t.Fatalf("second write: wrote=%v err=%v", wrote, err)
	}
	second, _ := os.Readlink(filepath.Join(dir, "..data"))
	if second == first {
		t.Error("..data still points at the old payload")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 3 {
		t.Errorf("entries %v, want ..data, one timestamped dir and token", names)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "token")); string(data) != "c" {
		t.Errorf("token reads %q", data)
	}

	for _, bad := range []string{"/abs", "../up", "..hidden", "a/../b", ""} {
		if _, err := writeAtomically(dir, map[string]file{bad: {}}, nil, now); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestRequiresRefreshIsTheKubeletsRule(t *testing.T) {
	iat := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	tr := func(secs int64) *authenticationv1.TokenRequest {
		return &authenticationv1.TokenRequest{
			Spec:   authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(secs)},
			Status: authenticationv1.TokenRequestStatus{ExpirationTimestamp: metav1.NewTime(iat.Add(time.Duration(secs) * time.Second))},
		}
	}
	cases := []struct {
		name   string
		secs   int64
		at     time.Duration
		jitter time.Duration
		want   bool
	}{
		{"3607 s at 80%: 3607-721=2886 s, not after", 3607, 2886 * time.Second, 0, false},
		{"3607 s one second later", 3607, 2887 * time.Second, 0, true},
		{"jitter brings it forward", 3607, 2880 * time.Second, 9 * time.Second, true},
		{"7200 s before 5760 s", 7200, 5759 * time.Second, 0, false},
		{"7200 s after 5760 s", 7200, 5761 * time.Second, 0, true},
		{"48 h token: the 24 h rule wins", 48 * 3600, 24*time.Hour + time.Second, 0, true},
		{"48 h token before 24 h", 48 * 3600, 23 * time.Hour, 0, false},
		{"ttl not divisible by 5: 601*20/100=120", 601, 481 * time.Second, 0, false},
		{"ttl not divisible by 5, a second later", 601, 482 * time.Second, 0, true},
	}
	for _, c := range cases {
		if got := requiresRefresh(iat.Add(c.at), tr(c.secs), c.jitter); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
	if requiresRefresh(iat.Add(100*time.Hour), &authenticationv1.TokenRequest{}, 0) {
		t.Error("a request without expirationSeconds must not refresh (the kubelet logs and keeps it)")
	}
}
