package sandbox

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/internal/apiretry"
)

// The census lists pods through the API server's restart (the revision
// rollout restarts the only API server of a one-server sandbox): a dropped
// connection is tried again; a refusal is not.
func TestCensusThroughAnAPIServerRestart(t *testing.T) {
	for _, c := range []struct {
		name      string
		fail      error
		wantLists int
		wantErr   bool
	}{
		{"connection reset", fmt.Errorf("read tcp 127.0.0.1:54160->127.0.0.1:36613: %w", syscall.ECONNRESET), 2, false},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", fmt.Errorf("no")), 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			client := fake.NewClientset()
			lists := 0
			client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
				lists++
				if lists == 1 {
					return true, nil, c.fail
				}
				return false, nil, nil
			})
			s := &Sandbox{Admin: client, retry: apiretry.Policy{Backoff: wait.Backoff{Steps: 3}}}
			_, err := s.census(context.Background(), "https://new.test")
			if (err != nil) != c.wantErr || lists != c.wantLists {
				t.Errorf("census: %v after %d pod list(s); want an error %v after %d", err, lists, c.wantErr, c.wantLists)
			}
		})
	}
}
