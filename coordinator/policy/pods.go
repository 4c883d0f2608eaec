package policy

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// PodBlocker selects the pods that keep their node from starting.
type PodBlocker struct {
	pods labels.Selector
	// namespaces is nil for every namespace.
	namespaces labels.Selector
}

// NewPodBlocker compiles a blocking-pod selector.
func NewPodBlocker(s v1alpha1.PodSelector) (PodBlocker, error) {
	var b PodBlocker
	var err error
	if b.pods, err = metav1.LabelSelectorAsSelector(&s.Selector); err != nil {
		return b, err
	}
	if s.NamespaceSelector != nil {
		if b.namespaces, err = metav1.LabelSelectorAsSelector(s.NamespaceSelector); err != nil {
			return b, err
		}
	}
	return b, nil
}

// NeedsNamespaces tells whether any blocker selects namespaces by label.
func NeedsNamespaces(bs []PodBlocker) bool {
	return slices.ContainsFunc(bs, func(b PodBlocker) bool { return b.namespaces != nil })
}

// BlockingPods returns the pods (namespace/name) among a node's that keep
// it from starting: not terminal (Succeeded or Failed), and selected by a
// blocker. nsLabels gives a namespace's labels (only called when a blocker
// selects namespaces).
func BlockingPods(bs []PodBlocker, pods []corev1.Pod, nsLabels func(ns string) labels.Set) []string {
	var out []string
	for i := range pods {
		p := &pods[i]
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, b := range bs {
			if !b.pods.Matches(labels.Set(p.Labels)) {
				continue
			}
			if b.namespaces != nil && !b.namespaces.Matches(nsLabels(p.Namespace)) {
				continue
			}
			out = append(out, p.Namespace+"/"+p.Name)
			break
		}
	}
	slices.Sort(out)
	return out
}
