package coordinator

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/tokenroll/tokenroll/protocol"
)

// A kubelet's periodic status post moves only heartbeat times, and an
// agent's hourly report rewrite as pods come and go moves only its
// TokenIDs: neither must cost a sync (a re-plan of the fleet); any other
// change must.
func TestNodeUpdatesThatAskForASync(t *testing.T) {
	report := func(tokens int, ids map[string][]string) string {
		raw, err := json.Marshal(protocol.TokenReport{Issuer: newIssuer, Tokens: tokens, Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: tokens}}, TokenIDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	ids := map[string][]string{"uid-1": {"0123456789abcdef@1764244800"}}
	replaced := map[string][]string{"uid-2": {"fedcba9876543210@1764248400"}}
	base := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "10", Annotations: map[string]string{"a": "1", protocol.AnnotationTokens: report(1, ids)}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(t0), LastTransitionTime: metav1.NewTime(t0)},
		}}}
	heartbeat := func(n *corev1.Node) {
		n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(t0.Add(5 * time.Minute))
		n.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	}
	for _, tc := range []struct {
		name   string
		change func(*corev1.Node)
		sync   bool
	}{
		{"heartbeat only", heartbeat, false},
		{"annotation", func(n *corev1.Node) { heartbeat(n); n.Annotations["a"] = "2" }, true},
		{"Ready status", func(n *corev1.Node) {
			heartbeat(n)
			n.Status.Conditions[0].Status = corev1.ConditionFalse
		}, true},
		{"condition added", func(n *corev1.Node) {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: "ServiceAccountTokensStale", Status: corev1.ConditionFalse})
		}, true},
		{"cordon", func(n *corev1.Node) { n.Spec.Unschedulable = true }, true},
		{"report's TokenIDs only", func(n *corev1.Node) { n.Annotations[protocol.AnnotationTokens] = report(1, replaced) }, false},
		{"report's TokenIDs and heartbeat", func(n *corev1.Node) { heartbeat(n); n.Annotations[protocol.AnnotationTokens] = report(1, replaced) }, false},
		{"report's TokenIDs and another annotation", func(n *corev1.Node) {
			n.Annotations[protocol.AnnotationTokens] = report(1, replaced)
			n.Annotations["a"] = "2"
		}, true},
		{"report's token count", func(n *corev1.Node) { n.Annotations[protocol.AnnotationTokens] = report(2, ids) }, true},
		{"report's issuer", func(n *corev1.Node) {
			n.Annotations[protocol.AnnotationTokens] = strings.ReplaceAll(report(1, ids), newIssuer, oldIssuer)
		}, true},
		{"report unreadable", func(n *corev1.Node) { n.Annotations[protocol.AnnotationTokens] = "{" }, true},
		{"report removed", func(n *corev1.Node) { delete(n.Annotations, protocol.AnnotationTokens) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := cache.NewStore(cache.MetaNamespaceKeyFunc)
			if err := store.Add(base); err != nil {
				t.Fatal(err)
			}
			mc := cache.NewIntegerResourceVersionMutationCache(klog.Background(), store, nil, time.Minute, false)
			syncs := 0
			h := nodeOnChange(mc, nil, func() { syncs++ })
			updated := base.DeepCopy()
			updated.ResourceVersion = "11"
			tc.change(updated)
			if err := store.Update(updated); err != nil { // as the informer does before its handlers
				t.Fatal(err)
			}
			h.OnUpdate(base, updated)
			if got := syncs == 1; got != tc.sync {
				t.Errorf("%d syncs asked for, want a sync: %v", syncs, tc.sync)
			}
			if syncs > 1 {
				t.Errorf("%d syncs for one update", syncs)
			}
		})
	}
}
