package coordinator

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/util/podutils"

	"github.com/tokenroll/tokenroll/protocol"
)

// ownersPodsReady is ownersReady counting the controllers' pods too: a
// controller whose status says its replicas are Ready is believed only as
// far as its pods, not terminating, are Ready. A controller that has not
// yet seen the drain (its informers lag, say after an API server restart)
// still reports the evicted pod Ready, and a health gate trusting that
// would let the pool's next node start at once.
func ownersPodsReady(ctx context.Context, client kubernetes.Interface, owners []protocol.OwnerRef) (bool, string, error) {
	if ok, why, err := ownersReady(ctx, client, owners); !ok || err != nil {
		return ok, why, err
	}
	for _, o := range owners {
		var want int32
		var uid types.UID
		var sel *metav1.LabelSelector
		switch o.Kind {
		case "ReplicaSet":
			rs, err := client.AppsV1().ReplicaSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return false, "", err
			}
			want, uid, sel = ptrOr(rs.Spec.Replicas, 1), rs.UID, rs.Spec.Selector
		case "StatefulSet":
			ss, err := client.AppsV1().StatefulSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return false, "", err
			}
			want, uid, sel = ptrOr(ss.Spec.Replicas, 1), ss.UID, ss.Spec.Selector
		default:
			continue
		}
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return false, "", fmt.Errorf("%s's selector: %w", o, err)
		}
		pods, err := client.CoreV1().Pods(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: s.String()})
		if err != nil {
			return false, "", fmt.Errorf("listing the pods of %s: %w", o, err)
		}
		var ready int32
		for i := range pods.Items {
			p := &pods.Items[i]
			if c := metav1.GetControllerOf(p); c != nil && c.UID == uid && p.DeletionTimestamp == nil && podutils.IsPodReady(p) {
				ready++
			}
		}
		if ready < want {
			return false, fmt.Sprintf("%s has %d of %d replicas ready", o, ready, want), nil
		}
	}
	return true, "", nil
}
