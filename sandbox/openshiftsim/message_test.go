package openshiftsim

import (
	"testing"

	"github.com/tokenroll/tokenroll/internal/openshift"
)

func nodesAt(revs ...int32) []openshift.NodeStatus {
	out := make([]openshift.NodeStatus, len(revs))
	for i, r := range revs {
		out[i] = openshift.NodeStatus{NodeName: "master-" + string(rune('0'+i)), CurrentRevision: r}
	}
	return out
}

// The messages OpenShift shows during and after a kube-apiserver rollout,
// as the OpenShift documentation's procedure and `oc get clusteroperators` quote them.
func TestRevisionDescription(t *testing.T) {
	for _, tc := range []struct {
		name       string
		nodes      []openshift.NodeStatus
		latest     int32
		want       string
		wantStatus string
		wantReason string
	}{
		{"settled", nodesAt(11, 11, 11), 11, "3 nodes are at revision 11", "False", openshift.ReasonAllNodesAtLatestRevision},
		{"new revision, no node yet", nodesAt(11, 11, 11), 12, "3 nodes are at revision 11; 0 nodes have achieved new revision 12", "True", openshift.ReasonNodeInstaller},
		{"one node done", nodesAt(12, 11, 11), 12, "2 nodes are at revision 11; 1 node is at revision 12", "True", openshift.ReasonNodeInstaller},
		{"two nodes done", nodesAt(12, 12, 11), 12, "1 node is at revision 11; 2 nodes are at revision 12", "True", openshift.ReasonNodeInstaller},
		{"all done", nodesAt(12, 12, 12), 12, "3 nodes are at revision 12", "False", openshift.ReasonAllNodesAtLatestRevision},
		{"oldest revision first whatever the node order", nodesAt(12, 11, 12), 12, "1 node is at revision 11; 2 nodes are at revision 12", "True", openshift.ReasonNodeInstaller},
		{"fresh install", nodesAt(0, 0, 0), 11, "3 nodes are at revision 0; 0 nodes have achieved new revision 11", "True", openshift.ReasonNodeInstaller},
		{"three revisions and a newer one", nodesAt(10, 12, 11), 13, "1 node is at revision 10; 1 node is at revision 11; 1 node is at revision 12; 0 nodes have achieved new revision 13", "True", openshift.ReasonNodeInstaller},
		{"superseded mid-rollout", nodesAt(12, 11, 11), 13, "2 nodes are at revision 11; 1 node is at revision 12; 0 nodes have achieved new revision 13", "True", openshift.ReasonNodeInstaller},
		{"single node settled", nodesAt(5), 5, "1 node is at revision 5", "False", openshift.ReasonAllNodesAtLatestRevision},
		{"single node rolling", nodesAt(5), 6, "1 node is at revision 5; 0 nodes have achieved new revision 6", "True", openshift.ReasonNodeInstaller},
		{"target revision does not count", []openshift.NodeStatus{{NodeName: "a", CurrentRevision: 11, TargetRevision: 12}, {NodeName: "b", CurrentRevision: 11}}, 12, "2 nodes are at revision 11; 0 nodes have achieved new revision 12", "True", openshift.ReasonNodeInstaller},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := revisionDescription(tc.nodes, tc.latest); got != tc.want {
				t.Errorf("message\n got %q\nwant %q", got, tc.want)
			}
			conds := nodeInstallerConditions(tc.nodes, tc.latest)
			s := openshift.KubeAPIServerStatus{Conditions: conds}
			c, ok := s.Condition(openshift.ConditionNodeInstallerProgressing)
			if !ok {
				t.Fatalf("no %s condition in %+v", openshift.ConditionNodeInstallerProgressing, conds)
			}
			if c.Status != tc.wantStatus || c.Reason != tc.wantReason || c.Message != tc.want {
				t.Errorf("condition = %s/%s %q, want %s/%s %q", c.Status, c.Reason, c.Message, tc.wantStatus, tc.wantReason, tc.want)
			}
			if d, ok := s.Condition(openshift.ConditionNodeInstallerDegraded); !ok || d.Status != "False" {
				t.Errorf("%s = %+v, want False", openshift.ConditionNodeInstallerDegraded, d)
			}
		})
	}
}
