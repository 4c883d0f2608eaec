package benchkit

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tokenroll/tokenroll/coordinator"
)

// WaitRolloutOver watches the coordinator's state in namespace until the rollout finished or
// halted, and returns it.
func WaitRolloutOver(ctx context.Context, admin kubernetes.Interface, namespace string, timeout time.Duration) (*coordinator.Rollout, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lw := cache.NewListWatchFromClient(admin.CoreV1().RESTClient(), "configmaps", namespace, fields.OneTermEqualSelector("metadata.name", coordinator.ConfigMapName))
	var last *coordinator.Rollout
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.ConfigMap{}, nil, func(ev watch.Event) (bool, error) {
		cm, ok := ev.Object.(*corev1.ConfigMap)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		st, err := coordinator.DecodeState(cm)
		if err != nil || st.Rollout == nil {
			return false, err
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
