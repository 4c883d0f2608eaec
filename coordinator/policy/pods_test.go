package policy

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

func TestBlockingPods(t *testing.T) {
	db, err := NewPodBlocker(v1alpha1.PodSelector{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := NewPodBlocker(v1alpha1.PodSelector{
		Selector:          metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "job", Operator: metav1.LabelSelectorOpExists}}},
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "batch"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(ns, name string, phase corev1.PodPhase, l map[string]string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l}, Status: corev1.PodStatus{Phase: phase}}
	}
	pods := []corev1.Pod{
		pod("prod", "db-0", corev1.PodRunning, map[string]string{"app": "db"}),
		pod("prod", "db-old", corev1.PodSucceeded, map[string]string{"app": "db"}),
		pod("prod", "web", corev1.PodRunning, map[string]string{"app": "web"}),
		pod("nightly", "etl", corev1.PodPending, map[string]string{"job": "etl"}),
		pod("dev", "etl", corev1.PodRunning, map[string]string{"job": "etl"}),
	}
	ns := map[string]labels.Set{"nightly": {"team": "batch"}, "dev": {"team": "dev"}}
	got := BlockingPods([]PodBlocker{db, batch}, pods, func(n string) labels.Set { return ns[n] })
	if want := []string{"nightly/etl", "prod/db-0"}; !slices.Equal(got, want) {
		t.Errorf("blocking %v, want %v", got, want)
	}
	if !NeedsNamespaces([]PodBlocker{db, batch}) || NeedsNamespaces([]PodBlocker{db}) {
		t.Error("NeedsNamespaces")
	}
}
