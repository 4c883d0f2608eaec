package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator/apps"
)

func appPod(name, node, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{
			Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

// The leader follows the pods and takes audit events through Observe: a
// caching app's pod becomes app-stale, with an Event on it and the status
// `tokenroll status` reads. A replica that does not lead drops events.
func TestLeadDetectsAppStalePods(t *testing.T) {
	cache := appPod("cache-1", "n1", "10.1.0.5")
	f := newFixture(t, testNode("n1"), cache)
	f.cfg.Apps = &apps.Options{Grace: 2 * time.Minute, Window: 15 * time.Minute, Interval: 10 * time.Second}
	c := f.newCoordinator()
	ref := audit.PodRef{Namespace: "shop", Name: cache.Name, UID: cache.UID, Node: "n1"}
	issue := func(jti string) {
		c.Observe(audit.Event{Kind: audit.Issued, Time: f.clock.Now(), User: "system:node:n1", Code: 201,
			Pod: audit.PodRef{Namespace: "shop", Name: cache.Name, UID: cache.UID}, JTI: jti})
	}
	present := func(jti string) {
		c.Observe(audit.Event{Kind: audit.Presented, Time: f.clock.Now(), Code: 200, Pod: ref, JTI: jti})
	}
	issue("j0") // not leading: dropped

	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Lead(ctx) }()
	// The detector is handed over once the pods are read; nothing to
	// watch for that but the pointer.
	if err := wait.PollUntilContextTimeout(f.ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return c.detector.Load() != nil, nil
	}); err != nil {
		t.Fatal("the leader's app detection did not start")
	}
	issue("j1")
	present("j1")
	f.clock.Step(time.Minute)
	issue("j2")
	for range 15 {
		present("j1")
		f.clock.Step(10 * time.Second)
	}
	// Evaluations run on the clock's ticks, written at most every 30 s.
	var st *apps.Status
	if err := wait.PollUntilContextTimeout(f.ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		f.clock.Step(10 * time.Second)
		var err error
		st, err = apps.ReadStatus(f.ctx, f.client, testNS)
		return err == nil && st != nil && st.Stale == 1, nil
	}); err != nil {
		t.Fatalf("the apps status never listed the app-stale pod: %+v", st)
	}
	if len(st.Pods) != 1 || st.Pods[0].Name != cache.Name || st.Nodes["n1"] != [4]int{1, 0, 1, 0} {
		t.Errorf("apps status %+v", st)
	}
	f.waitUntil("a Warning Event on the pod", func() bool {
		for _, o := range f.list(eventsv1.SchemeGroupVersion.WithResource("events"), "shop") {
			if e, ok := o.(*eventsv1.Event); ok && e.Regarding.Name == cache.Name && e.Reason == apps.ReasonAppStale && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	})
	rep, err := BuildStatus(f.ctx, f.client, f.api, testNS, newIssuer, f.gate.State(), f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Apps == nil || rep.Apps.Stale != 1 || len(rep.Nodes) != 1 || rep.Nodes[0].Apps == nil || *rep.Nodes[0].Apps != [4]int{1, 0, 1, 0} {
		t.Errorf("status report: apps %+v, nodes %+v", rep.Apps, rep.Nodes)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Lead returned %v", err)
	}
	if c.detector.Load() != nil {
		t.Error("the detector is still fed after leadership ended")
	}
	if v := f.counter("tokenroll_app_stale_pods", "namespace", "shop"); v > 0 {
		t.Errorf("tokenroll_app_stale_pods{namespace=shop} = %v after leadership ended; want none (the next leader reports)", v)
	}
}

// tokenroll status prints the APPS line, the per-node column and the list
// of app-stale and app-failing pods with their workload.
func TestStatusTableShowsApps(t *testing.T) {
	now := t0.Add(time.Hour)
	rep := &StatusReport{Now: now, Issuer: newIssuer, Gate: GateState{Provider: GateNone, Open: true},
		Apps: &apps.Status{UpdatedAt: now.Add(-8 * time.Second), Followed: 4, Healthy: 2, Stale: 1, Unobserved: 1, AuditEvents: 100,
			Nodes: map[string][4]int{"node-a": {2, 1, 1, 0}, "node-b": {2, 1, 0, 0}},
			Pods: []apps.PodStatus{{Namespace: "shop", Name: "cart-6d9f7c5b8-x2x9q", Node: "node-a", Workload: "Deployment/cart",
				Conditions: []string{"app-stale"}, Since: now.Add(-46 * time.Minute), ReplacedAt: now.Add(-48 * time.Minute)}}},
		Nodes: []NodeStatus{{Name: "node-a", Ready: true, Tokens: 3, Apps: &[4]int{2, 1, 1, 0}}, {Name: "node-b", Ready: true, Tokens: 3, Apps: &[4]int{2, 1, 0, 0}},
			{Name: "node-c", Ready: true, Tokens: 0}}}
	var b strings.Builder
	if err := WriteStatusTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"APPS      4 pods with a projected token: 2 healthy, 1 app-stale, 0 app-failing, 1 unobserved (as of 8s ago)\n",
		"1/2,1 stale", "node-c  yes    yes    0       0      0           0/0",
		"shop       cart-6d9f7c5b8-x2x9q  node-a  Deployment/cart  app-stale  46m0s  48m0s ago",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	rep.Apps = nil
	b.Reset()
	if err := WriteStatusTable(&b, rep); err != nil || !strings.Contains(b.String(), "APPS      not detected") {
		t.Errorf("without app detection the table says:\n%s", b.String())
	}
}
