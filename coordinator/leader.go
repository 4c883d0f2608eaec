package coordinator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderConfig configures leader election on a Lease.
type LeaderConfig struct {
	Client                                    kubernetes.Interface
	Namespace, LeaseName                      string
	Identity                                  string // default hostname_uuid
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *zap.Logger
	// Healthz, when set, watches the leader: its Check fails once this
	// replica holds the Lease but has not renewed it for longer than the
	// lease duration plus the adaptor's timeout (a wedged leader), so the
	// process's /healthz fails and the kubelet restarts it.
	Healthz *leaderelection.HealthzAdaptor
}

// Identity is hostname_uuid, unique per process.
func Identity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return host + "_" + uuid.NewString()
}

// release gives the Lease up if this replica still holds it, as client-go
// does on cancel (holder cleared, a one-second duration), so the next leader
// need not wait out the lease duration. The Lease's resourceVersion guards
// the write: a Lease taken meanwhile is left alone.
func release(lock *resourcelock.LeaseLock, lc LeaderConfig) {
	ctx, cancel := context.WithTimeout(context.Background(), lc.RenewDeadline)
	defer cancel()
	rec, _, err := lock.Get(ctx)
	if err != nil || rec.HolderIdentity != lc.Identity {
		return
	}
	now := metav1.NewTime(time.Now())
	if err := lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaderTransitions: rec.LeaderTransitions, LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now,
	}); err != nil {
		lc.Log.Info("could not release the Lease; the next leader waits for it to expire", zap.Error(err))
		return
	}
	lc.Log.Info("released the Lease", zap.String("lease", lc.Namespace+"/"+lc.LeaseName))
}

// RunElected campaigns for the Lease and runs lead on the context leader
// election gives, which ends the instant leadership is lost; then it
// campaigns again, until ctx ends. The Lease is released on the way out.
func RunElected(ctx context.Context, lc LeaderConfig, lead func(context.Context) error) error {
	if lc.Client == nil || lc.Namespace == "" || lc.LeaseName == "" {
		return errors.New("leader election needs a client, a namespace and a Lease name")
	}
	if lc.Identity == "" {
		lc.Identity = Identity()
	}
	if lc.Log == nil {
		lc.Log = zap.NewNop()
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: lc.Namespace, Name: lc.LeaseName},
		Client:     lc.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: lc.Identity},
	}
	for ctx.Err() == nil {
		finished := make(chan struct{})
		var started, failed atomic.Bool
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: lc.LeaseDuration, RenewDeadline: lc.RenewDeadline, RetryPeriod: lc.RetryPeriod,
			// client-go's ReleaseOnCancel gives the Lease up before the
			// context of OnStartedLeading ends, so another replica could
			// lead while this one's work still runs: release runs below,
			// once the work has stopped.
			ReleaseOnCancel: false, Name: lc.LeaseName, WatchDog: lc.Healthz,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					started.Store(true)
					defer close(finished)
					lc.Log.Info("became the leader", zap.String("identity", lc.Identity), zap.String("lease", lc.Namespace+"/"+lc.LeaseName))
					if err := lead(lctx); err != nil && lctx.Err() == nil {
						failed.Store(true)
						lc.Log.Error("the coordinator stopped with an error; giving up leadership", zap.Error(err))
					}
				},
				OnStoppedLeading: func() { lc.Log.Info("not the leader", zap.String("identity", lc.Identity)) },
				OnNewLeader: func(id string) {
					if id != lc.Identity {
						lc.Log.Info("another replica leads", zap.String("leader", id))
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		if lc.Healthz != nil {
			lc.Healthz.SetLeaderElection(le)
		}
		// OnStartedLeading runs on its own goroutine; Run returns when
		// leadership ends. Wait for the work to stop before campaigning again.
		runCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-finished:
				cancel() // the work ended by itself (an error): give the Lease up
			case <-runCtx.Done():
			}
		}()
		le.Run(runCtx)
		cancel()
		if started.Load() {
			<-finished
			release(lock, lc)
		}
		if failed.Load() {
			// Let another replica try before this one campaigns again.
			select {
			case <-ctx.Done():
			case <-time.After(lc.LeaseDuration):
			}
		}
	}
	return nil
}
