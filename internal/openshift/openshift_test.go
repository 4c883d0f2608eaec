package openshift

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestParseKubeAPIServerStatus(t *testing.T) {
	obj := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "cluster"}, "status": map[string]any{
		"latestAvailableRevision": int64(12),
		"nodeStatuses": []any{
			map[string]any{"nodeName": "m0", "currentRevision": int64(12)},
			map[string]any{"nodeName": "m1", "currentRevision": int64(11), "targetRevision": int64(12)},
		},
		"conditions": []any{map[string]any{"type": ConditionNodeInstallerProgressing, "status": "True", "reason": ReasonNodeInstaller,
			"message": "1 node is at revision 11; 1 node is at revision 12", "lastTransitionTime": "2026-11-27T10:00:00Z"}},
		"serviceAccountIssuers": []any{map[string]any{"name": "https://new"}, map[string]any{"name": "https://old", "expirationTime": "2026-11-28T10:00:00Z"}},
	}}}
	s, err := ParseKubeAPIServerStatus(obj)
	if err != nil {
		t.Fatal(err)
	}
	if s.LatestAvailableRevision != 12 || len(s.NodeStatuses) != 2 || s.NodeStatuses[1].TargetRevision != 12 {
		t.Errorf("revisions: %+v", s)
	}
	if c, ok := s.Condition(ConditionNodeInstallerProgressing); !ok || c.Status != "True" || c.LastTransitionTime.IsZero() {
		t.Errorf("condition: %+v %v", c, ok)
	}
	if len(s.ServiceAccountIssuers) != 2 || s.ServiceAccountIssuers[0].ExpirationTime != nil || s.ServiceAccountIssuers[1].ExpirationTime == nil {
		t.Errorf("issuers: %+v", s.ServiceAccountIssuers)
	}
	if s.AtLatestRevision() {
		t.Error("a node installing revision 12 is not at the latest revision")
	}
	s.NodeStatuses[1] = NodeStatus{NodeName: "m1", CurrentRevision: 12}
	if !s.AtLatestRevision() {
		t.Error("every node at 12, none installing: at the latest revision")
	}
	if (KubeAPIServerStatus{LatestAvailableRevision: 12}).AtLatestRevision() {
		t.Error("no node reported yet is not settled")
	}
	bad := &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{"latestAvailableRevision": "twelve"}}}
	if _, err := ParseKubeAPIServerStatus(bad); err == nil {
		t.Error("a revision that is not a number parsed")
	}
}
