package benchkit

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/deploy/kustomize/base/crds"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
)

// WaitRolloutOver watches the TokenRollouts until the current rollout
// finished or halted, and returns it.
func WaitRolloutOver(ctx context.Context, api versioned.Interface, timeout time.Duration) (*coordinator.Rollout, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lw := cache.NewListWatchFromClient(api.TokenrollV1alpha1().RESTClient(), "tokenrollouts", metav1.NamespaceAll, fields.Everything())
	var last *coordinator.Rollout
	seen := map[string]*v1alpha1.TokenRollout{}
	_, err := watchtools.UntilWithSync(ctx, lw, &v1alpha1.TokenRollout{}, nil, func(ev watch.Event) (bool, error) {
		o, ok := ev.Object.(*v1alpha1.TokenRollout)
		if !ok {
			return false, nil
		}
		if ev.Type == watch.Deleted {
			delete(seen, o.Name)
			return false, nil
		}
		seen[o.Name] = o
		st := coordinator.StateOf(slices.Collect(maps.Values(seen)))
		if st.Rollout == nil {
			return false, nil
		}
		last = st.Rollout
		r := st.Rollout
		return !r.FinishedAt.IsZero() || r.Phase == coordinator.RolloutHalted || r.Phase == coordinator.RolloutCancelled, nil
	})
	if err != nil {
		if wait.Interrupted(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("the rollout did not end within %s; last seen %+v", timeout, last)
		}
		return nil, fmt.Errorf("watching the rollout state: %w", err)
	}
	return last, nil
}

// InstallCRDs installs the tokenroll.io CRDs, which the coordinator records
// its rollouts in, and waits until they are served.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	objs, err := crds.Objects()
	if err != nil {
		return err
	}
	return openshiftsim.InstallCRDObjects(ctx, cfg, objs)
}

// WaitRolloutStarted waits until the coordinator has planned a rollout (it
// read the new issuer and judged the agents' reports).
func WaitRolloutStarted(ctx context.Context, api versioned.Interface, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		st, err := coordinator.Store{Client: api}.Get(ctx)
		return err == nil && st.Rollout != nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the coordinator to plan a rollout: %w", err)
	}
	return nil
}
