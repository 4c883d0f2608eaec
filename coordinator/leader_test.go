package coordinator

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// When the Lease can no longer be renewed, the work stops before the Lease
// is given up: never two replicas working at once. The Lease's renewals
// fail here; writes that give it up succeed and are checked against the
// work still running.
func TestLeaseReleasedOnlyOnceTheWorkStopped(t *testing.T) {
	client := fake.NewClientset()
	var leading, working, releasedWhileWorking, released atomic.Bool
	client.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		l := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			released.Store(true)
			if working.Load() {
				releasedWhileWorking.Store(true)
			}
			return false, nil, nil
		}
		if leading.Load() {
			return true, nil, errors.New("the API server is unreachable")
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunElected(ctx, LeaderConfig{Client: client, Namespace: "tokenroll", LeaseName: "lease", Identity: "c1",
			LeaseDuration: 300 * time.Millisecond, RenewDeadline: 200 * time.Millisecond, RetryPeriod: 20 * time.Millisecond},
			func(lctx context.Context) error {
				working.Store(true)
				leading.Store(true)
				<-lctx.Done()
				working.Store(false)
				cancel() // one term is enough
				return nil
			})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if releasedWhileWorking.Load() {
		t.Error("the Lease was given up while the work still ran")
	}
	if !released.Load() {
		t.Error("the Lease was never given up")
	}
}
