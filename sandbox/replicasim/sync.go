package replicasim

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// burstReplicas bounds the pods created or deleted in one sync, as the
// ReplicaSet controller's BurstReplicas does.
const burstReplicas = 500

// sync brings one ReplicaSet's pods to spec.replicas and its status up to
// date, from the informers' caches.
func (c *Controller) sync(ctx context.Context, key cache.ObjectName) error {
	sc := c.scope(key.Namespace)
	if sc == nil {
		return nil
	}
	rs, err := sc.replicaSets.ReplicaSets(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		c.expectations.forget(key)
		c.setWaiting(key, false, 0)
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading ReplicaSet %s from the cache: %w", key, err)
	}
	if !c.selector.Matches(labels.Set(rs.Labels)) {
		return nil // relabelled out of the selector since it was listed
	}
	selector, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil {
		c.log.Error("ReplicaSet has an invalid selector; not managing it", zap.String("namespace", rs.Namespace), zap.String("replicaSet", rs.Name), zap.Error(err))
		return nil //nolint:nilerr // retrying cannot fix the object; an update queues it again
	}
	pods, err := sc.pods.Pods(rs.Namespace).List(selector)
	if err != nil {
		return fmt.Errorf("listing pods of ReplicaSet %s from the cache: %w", key, err)
	}
	active := activePods(rs, pods)

	var manageErr error
	if rs.DeletionTimestamp == nil && c.expectations.satisfied(key) {
		manageErr = c.manageReplicas(ctx, key, rs, active)
	}
	status, recheck := computeStatus(rs, active, c.clock.Now())
	if err := c.updateStatus(ctx, rs, status); err != nil {
		return err
	}
	if recheck > 0 {
		c.queue.AddAfter(key, recheck)
	}
	return manageErr
}

// activePods are the pods rs controls that count: not being deleted and
// not finished.
func activePods(rs *appsv1.ReplicaSet, pods []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		ref := metav1.GetControllerOfNoCopy(p)
		if ref == nil || ref.UID != rs.UID {
			continue
		}
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		out = append(out, p)
	}
	return out
}

func (c *Controller) manageReplicas(ctx context.Context, key cache.ObjectName, rs *appsv1.ReplicaSet, active []*corev1.Pod) error {
	want := int(ptr.Deref(rs.Spec.Replicas, 1))
	diff := len(active) - want
	switch {
	case diff < 0:
		return c.createPods(ctx, key, rs, active, min(-diff, burstReplicas))
	case diff > 0:
		c.setWaiting(key, false, 0)
		return c.deletePods(ctx, key, rs, active, min(diff, burstReplicas))
	default:
		c.setWaiting(key, false, 0)
		return nil
	}
}

func (c *Controller) createPods(ctx context.Context, key cache.ObjectName, rs *appsv1.ReplicaSet, active []*corev1.Pod, n int) error {
	tmpl := &rs.Spec.Template
	var candidates []string
	if tmpl.Spec.NodeName == "" {
		nodes, err := c.nodes.List(labels.Everything())
		if err != nil {
			return fmt.Errorf("listing nodes from the cache: %w", err)
		}
		candidates = schedulableNodes(nodes, tmpl.Spec.NodeSelector)
		if len(candidates) == 0 {
			c.setWaiting(key, true, n)
			return nil // a node event queues the ReplicaSet again
		}
	}
	c.setWaiting(key, false, n)
	counts := podsPerNode(active)
	c.expectations.expectCreations(key, n)
	for i := range n {
		node := tmpl.Spec.NodeName
		if node == "" {
			node = pickNode(candidates, counts)
		}
		pod, err := c.cfg.Client.CoreV1().Pods(rs.Namespace).Create(ctx, podFromTemplate(rs, node), metav1.CreateOptions{})
		if err != nil {
			// The pods not created will never be observed.
			for range n - i {
				c.expectations.creationObserved(key)
			}
			return fmt.Errorf("creating a pod of ReplicaSet %s on node %s (%d of %d missing pods created): %w", key, node, i, n, err)
		}
		counts[node]++
		c.log.Info("created pod", zap.String("namespace", pod.Namespace), zap.String("pod", pod.Name),
			zap.String("replicaSet", rs.Name), zap.String("node", node))
	}
	return nil
}

func (c *Controller) deletePods(ctx context.Context, key cache.ObjectName, rs *appsv1.ReplicaSet, active []*corev1.Pod, n int) error {
	victims := podsToDelete(active, n)
	names := make([]string, len(victims))
	for i, p := range victims {
		names[i] = p.Name
	}
	c.expectations.expectDeletions(key, names)
	for _, p := range victims {
		err := c.cfg.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil {
			c.expectations.deletionObserved(key, p.Name)
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				continue // gone already, or another pod of the name
			}
			return fmt.Errorf("deleting surplus pod %s/%s of ReplicaSet %s: %w", p.Namespace, p.Name, rs.Name, err)
		}
		c.log.Info("deleted surplus pod", zap.String("namespace", p.Namespace), zap.String("pod", p.Name),
			zap.String("replicaSet", rs.Name), zap.String("node", p.Spec.NodeName))
	}
	return nil
}

// podFromTemplate is the pod the ReplicaSet controller would create, bound
// to node: the server appends the random suffix to "<rs>-".
func podFromTemplate(rs *appsv1.ReplicaSet, node string) *corev1.Pod {
	tmpl := &rs.Spec.Template
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    rs.Name + "-",
			Namespace:       rs.Namespace,
			Labels:          maps.Clone(tmpl.Labels),
			Annotations:     maps.Clone(tmpl.Annotations),
			Finalizers:      slices.Clone(tmpl.Finalizers),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, controllerKind)},
		},
		Spec: *tmpl.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = node
	return pod
}

// conditionTaints are the taints the node lifecycle controller keeps in
// step with a node's conditions. The sandbox runs no such controller, so
// they are stale (the TaintNodesByCondition admission plugin puts
// not-ready on every new node, and nothing takes it off): schedulable
// judges the conditions themselves instead.
var conditionTaints = map[string]bool{
	corev1.TaintNodeNotReady:           true,
	corev1.TaintNodeUnreachable:        true,
	corev1.TaintNodeUnschedulable:      true,
	corev1.TaintNodeMemoryPressure:     true,
	corev1.TaintNodeDiskPressure:       true,
	corev1.TaintNodePIDPressure:        true,
	corev1.TaintNodeNetworkUnavailable: true,
}

// schedulable says whether a new pod may be bound to node: Ready and under
// no pressure, not cordoned, no other NoSchedule or NoExecute taint
// (tolerations are not simulated), and matching nodeSelector.
func schedulable(node *corev1.Node, nodeSelector map[string]string) bool {
	if node.Spec.Unschedulable || node.DeletionTimestamp != nil {
		return false
	}
	ready := false
	for _, c := range node.Status.Conditions {
		switch c.Type {
		case corev1.NodeReady:
			ready = c.Status == corev1.ConditionTrue
		case corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure, corev1.NodeNetworkUnavailable:
			if c.Status == corev1.ConditionTrue {
				return false
			}
		}
	}
	if !ready {
		return false
	}
	for _, t := range node.Spec.Taints {
		if conditionTaints[t.Key] {
			continue
		}
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return false
		}
	}
	return labels.SelectorFromSet(nodeSelector).Matches(labels.Set(node.Labels))
}

// schedulableNodes names the nodes that may take a pod, sorted.
func schedulableNodes(nodes []*corev1.Node, nodeSelector map[string]string) []string {
	var out []string
	for _, n := range nodes {
		if schedulable(n, nodeSelector) {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}

func podsPerNode(pods []*corev1.Pod) map[string]int {
	out := map[string]int{}
	for _, p := range pods {
		out[p.Spec.NodeName]++
	}
	return out
}

// pickNode spreads: the candidate (sorted by name) with the fewest of the
// ReplicaSet's pods, the first by name among equals.
func pickNode(candidates []string, counts map[string]int) string {
	best := candidates[0]
	for _, n := range candidates[1:] {
		if counts[n] < counts[best] {
			best = n
		}
	}
	return best
}

// podsToDelete ranks pods as the ReplicaSet controller does, in short:
// unbound before bound, not running before running, not ready before
// ready, crowded nodes before sparse ones, newer before older.
func podsToDelete(pods []*corev1.Pod, n int) []*corev1.Pod {
	counts := podsPerNode(pods)
	ranked := slices.Clone(pods)
	rank := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	slices.SortStableFunc(ranked, func(a, b *corev1.Pod) int {
		return cmp.Or(
			cmp.Compare(rank(a.Spec.NodeName != ""), rank(b.Spec.NodeName != "")),
			cmp.Compare(rank(a.Status.Phase == corev1.PodRunning), rank(b.Status.Phase == corev1.PodRunning)),
			cmp.Compare(rank(podReady(a)), rank(podReady(b))),
			cmp.Compare(counts[b.Spec.NodeName], counts[a.Spec.NodeName]),
			b.CreationTimestamp.Compare(a.CreationTimestamp.Time),
			cmp.Compare(a.Name, b.Name),
		)
	})
	return ranked[:min(n, len(ranked))]
}

// readySince is when pod became Ready, and whether it is.
func readySince(pod *corev1.Pod) (time.Time, bool) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.LastTransitionTime.Time, c.Status == corev1.ConditionTrue
		}
	}
	return time.Time{}, false
}

func podReady(pod *corev1.Pod) bool {
	_, ok := readySince(pod)
	return ok
}

// computeStatus is rs's status from its active pods at now, and how long
// until a ready pod becomes available (0: nothing to wait for).
func computeStatus(rs *appsv1.ReplicaSet, active []*corev1.Pod, now time.Time) (appsv1.ReplicaSetStatus, time.Duration) {
	status := *rs.Status.DeepCopy()
	templateLabels := labels.SelectorFromSet(rs.Spec.Template.Labels)
	minReady := time.Duration(rs.Spec.MinReadySeconds) * time.Second
	var fullyLabeled, ready, available int32
	var recheck time.Duration
	for _, p := range active {
		if templateLabels.Matches(labels.Set(p.Labels)) {
			fullyLabeled++
		}
		since, ok := readySince(p)
		if !ok || p.Status.Phase != corev1.PodRunning {
			continue
		}
		ready++
		if wait := since.Add(minReady).Sub(now); minReady == 0 || wait <= 0 {
			available++
		} else if recheck == 0 || wait < recheck {
			recheck = wait
		}
	}
	status.Replicas = int32(len(active))
	status.FullyLabeledReplicas = fullyLabeled
	status.ReadyReplicas = ready
	status.AvailableReplicas = available
	status.ObservedGeneration = rs.Generation
	return status, recheck
}

// updateStatus writes status through the status subresource when it
// differs from what the cache holds.
func (c *Controller) updateStatus(ctx context.Context, rs *appsv1.ReplicaSet, status appsv1.ReplicaSetStatus) error {
	cur := rs.Status
	if cur.Replicas == status.Replicas && cur.FullyLabeledReplicas == status.FullyLabeledReplicas &&
		cur.ReadyReplicas == status.ReadyReplicas && cur.AvailableReplicas == status.AvailableReplicas &&
		cur.ObservedGeneration == status.ObservedGeneration {
		return nil
	}
	out := rs.DeepCopy()
	out.Status = status
	if _, err := c.cfg.Client.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, out, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		// A conflict means a newer ReplicaSet is on its way to the cache,
		// and its event queues the ReplicaSet again.
		if apierrors.IsConflict(err) {
			return nil
		}
		return fmt.Errorf("updating the status of ReplicaSet %s/%s: %w", rs.Namespace, rs.Name, err)
	}
	c.log.Debug("ReplicaSet status", zap.String("namespace", rs.Namespace), zap.String("replicaSet", rs.Name),
		zap.Int32("replicas", status.Replicas), zap.Int32("readyReplicas", status.ReadyReplicas),
		zap.Int32("availableReplicas", status.AvailableReplicas), zap.Int64("observedGeneration", status.ObservedGeneration))
	return nil
}
