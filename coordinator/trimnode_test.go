package coordinator

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// TestTrimNodeKeepsWhatTheCoordinatorReads: a cached Node keeps its whole
// metadata but the managed fields, its whole spec, its conditions and its
// boot ID, what the coordinator reads of a Node, and nothing else of its
// status.
func TestTrimNodeKeepsWhatTheCoordinatorReads(t *testing.T) {
	full := realisticNode(7, 3)
	full.Spec.Unschedulable = true
	full.Spec.Taints = []corev1.Taint{{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}}
	o, err := trimNode(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := o.(*corev1.Node)
	want := full.DeepCopy()
	want.ManagedFields = nil
	if !equality.Semantic.DeepEqual(got.ObjectMeta, want.ObjectMeta) || !equality.Semantic.DeepEqual(got.Spec, want.Spec) {
		t.Errorf("trimmed metadata or spec differ:\n%+v\n%+v\nwant\n%+v\n%+v", got.ObjectMeta, got.Spec, want.ObjectMeta, want.Spec)
	}
	if !equality.Semantic.DeepEqual(got.Status.Conditions, full.Status.Conditions) || got.Status.NodeInfo.BootID != full.Status.NodeInfo.BootID || got.Status.NodeInfo.BootID == "" {
		t.Errorf("trimmed conditions %+v, boot ID %q; want %+v, %q", got.Status.Conditions, got.Status.NodeInfo.BootID, full.Status.Conditions, full.Status.NodeInfo.BootID)
	}
	rest := got.Status
	rest.Conditions, rest.NodeInfo.BootID = nil, ""
	if !equality.Semantic.DeepEqual(rest, corev1.NodeStatus{}) {
		t.Errorf("the trimmed status keeps %+v beside the conditions and the boot ID", rest)
	}
}
