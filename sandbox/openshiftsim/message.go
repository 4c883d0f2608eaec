package openshiftsim

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/tokenroll/tokenroll/internal/openshift"
)

// revisionDescription is the message of NodeInstallerProgressing as
// library-go's static-pod installer controller writes it: one clause per
// current revision, oldest first, and, while no node has reached the latest
// revision, a clause saying so. For example
//
//	3 nodes are at revision 11; 0 nodes have achieved new revision 12
//	2 nodes are at revision 11; 1 node is at revision 12
//	3 nodes are at revision 12
//
// It is for people; nothing should parse it.
func revisionDescription(nodes []openshift.NodeStatus, latest int32) string {
	counts := map[int32]int{}
	progressing := 0
	for _, n := range nodes {
		counts[n.CurrentRevision]++
		if n.CurrentRevision != latest {
			progressing++
		}
	}
	var clauses []string
	for _, rev := range slices.Sorted(maps.Keys(counts)) {
		if n := counts[rev]; n == 1 {
			clauses = append(clauses, fmt.Sprintf("1 node is at revision %d", rev))
		} else {
			clauses = append(clauses, fmt.Sprintf("%d nodes are at revision %d", n, rev))
		}
	}
	if progressing > 0 && counts[latest] == 0 {
		clauses = append(clauses, fmt.Sprintf("0 nodes have achieved new revision %d", latest))
	}
	return strings.Join(clauses, "; ")
}

// nodeInstallerConditions are the conditions the installer controller keeps
// on the operator resource, without transition times.
func nodeInstallerConditions(nodes []openshift.NodeStatus, latest int32) []openshift.OperatorCondition {
	progressing := openshift.OperatorCondition{
		Type:    openshift.ConditionNodeInstallerProgressing,
		Status:  "False",
		Reason:  openshift.ReasonAllNodesAtLatestRevision,
		Message: revisionDescription(nodes, latest),
	}
	for _, n := range nodes {
		if n.CurrentRevision != latest {
			progressing.Status, progressing.Reason = "True", openshift.ReasonNodeInstaller
			break
		}
	}
	return []openshift.OperatorCondition{
		progressing,
		{Type: openshift.ConditionNodeInstallerDegraded, Status: "False"},
	}
}
