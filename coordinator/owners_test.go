package coordinator

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// The health gate reads each controller once, and lists the pods only of
// those that select theirs: a DaemonSet's pods come back on their node, a
// Job has nothing to wait for, and a controller that is gone is not waited
// for.
func TestOwnersPodsReadyReadsEachControllerOnce(t *testing.T) {
	rs := replicaSet("app", "web", 1, 1)
	rs.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	p := pod("app", "web-1", "n1", "ReplicaSet", "web")
	p.Labels = map[string]string{"app": "web"}
	rs.UID = p.OwnerReferences[0].UID
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	ss := statefulSet("app", "db", 0, 0)
	ss.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
	client := fake.NewClientset(rs, p, ss, daemonSet("app", "log", 1, 1))
	owners := []protocol.OwnerRef{
		{Kind: "ReplicaSet", Namespace: "app", Name: "web"},
		{Kind: "StatefulSet", Namespace: "app", Name: "db"},
		{Kind: "DaemonSet", Namespace: "app", Name: "log"},
		{Kind: "ReplicaSet", Namespace: "app", Name: "gone"},
		{Kind: "Job", Namespace: "app", Name: "batch"},
	}
	ok, why, err := ownersPodsReady(context.Background(), client, owners)
	if err != nil || !ok {
		t.Fatalf("ownersPodsReady = %v, %q, %v; want ready", ok, why, err)
	}
	var got []string
	for _, a := range client.Actions() {
		r := a.GetResource().Resource
		switch a := a.(type) {
		case k8stesting.GetAction:
			got = append(got, "get "+r+" "+a.GetName())
		case k8stesting.ListAction:
			got = append(got, "list "+r+" "+a.GetListRestrictions().Labels.String())
		}
	}
	want := []string{
		"get replicasets web", "list pods app=web",
		"get statefulsets db", "list pods app=db",
		"get daemonsets log",
		"get replicasets gone",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("requests:\n%q\nwant\n%q", got, want)
	}
}
