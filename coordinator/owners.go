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

// owner is what the readiness checks read of one controller of evicted
// pods.
type owner struct {
	// want and ready are the replicas it wants and its status counts Ready.
	want, ready int32
	// uid and selector find its own pods; selector is nil for a kind whose
	// pods are not counted (a DaemonSet's pods come back on their node).
	uid      types.UID
	selector *metav1.LabelSelector
}

// readOwner reads one controller. found is false for a controller that is
// gone (nothing to wait for) and for a kind that has no replicas to wait
// for (Jobs and others).
func readOwner(ctx context.Context, client kubernetes.Interface, o protocol.OwnerRef) (ow owner, found bool, err error) {
	get := metav1.GetOptions{}
	switch o.Kind {
	case "ReplicaSet":
		rs, err := client.AppsV1().ReplicaSets(o.Namespace).Get(ctx, o.Name, get)
		if err != nil {
			return owner{}, false, ignoreNotFound(err)
		}
		return owner{want: ptrOr(rs.Spec.Replicas, 1), ready: rs.Status.ReadyReplicas, uid: rs.UID, selector: rs.Spec.Selector}, true, nil
	case "StatefulSet":
		ss, err := client.AppsV1().StatefulSets(o.Namespace).Get(ctx, o.Name, get)
		if err != nil {
			return owner{}, false, ignoreNotFound(err)
		}
		return owner{want: ptrOr(ss.Spec.Replicas, 1), ready: ss.Status.ReadyReplicas, uid: ss.UID, selector: ss.Spec.Selector}, true, nil
	case "DaemonSet":
		ds, err := client.AppsV1().DaemonSets(o.Namespace).Get(ctx, o.Name, get)
		if err != nil {
			return owner{}, false, ignoreNotFound(err)
		}
		return owner{want: ds.Status.DesiredNumberScheduled, ready: ds.Status.NumberReady, uid: ds.UID}, true, nil
	default:
		return owner{}, false, nil
	}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// ownersReady reads each controller of the evicted pods: ready when its
// ready replicas reach the desired count.
func ownersReady(ctx context.Context, client kubernetes.Interface, owners []protocol.OwnerRef) (bool, string, error) {
	return checkOwners(ctx, client, owners, false)
}

// ownersPodsReady is ownersReady counting the controllers' pods too: a
// controller whose status says its replicas are Ready is believed only as
// far as its pods, not terminating, are Ready. A controller that has not
// yet seen the drain (its informers lag, say after an API server restart)
// still reports the evicted pod Ready, and a health gate trusting that
// would let the pool's next node start at once.
func ownersPodsReady(ctx context.Context, client kubernetes.Interface, owners []protocol.OwnerRef) (bool, string, error) {
	return checkOwners(ctx, client, owners, true)
}

// checkOwners reads every controller once; with countPods it also lists
// the pods of those that select theirs, and counts only its own Ready,
// non-terminating ones. It stops at the first controller not ready.
func checkOwners(ctx context.Context, client kubernetes.Interface, owners []protocol.OwnerRef, countPods bool) (bool, string, error) {
	for _, o := range owners {
		ow, found, err := readOwner(ctx, client, o)
		if err != nil {
			return false, "", err
		}
		if !found {
			continue
		}
		if ow.ready < ow.want {
			return false, fmt.Sprintf("%s has %d of %d replicas ready", o, ow.ready, ow.want), nil
		}
		if !countPods || ow.selector == nil {
			continue
		}
		s, err := metav1.LabelSelectorAsSelector(ow.selector)
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
			if c := metav1.GetControllerOf(p); c != nil && c.UID == ow.uid && p.DeletionTimestamp == nil && podutils.IsPodReady(p) {
				ready++
			}
		}
		if ready < ow.want {
			return false, fmt.Sprintf("%s has %d of %d replicas ready", o, ready, ow.want), nil
		}
	}
	return true, "", nil
}
