package faultproxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		method, path string
		want         Request
	}{
		{"PATCH", "/api/v1/nodes/n1", Request{Verb: "patch", Resource: "nodes", Name: "n1"}},
		{"PATCH", "/api/v1/nodes/n1/status", Request{Verb: "patch", Resource: "nodes", Name: "n1", Subresource: "status"}},
		{"GET", "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3Dn1", Request{Verb: "watch", Resource: "nodes"}},
		{"GET", "/api/v1/nodes?limit=500", Request{Verb: "list", Resource: "nodes"}},
		{"PUT", "/api/v1/namespaces/tokenroll/configmaps/tokenroll-rollout", Request{Verb: "update", Resource: "configmaps", Namespace: "tokenroll", Name: "tokenroll-rollout"}},
		{"POST", "/api/v1/namespaces/build/pods/web/eviction", Request{Verb: "create", Resource: "pods", Namespace: "build", Name: "web", Subresource: "eviction"}},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/tokenroll/leases/tokenroll-coordinator", Request{Verb: "update", Resource: "leases", Namespace: "tokenroll", Name: "tokenroll-coordinator"}},
		{"DELETE", "/api/v1/namespaces/build/pods", Request{Verb: "deletecollection", Resource: "pods", Namespace: "build"}},
		{"GET", "/.well-known/openid-configuration", Request{Verb: "get"}},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		if got := Parse(r); got != c.want {
			t.Errorf("%s %s = %+v, want %+v", c.method, c.path, got, c.want)
		}
	}
}

// upstream is a stand-in API server that serves one Node and counts what
// reaches it.
type upstream struct {
	mu      sync.Mutex
	patches int
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPatch {
		u.mu.Lock()
		u.patches++
		u.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.patches
}

func start(t *testing.T, rules ...Rule) (*Proxy, *upstream, kubernetes.Interface) {
	t.Helper()
	up := &upstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	p, err := New(&rest.Config{Host: srv.URL}, 42, rules...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if !strings.HasPrefix(p.URL(), "http://127.0.0.1:") {
		t.Errorf("the proxy listens on %s, not loopback", p.URL())
	}
	return p, up, kubernetes.NewForConfigOrDie(p.Config(&rest.Config{Timeout: 300 * time.Millisecond}))
}

func patch(c kubernetes.Interface) error {
	_, err := c.CoreV1().Nodes().Patch(context.Background(), "n1", types.MergePatchType, []byte(`{"metadata":{"annotations":{"a":"b"}}}`), metav1.PatchOptions{})
	return err
}

// Skip and Count choose which matching requests fail; others pass, and
// requests the rule does not match are never touched.
func TestServerErrorOnChosenRequests(t *testing.T) {
	p, up, c := start(t, Rule{Verb: "patch", Resource: "nodes", Fault: ServerError, Skip: 1, Count: 2})
	var got []bool
	for range 5 {
		err := patch(c)
		if err != nil && !apierrors.IsInternalError(err) {
			t.Fatalf("patch: %v, want a 500 InternalError or nothing", err)
		}
		got = append(got, err != nil)
	}
	if want := []bool{false, true, true, false, false}; !slices.Equal(got, want) {
		t.Errorf("failed patches %v, want %v", got, want)
	}
	if _, err := c.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{}); err != nil {
		t.Errorf("a get, which no rule names: %v", err)
	}
	if up.count() != 3 || len(p.Injected()) != 2 {
		t.Errorf("%d patches reached the server, %d faults injected; want 3 and 2", up.count(), len(p.Injected()))
	}
}

// A throttle says how long to wait, in the header and in the Status, where
// client-go's callers read it.
func TestThrottleSaysRetryAfter(t *testing.T) {
	p, _, _ := start(t, Rule{Verb: "patch", Fault: Throttle, RetryAfter: 7})
	req, _ := http.NewRequest(http.MethodPatch, p.URL()+"/api/v1/nodes/n1", strings.NewReader(`{}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st metav1.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	err = &apierrors.StatusError{ErrStatus: st}
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || !apierrors.IsTooManyRequests(err) {
		t.Errorf("answer %d, Retry-After %q, %v", resp.StatusCode, resp.Header.Get("Retry-After"), err)
	}
	if s, ok := apierrors.SuggestsClientDelay(err); !ok || s != 7 {
		t.Errorf("SuggestsClientDelay = %d, %v; want 7", s, ok)
	}
}

// A hang delivers the write and withholds the answer: the client times
// out on a write that landed.
func TestHangDeliversAndWithholds(t *testing.T) {
	_, up, c := start(t, Rule{Verb: "patch", Fault: Hang, Count: 1})
	err := patch(c)
	if err == nil || !strings.Contains(err.Error(), "Client.Timeout") && !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("patch through a hang = %v, want a client timeout", err)
	}
	if up.count() != 1 {
		t.Errorf("%d patches reached the server; want the hung one", up.count())
	}
	if err := patch(c); err != nil || up.count() != 2 {
		t.Errorf("the next patch: %v, %d at the server", err, up.count())
	}
}

// A probability draws from the seed: the same seed, the same faults.
func TestProbabilityIsSeeded(t *testing.T) {
	run := func() []bool {
		_, _, c := start(t, Rule{Verb: "patch", Fault: ServerError, Probability: 0.5})
		var got []bool
		for range 12 {
			got = append(got, patch(c) != nil)
		}
		return got
	}
	a, b := run(), run()
	n := 0
	for _, f := range a {
		if f {
			n++
		}
	}
	if !slices.Equal(a, b) || n == 0 || n == len(a) {
		t.Errorf("draws %v and %v: want the same, some failing and some not", a, b)
	}
}
