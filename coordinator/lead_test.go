package coordinator

import (
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/tokenroll/tokenroll/protocol"
)

// waitUntil waits for cond, looking again on every change of a Node, a
// TokenRollout or an Event.
func (f *fixture) waitUntil(what string, cond func() bool) {
	f.t.Helper()
	var ws []watch.Interface
	for _, open := range []func() (watch.Interface, error){
		func() (watch.Interface, error) { return f.client.CoreV1().Nodes().Watch(f.ctx, metav1.ListOptions{}) },
		func() (watch.Interface, error) {
			return f.api.TokenrollV1alpha1().TokenRollouts().Watch(f.ctx, metav1.ListOptions{})
		},
		func() (watch.Interface, error) {
			return f.client.EventsV1().Events("").Watch(f.ctx, metav1.ListOptions{})
		},
	} {
		w, err := open()
		if err != nil {
			f.t.Fatal(err)
		}
		defer w.Stop()
		ws = append(ws, w)
	}
	timeout := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-ws[0].ResultChan():
		case <-ws[1].ResultChan():
		case <-ws[2].ResultChan():
		case <-timeout:
			f.t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// Lead runs the same steps on its own informers and work queue: a kubelet
// restart from cordon to the rollout's end, with Events recorded in the
// cluster, and it stops when leadership ends.
func TestLeadRunsARollout(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), rolloutConfigMap(rollout(KubeletRestart, "n1")))
	stop := f.runLead()
	var id string
	f.waitUntil("n1 has a request", func() bool {
		r, err := protocol.ParseRequest(f.node("n1").Annotations[protocol.AnnotationRequest])
		id = r.ID
		return err == nil
	})
	if v := f.counter("tokenroll_coordinator_leader", "", ""); v != 1 {
		t.Errorf("leader gauge %v while leading; want 1", v)
	}
	f.updateNode("n1", agentStatus(id, protocol.PhaseDone, ""))
	f.waitUntil("the rollout is done", func() bool { r := f.state().Rollout; return r.Phase == RolloutDone && !r.FinishedAt.IsZero() })
	reasons := func() map[string]bool {
		m := map[string]bool{}
		for _, o := range f.list(eventsv1.SchemeGroupVersion.WithResource("events"), "") {
			if e, ok := o.(*eventsv1.Event); ok && e.Regarding.Name == "n1" {
				m[e.Reason] = true
			}
		}
		return m
	}
	f.waitUntil("Events for n1 are recorded", func() bool {
		m := reasons()
		return m["Cordoned"] && m["Verified"]
	})
	if err := stop(); err != nil {
		t.Errorf("Lead returned %v when leadership ended", err)
	}
	if v := f.counter("tokenroll_coordinator_leader", "", ""); v != 0 {
		t.Errorf("leader gauge %v after leading; want 0", v)
	}
	n1 := f.node("n1")
	if s, _ := protocol.ParseNodeState(n1.Annotations[protocol.AnnotationNodeState]); s.Step != protocol.StepDone || n1.Spec.Unschedulable {
		t.Errorf("n1 at the end: %+v unschedulable=%v", s, n1.Spec.Unschedulable)
	}
	if _, ok := f.node("n2").Annotations[protocol.AnnotationNodeState]; ok {
		t.Error("n2, not in the rollout, was written")
	}
}
