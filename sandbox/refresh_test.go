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
