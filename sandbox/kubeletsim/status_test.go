package kubeletsim

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
)

// A status post moves the Ready condition's heartbeat, not its transition
// time, from the first post after registering on: as the kubelet does, so
// that a controller watching Nodes sees no change where there is none.
func TestStatusPostKeepsTheTransitionTime(t *testing.T) {
	registered := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(registered)
	n, err := New(Config{Name: "n1", Root: t.TempDir(), RESTConfig: &rest.Config{Host: "https://127.0.0.1:1"}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset()
	n.client = client
	ctx := context.Background()
	if err := n.register(ctx); err != nil {
		t.Fatal(err)
	}
	for _, step := range []time.Duration{5 * time.Minute, 5 * time.Minute} {
		clk.Step(step)
		n.postStatus(ctx)
		node, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ready *corev1.NodeCondition
		for i := range node.Status.Conditions {
			if node.Status.Conditions[i].Type == corev1.NodeReady {
				ready = &node.Status.Conditions[i]
			}
		}
		if ready == nil {
			t.Fatalf("no Ready condition after a status post: %+v", node.Status.Conditions)
		}
		if !ready.LastHeartbeatTime.Time.Equal(clk.Now()) {
			t.Errorf("heartbeat %s, want %s", ready.LastHeartbeatTime, clk.Now())
		}
		if !ready.LastTransitionTime.Time.Equal(registered) {
			t.Errorf("transition time %s after a post with Ready unchanged; want %s, when the node registered", ready.LastTransitionTime, registered)
		}
	}
}
