package sandbox

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

// The refresh before the issuer change waits for every running app's pod
// to be in its agent's tokens report, and for nothing else: a stopped
// app's pod, or a pod that is no app's, does not hold it up.
func TestTokensReported(t *testing.T) {
	node := func(name string, pods ...string) *corev1.Node {
		rep := protocol.TokenReport{Issuer: "https://issuer.test", TokenIDs: map[string][]string{}}
		for _, p := range pods {
			rep.TokenIDs[p] = []string{"entry"}
		}
		raw, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{protocol.AnnotationTokens: string(raw)}}}
	}
	apps := []AppReport{{Node: "n1", UID: "a", Running: true}, {Node: "n2", UID: "b", Running: true}, {Node: "n2", UID: "gone"}}
	v := view{Nodes: map[string]*corev1.Node{"n1": node("n1", "a", "other"), "n2": node("n2")}}
	if v.tokensReported(apps) {
		t.Error("reported with pod b missing from n2's report: want false")
	}
	v.Nodes["n2"] = node("n2", "b")
	if !v.tokensReported(apps) {
		t.Error("every running app's pod reported: want true")
	}
	v.Nodes["n2"] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}
	if v.tokensReported(apps) {
		t.Error("n2 without a report: want false")
	}
}

// A node the coordinator cordoned before the watch brought its rollout is
// printed as it goes (its step in progress); a finished step of an
// earlier rollout is not.
func TestShownStep(t *testing.T) {
	node := func(s protocol.NodeState) *corev1.Node {
		raw, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{protocol.AnnotationNodeState: string(raw)}}}
	}
	cordoned := node(protocol.NodeState{Rollout: "r-2", Step: protocol.StepCordoned})
	for _, id := range []string{"", "r-1", "r-2"} {
		if s, ok := shownStep(cordoned, id); !ok || s.Step != protocol.StepCordoned {
			t.Errorf("a node cordoned in r-2, the view's rollout %q: got %v %v, want cordoned", id, s.Step, ok)
		}
	}
	if _, ok := shownStep(node(protocol.NodeState{Rollout: "r-1", Step: protocol.StepDone}), "r-2"); ok {
		t.Error("a node done in an earlier rollout is shown")
	}
	if _, ok := shownStep(&corev1.Node{}, ""); ok {
		t.Error("a node without a state is shown")
	}
}
