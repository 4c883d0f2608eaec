// Package nodeutil holds the rules on Node objects that the coordinator,
// the status command and the sandbox share, so each has one definition.
package nodeutil

import corev1 "k8s.io/api/core/v1"

// Ready reports whether the node's Ready condition is True; a node that
// reports none is not Ready.
func Ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
