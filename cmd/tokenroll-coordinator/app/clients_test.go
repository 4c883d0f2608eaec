package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
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
