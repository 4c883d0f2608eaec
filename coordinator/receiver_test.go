package coordinator

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/protocol"
)

// The agents' reports on the Nodes reach app detection: a caching app
// whose token its volumes no longer hold is found from the report, with
// audit events that name no bound pod; a report seen again (a resync) is
// not fed twice, and a standby (no detector) takes nothing.
func TestVolumeFeed(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	c := &Coordinator{}
	feed := newVolumeFeed(c)
	node := func(ids map[string][]string) *corev1.Node {
		raw, _ := json.Marshal(protocol.TokenReport{Issuer: "https://iss", TokenIDs: ids})
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{protocol.AnnotationTokens: string(raw)}}}
	}
	refreshed := map[string][]string{"uid-cache": {protocol.TokenIDEntry(protocol.TokenID("new"), clk.Now())}}
	feed.node(node(refreshed)) // a standby: nothing to feed, nothing kept
	if len(feed.last) != 0 {
		t.Fatalf("a standby kept %v", feed.last)
	}
	d := apps.NewDetector(apps.Config{Grace: 2 * time.Minute, Window: 15 * time.Minute, RepeatEvents: time.Hour, Clock: clk})
	d.SetPod(apps.Pod{UID: "uid-cache", Namespace: "apps", Name: "cache", Node: "n1", Running: true, TokenAudiences: []string{""}}, false)
	c.detector.Store(d)
	present := func() {
		d.Observe(audit.Event{Kind: audit.Presented, Time: clk.Now(), User: "system:serviceaccount:apps:default", Code: 200,
			Pod: audit.PodRef{Namespace: "apps", Name: "cache", UID: "uid-cache", Node: "n1"}, JTI: "old"})
	}
	present()
	clk.Step(3 * time.Minute)
	present()
	feed.node(node(refreshed))
	if res := d.Evaluate(); res.Stale != 1 {
		t.Fatalf("stale %d after the agent's report; want the caching pod", res.Stale)
	}
	if len(feed.last) != 1 {
		t.Errorf("fed digests %v, want n1's", feed.last)
	}
	// The same report again changes nothing; a new detector (a new term)
	// is fed afresh.
	d2 := apps.NewDetector(apps.Config{Grace: 2 * time.Minute, Window: 15 * time.Minute, RepeatEvents: time.Hour, Clock: clk})
	c.detector.Store(d2)
	feed.node(node(refreshed))
	if feed.fedTo != d2 {
		t.Error("a new term's detector was not fed the report")
	}
}
