package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
)

// A Lease renewal is not queued behind the coordinator's own requests: with
// the coordinator's rate limit used up, the leader-election client is
// served at once.
func TestLeaderElectionHasItsOwnRateLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{"name":"l","namespace":"ns"}}`))
	}))
	defer srv.Close()
	client, election, err := newClients(&rest.Config{Host: srv.URL, QPS: 1, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The coordinator's budget of one request a second is used up.
	if _, err := client.CoordinationV1().Leases("ns").Get(ctx, "l", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	// A renewal that must be done within half a second: a shared limiter
	// would make it wait a second, and fail at once.
	renew, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := election.CoordinationV1().Leases("ns").Get(renew, "l", metav1.GetOptions{}); err != nil {
		t.Fatalf("the leader-election request waited on the coordinator's rate limit: %v", err)
	}
}

// The coordinator's client asks the API server for protobuf for the
// built-in types it watches and writes (Nodes and Pods, the bulk of what it
// decodes, at about a third of JSON's cost), falling back to JSON, and
// sends its creates and updates as protobuf; the clients of tokenroll's own
// resources, which the API server serves as JSON alone, speak JSON. A
// content type set on the shared configuration would break one or the
// other.
func TestClientsContentTypes(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][2]string{} // "VERB path": Accept, Content-Type
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Method+" "+r.URL.Path] = [2]string{r.Header.Get("Accept"), r.Header.Get("Content-Type")}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL}
	client, election, err := newClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	policies, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	meta := metav1.ObjectMeta{Name: "x", Namespace: "ns"}
	_, _ = client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if w, err := client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{}); err == nil {
		w.Stop()
	}
	_, _ = client.CoreV1().Nodes().Patch(ctx, "x", types.StrategicMergePatchType, []byte(`{}`), metav1.PatchOptions{})
	_, _ = client.CoreV1().ConfigMaps("ns").Update(ctx, &corev1.ConfigMap{ObjectMeta: meta}, metav1.UpdateOptions{})
	_, _ = client.EventsV1().Events("ns").Create(ctx, &eventsv1.Event{ObjectMeta: meta}, metav1.CreateOptions{})
	_, _ = election.CoordinationV1().Leases("ns").Update(ctx, &coordinationv1.Lease{ObjectMeta: meta}, metav1.UpdateOptions{})
	_, _ = policies.TokenrollV1alpha1().RolloutPolicies().List(ctx, metav1.ListOptions{})
	_, _ = policies.TokenrollV1alpha1().TokenRollouts().Create(ctx, &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})

	const pb, pbOrJSON = "application/vnd.kubernetes.protobuf", "application/vnd.kubernetes.protobuf,application/json"
	for _, c := range []struct{ req, accept, contentType string }{
		{"GET /api/v1/nodes", pbOrJSON, ""},
		{"GET /api/v1/pods", pbOrJSON, ""},
		{"PATCH /api/v1/nodes/x", pbOrJSON, string(types.StrategicMergePatchType)},
		{"PUT /api/v1/namespaces/ns/configmaps/x", pbOrJSON, pb},
		{"POST /apis/events.k8s.io/v1/namespaces/ns/events", pbOrJSON, pb},
		{"PUT /apis/coordination.k8s.io/v1/namespaces/ns/leases/x", pbOrJSON, pb},
		{"GET /apis/tokenroll.io/v1alpha1/rolloutpolicies", "application/json, */*", ""},
		{"POST /apis/tokenroll.io/v1alpha1/tokenrollouts", "application/json, */*", "application/json"},
	} {
		got, ok := seen[c.req]
		if !ok {
			t.Errorf("%s: not sent (sent: %v)", c.req, seen)
			continue
		}
		if got[0] != c.accept || got[1] != c.contentType {
			t.Errorf("%s: Accept %q, Content-Type %q; want %q, %q", c.req, got[0], got[1], c.accept, c.contentType)
		}
	}
}
