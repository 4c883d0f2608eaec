package coordinator

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/protocol"
)

// Cluster objects and expected writes for the controller tests.

func ptr[T any](v T) *T { return &v }

// testNode is a Ready node, boot ID boot-1, whose agent reports three
// tokens, all from the current issuer.
func testNode(name string, opts ...func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"kubernetes.io/hostname": name}, Annotations: map[string]string{}},
		Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: "boot-1"},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
	}
	withReport(cleanReport())(n)
	for _, o := range opts {
		o(n)
	}
	return n
}

func cordoned(n *corev1.Node) { n.Spec.Unschedulable = true }

func notReady(n *corev1.Node) { setReady(n, false) }

func setReady(n *corev1.Node, ok bool) {
	st := corev1.ConditionFalse
	if ok {
		st = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}
}

func labeled(k, v string) func(*corev1.Node) {
	return func(n *corev1.Node) { n.Labels[k] = v }
}

func bootID(id string) func(*corev1.Node) {
	return func(n *corev1.Node) { n.Status.NodeInfo.BootID = id }
}

func withReport(r protocol.TokenReport) func(*corev1.Node) {
	return func(n *corev1.Node) { n.Annotations[protocol.AnnotationTokens] = mustJSON(r) }
}

// inStep records the coordinator's node state on the node, as a leader
// wrote it.
func inStep(s protocol.NodeState) func(*corev1.Node) {
	return func(n *corev1.Node) { n.Annotations[protocol.AnnotationNodeState] = mustJSON(s) }
}

// agentStatus is the agent's answer to a request.
func agentStatus(id string, phase protocol.RequestPhase, msg string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Annotations[protocol.AnnotationStatus] = mustJSON(protocol.Status{ID: id, Phase: phase, Message: msg, UpdatedAt: t0})
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func cleanReport() protocol.TokenReport {
	return protocol.TokenReport{Issuer: newIssuer, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 3}}}
}

// oldIssuerReport: two of three tokens from the previous issuer, held by
// the pods named.
func oldIssuerReport(stale ...protocol.PodRef) protocol.TokenReport {
	return protocol.TokenReport{Issuer: newIssuer, Tokens: 3, Stale: map[protocol.State]int{protocol.StateIssuerMismatch: 2},
		Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 1}, {Issuer: oldIssuer, Tokens: 2}}, StalePods: stale}
}

func expiredReport() protocol.TokenReport {
	return protocol.TokenReport{Issuer: newIssuer, Tokens: 3, Stale: map[protocol.State]int{protocol.StateExpired: 1},
		Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 3}}}
}

// rollout is a running rollout of rolloutID, as `tokenroll rollout start`
// by alice makes it.
func rollout(strategy protocol.Strategy, nodes ...string) *Rollout {
	r := &Rollout{ID: rolloutID, Trigger: TriggerManual + " (alice)", Strategy: strategy, Phase: RolloutRunning, Issuer: newIssuer,
		CreatedAt: t0.Add(-time.Minute), UpdatedAt: t0.Add(-time.Minute)}
	for _, n := range nodes {
		r.Nodes = append(r.Nodes, PlannedNode{Name: n, Strategy: strategy, Reason: "requested by alice"})
	}
	return r
}

// stateOf is the ConfigMap state with r current and the new issuer
// observed an hour ago.
func stateOf(r *Rollout) State {
	return State{Rollout: r}
}

func rolloutConfigMap(r *Rollout) runtime.Object { return stateConfigMap(stateOf(r)) }

// started is the node state of a node cordoned at at.
func started(action protocol.Strategy, byUs bool, at time.Time) protocol.NodeState {
	return protocol.NodeState{Rollout: rolloutID, Step: protocol.StepCordoned, Strategy: action, CordonedByUs: byUs, StepAt: at, StartedAt: at}
}

// acting is s after the action was asked for at at.
func acting(s protocol.NodeState, at time.Time, request string) protocol.NodeState {
	s.Step, s.StepAt, s.BootID, s.Request = protocol.StepActing, at, "boot-1", request
	return s
}

func done(s protocol.NodeState, at time.Time) protocol.NodeState {
	s.Step, s.StepAt, s.Message = protocol.StepDone, at, "verified"
	return s
}

func halted(s protocol.NodeState, at time.Time, reason, msg string) protocol.NodeState {
	s.Step, s.StepAt, s.Reason, s.Message = protocol.StepHalted, at, reason, msg
	return s
}

// unresolved is s given up on at at: its tokens still stale on n.
func unresolved(s protocol.NodeState, at time.Time, msg string, n *corev1.Node) protocol.NodeState {
	s.Step, s.StepAt, s.Reason, s.Message = protocol.StepUnresolved, at, HaltVerifyTimeout, msg
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		panic(err)
	}
	s.Evidence = rep.Evidence(newIssuer)
	return s
}

// waitingOn is the rollout state of r with the coordinator waiting for
// reason since at, saying msg.
func waitingOn(r *Rollout, reason, msg string, at time.Time) apiWrite {
	st := stateOf(r)
	st.Waiting = &Wait{Reason: reason, Message: msg, Since: at}
	return updateState(st)
}

// Expected writes.

func patchNode(name string, s *protocol.NodeState, unschedulable *bool) apiWrite {
	// A node verified done has its request removed in the same write.
	cleared := s != nil && s.Step == protocol.StepDone && s.Request != ""
	return apiWrite{Verb: "patch", Resource: "nodes", Name: name, NodeState: s, Unschedulable: unschedulable, RequestCleared: cleared}
}

func cordonNode(name string, s protocol.NodeState) apiWrite { return patchNode(name, &s, ptr(true)) }

// releaseNode: the node state removed, and uncordoned when uncordon.
func releaseNode(name string, uncordon bool) apiWrite {
	w := apiWrite{Verb: "patch", Resource: "nodes", Name: name, StateRemoved: true}
	if uncordon {
		w.Unschedulable = ptr(false)
	}
	return w
}

func updateState(st State) apiWrite {
	w := apiWrite{Verb: "update", Resource: "tokenrollouts", Subresource: "status", State: &st}
	switch {
	case st.Rollout != nil:
		w.Name = st.Rollout.ID
	case st.Start != nil:
		w.Name = cmp.Or(st.Start.Name, startName)
	}
	return w
}

// createState is the write of a rollout the coordinator planned by itself:
// its TokenRollout created, then its status written.
func createState(st State) apiWrite {
	w := updateState(st)
	w.Verb, w.Subresource = "create", ""
	return w
}

func evictPod(ns, name string) apiWrite {
	return apiWrite{Verb: "create", Resource: "pods", Subresource: "eviction", Namespace: ns, Name: name}
}

// finished is r finished at at.
func finished(r *Rollout, phase RolloutPhase, at time.Time) State {
	r.Phase, r.FinishedAt, r.UpdatedAt = phase, at, at
	return stateOf(r)
}

// haltedState is r halted at at on node.
func haltedState(r *Rollout, node, reason, msg string, at time.Time) State {
	r.Phase, r.HaltReason, r.HaltNode, r.Message, r.UpdatedAt = RolloutHalted, reason, node, msg, at
	return stateOf(r)
}

// expectWrites compares the writes since the last call with want.
func (f *fixture) expectWrites(want ...apiWrite) {
	f.t.Helper()
	f.compareWrites(f.writes(), want...)
}

func (f *fixture) compareWrites(got []apiWrite, want ...apiWrite) {
	f.t.Helper()
	if len(got) == len(want) {
		same := true
		for i := range got {
			if got[i].String() != want[i].String() {
				same = false
			}
		}
		if same {
			return
		}
	}
	var b strings.Builder
	b.WriteString("API writes differ\ngot:\n")
	for _, w := range got {
		b.WriteString("  " + w.String() + "\n")
	}
	b.WriteString("want:\n")
	for _, w := range want {
		b.WriteString("  " + w.String() + "\n")
	}
	f.t.Error(b.String())
}

// expectEvents compares the Events since the last call with want.
func (f *fixture) expectEvents(want ...string) {
	f.t.Helper()
	got := f.takeEvents()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		f.t.Errorf("Events differ\ngot:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// expectDrains compares the Drainer's calls since the last call with want.
func (f *fixture) expectDrains(want ...drainCall) {
	f.t.Helper()
	got := f.drainer.takeCalls()
	if mustJSON(got) != mustJSON(want) && (len(got) > 0 || len(want) > 0) {
		f.t.Errorf("Drainer calls differ\ngot:  %s\nwant: %s", mustJSON(got), mustJSON(want))
	}
}

// requestIn checks that w carries a request for action on node and
// returns its ID.
func requestIn(t *testing.T, w apiWrite, action protocol.Action, node string, at time.Time) string {
	t.Helper()
	r := w.Request
	if r == nil {
		t.Fatalf("no request written in %s", w)
	}
	want := protocol.Request{ID: r.ID, Action: action, Node: node, Rollout: rolloutID, CreatedAt: at}
	if mustJSON(*r) != mustJSON(want) || !strings.HasPrefix(r.ID, rolloutID+"-") || len(r.ID) != len(rolloutID)+9 {
		t.Errorf("request %s; want %s with an ID of %s- and 8 hex digits", mustJSON(*r), mustJSON(want), rolloutID)
	}
	return r.ID
}

// Workloads for pod restarts.

func replicaSet(ns, name string, want, ready int32) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-rs-" + name)},
		Spec: appsv1.ReplicaSetSpec{Replicas: &want}, Status: appsv1.ReplicaSetStatus{ReadyReplicas: ready}}
}

func statefulSet(ns, name string, want, ready int32) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-ss-" + name)},
		Spec: appsv1.StatefulSetSpec{Replicas: &want}, Status: appsv1.StatefulSetStatus{ReadyReplicas: ready}}
}

func daemonSet(ns, name string, want, ready int32) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-ds-" + name)},
		Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: want, NumberReady: ready}}
}

// pod is a pod on node, owned by the controller kind/name ("": none).
func pod(ns, name, node, kind, owner string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}}
	if kind != "" {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: owner, UID: types.UID("uid-owner-" + owner), Controller: ptr(true)}}
	}
	return p
}

func podRef(p *corev1.Pod) protocol.PodRef {
	return protocol.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

func metav1Time(t time.Time) metav1.Time { return metav1.NewTime(t) }

// gvrOf is the resource of a workload object.
func gvrOf(o runtime.Object) schema.GroupVersionResource {
	switch o.(type) {
	case *appsv1.ReplicaSet:
		return appsv1.SchemeGroupVersion.WithResource("replicasets")
	case *appsv1.StatefulSet:
		return appsv1.SchemeGroupVersion.WithResource("statefulsets")
	case *appsv1.DaemonSet:
		return appsv1.SchemeGroupVersion.WithResource("daemonsets")
	}
	panic(fmt.Sprintf("no resource for %T", o))
}

// counter reads one series of a counter or gauge from the leader's
// registry (label "": the metric has none; -1: not found).
func (f *fixture) counter(name, label, value string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}
