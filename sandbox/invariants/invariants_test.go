package invariants

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tokenroll/tokenroll/protocol"
)

// A request written and verified while the watch was down (an API server
// restart) is never seen on the Node; the agent's answer to it is, and it
// counts.
func TestRequestSeenOnlyThroughItsStatusCounts(t *testing.T) {
	st, _ := json.Marshal(protocol.Status{ID: "r1-ab12", Action: protocol.ActionKubeletRestart, Phase: protocol.PhaseDone})
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{
		protocol.AnnotationStatus: string(st),
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Watch(ctx, fake.NewClientset(node), "tokenroll", "lease")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Summary().ActionsPerNode["node-a"]; got != 1 {
		t.Errorf("ActionsPerNode[node-a] = %d, want 1 (the request its status answers)", got)
	}
}
