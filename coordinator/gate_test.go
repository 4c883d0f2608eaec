package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func kas(latest int64, nodes ...map[string]any) *unstructured.Unstructured {
	ns := make([]any, len(nodes))
	for i, n := range nodes {
		ns[i] = n
	}
	return &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{
		"latestAvailableRevision": latest, "nodeStatuses": ns,
		"conditions": []any{map[string]any{"type": "NodeInstallerProgressing", "status": "True", "reason": "NodeInstaller",
			"message": "3 nodes are at revision 11; 0 nodes have achieved new revision 12"}},
		"serviceAccountIssuers": []any{map[string]any{"name": "https://new"}, map[string]any{"name": "https://old", "expirationTime": "2026-11-28T12:00:00Z"}},
	}}}
}

func TestOpenShiftGate(t *testing.T) {
	node := func(name string, cur, target int64) map[string]any {
		m := map[string]any{"nodeName": name, "currentRevision": cur}
		if target != 0 {
			m["targetRevision"] = target
		}
		return m
	}
	rolling := openshiftState(kas(12, node("m0", 12, 0), node("m1", 11, 12), node("m2", 11, 0)), GateState{})
	if rolling.Open || rolling.LatestRevision != 12 || rolling.CurrentMinRevision != 11 || rolling.CurrentMaxRevision != 12 {
		t.Errorf("rolling: %+v", rolling)
	}
	if !strings.Contains(rolling.Message, "m1 at 11") || !strings.Contains(rolling.Message, "m1 to 12") || !strings.Contains(rolling.Progressing, "0 nodes have achieved new revision 12") {
		t.Errorf("rolling message %q / %q", rolling.Message, rolling.Progressing)
	}
	// Every node current but one still has a target: still closed.
	if st := openshiftState(kas(12, node("m0", 12, 0), node("m1", 12, 12)), GateState{}); st.Open {
		t.Errorf("a node with a target revision must keep the gate closed: %+v", st)
	}
	settled := openshiftState(kas(12, node("m0", 12, 0), node("m1", 12, 0), node("m2", 12, 0)), GateState{TrustKnown: true})
	if !settled.Open || settled.Message != "3 nodes at revision 12" {
		t.Errorf("settled: %+v", settled)
	}
	if len(settled.Trusted) != 2 || settled.Trusted[1].Name != "https://old" || settled.Trusted[1].Expires.IsZero() || !settled.Trusted[0].Expires.IsZero() {
		t.Errorf("trusted issuers: %+v", settled.Trusted)
	}
	if st := openshiftState(kas(12), GateState{}); st.Open {
		t.Errorf("no nodes yet must be closed: %+v", st)
	}
}

// apiserverPod is node's kube-apiserver mirror pod, as its kubelet makes
// it: annotated, owned by the Node, its host address in its status.
func apiserverPod(node string, ready bool, args ...string) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	ip := nodeIP(node)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-apiserver-" + node, Namespace: "kube-system", Labels: map[string]string{"component": "kube-apiserver"},
			Annotations:     map[string]string{"kubernetes.io/config.mirror": "0123abcd"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID("uid-" + node), Controller: ptr(true)}}},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: true, Containers: []corev1.Container{{Name: "kube-apiserver", Command: append([]string{"kube-apiserver"}, args...)}}},
		Status: corev1.PodStatus{HostIP: ip, HostIPs: []corev1.HostIP{{IP: ip}}, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

// nodeIP is the address of a test control-plane node: a, b, c, d.
func nodeIP(node string) string {
	if node == "" {
		return ""
	}
	return fmt.Sprintf("10.0.0.%d", 10+strings.IndexByte("abcd", node[len(node)-1]))
}

// kubernetesEndpoints is the kubernetes Service's EndpointSlice as the API
// servers on nodes write it.
func kubernetesEndpoints(nodes ...string) *discoveryv1.EndpointSlice {
	e := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default",
		Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}}, AddressType: discoveryv1.AddressTypeIPv4}
	for _, n := range nodes {
		e.Endpoints = append(e.Endpoints, discoveryv1.Endpoint{Addresses: []string{nodeIP(n)}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return e
}

var (
	newFirst = []string{"--service-account-issuer=https://new", "--service-account-issuer", "https://old", "--secure-port=6443"}
	oldFirst = []string{"--service-account-issuer=https://old"}
)

func TestStaticPodsGate(t *testing.T) {
	ab := []*discoveryv1.EndpointSlice{kubernetesEndpoints("a", "b")}
	cases := []struct {
		name string
		pods []*corev1.Pod
		eps  []*discoveryv1.EndpointSlice
		open bool
		msg  string
	}{
		{"none", nil, ab, false, "no kube-apiserver mirror pods"},
		{"no endpoints", []*corev1.Pod{apiserverPod("a", true, newFirst...)}, nil, false, "has no ready endpoints"},
		{"settled", []*corev1.Pod{apiserverPod("a", true, newFirst...), apiserverPod("b", true, newFirst...)}, ab, true, "2 kube-apiserver pods Ready, all signing with https://new"},
		{"one not ready", []*corev1.Pod{apiserverPod("a", true, newFirst...), apiserverPod("b", false, newFirst...)}, ab, false, "kube-apiserver-b not Ready"},
		{"issuers differ", []*corev1.Pod{apiserverPod("a", true, newFirst...), apiserverPod("b", true, oldFirst...)}, ab, false, "issuer rolling out"},
		{"no issuer flag", []*corev1.Pod{apiserverPod("a", true, "--secure-port=6443"), apiserverPod("b", true, newFirst...)}, ab, false, "has no --service-account-issuer"},
		{"an endpoint without its pod", []*corev1.Pod{apiserverPod("a", true, newFirst...)}, ab, false, "no kube-apiserver mirror pod on the node of the kubernetes Service's endpoint 10.0.0.11"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := staticPodsState(c.pods, c.eps)
			if st.Open != c.open || !strings.Contains(st.Message, c.msg) {
				t.Errorf("open=%v %q; want open=%v containing %q", st.Open, st.Message, c.open, c.msg)
			}
		})
	}
	st := staticPodsState([]*corev1.Pod{apiserverPod("a", true, newFirst...)}, []*discoveryv1.EndpointSlice{kubernetesEndpoints("a")})
	if st.SigningIssuer != "https://new" || len(st.Trusted) != 1 || st.Trusted[0].Name != "https://old" {
		t.Errorf("issuers from the command line: %+v", st)
	}
}

// forged returns a copy of node's mirror pod as someone who may only
// create pods in kube-system can make it: any metadata and spec, but a
// status the API server resets on create (no host address, not Ready).
func forged(name, node string, args ...string) *corev1.Pod {
	p := apiserverPod(node, true, args...)
	p.Name = name
	p.Status = corev1.PodStatus{Phase: corev1.PodPending}
	return p
}

// Only the mirror pods of the API servers behind the kubernetes Service
// count: a pod that anyone allowed to create pods in kube-system can make,
// or a mirror pod on a node that serves no API, neither opens nor closes
// the gate.
func TestStaticPodsGateTrustsOnlyMirrorPodsOnEndpointNodes(t *testing.T) {
	ab := kubernetesEndpoints("a", "b")
	settled := []*corev1.Pod{apiserverPod("a", true, newFirst...), apiserverPod("b", true, newFirst...)}
	rolling := []*corev1.Pod{apiserverPod("a", true, newFirst...), apiserverPod("b", true, oldFirst...)}
	noMirror := forged("kube-apiserver-x", "a", oldFirst...)
	delete(noMirror.Annotations, "kubernetes.io/config.mirror")
	noMirror.Status = apiserverPod("a", true).Status
	notOwned := apiserverPod("c", true, oldFirst...)
	notOwned.OwnerReferences = nil
	notOwned.Status.HostIP, notOwned.Status.HostIPs = nodeIP("a"), []corev1.HostIP{{IP: nodeIP("a")}}
	elsewhere := apiserverPod("c", false, oldFirst...) // a mirror pod on a node that serves no API
	cases := []struct {
		name   string
		base   []*corev1.Pod
		extra  []*corev1.Pod
		open   bool
		issuer string
	}{
		{"forged, not Ready, old issuer, on an endpoint node: stays open", settled, []*corev1.Pod{forged("kube-apiserver-evil-a", "a", oldFirst...)}, true, "https://new"},
		{"forged with no node: stays open", settled, []*corev1.Pod{forged("kube-apiserver-z", "", oldFirst...)}, true, "https://new"},
		{"forged without the mirror annotation, Ready on an endpoint's address: stays open", settled, []*corev1.Pod{noMirror}, true, "https://new"},
		{"not owned by its Node: stays open", settled, []*corev1.Pod{notOwned}, true, "https://new"},
		{"mirror pod on a node serving no API: stays open", settled, []*corev1.Pod{elsewhere}, true, "https://new"},
		{"forged Ready, new issuer, while rolling: stays closed", rolling, []*corev1.Pod{forged("kube-apiserver-evil-b", "b", newFirst...)}, false, ""},
		{"mirror pod on a node serving no API while rolling: stays closed", rolling, []*corev1.Pod{apiserverPod("c", true, newFirst...)}, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := staticPodsState(c.base, []*discoveryv1.EndpointSlice{ab})
			st := staticPodsState(append(slices.Clone(c.base), c.extra...), []*discoveryv1.EndpointSlice{ab})
			if st.Open != c.open || st.SigningIssuer != c.issuer || st.Open != before.Open {
				t.Errorf("open=%v signing %q (%s); want open=%v signing %q, as without the pod", st.Open, st.SigningIssuer, st.Message, c.open, c.issuer)
			}
			if !strings.Contains(st.Message, "1 other pod labelled component=kube-apiserver ignored") {
				t.Errorf("message %q does not say a pod was ignored", st.Message)
			}
		})
	}
}

// The same through the gate's informers, on a fake clientset: a forged pod
// created in kube-system, and the auto detection.
func TestStaticPodsGateWatches(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(kubernetesEndpoints("a"), apiserverPod("a", true, newFirst...))
	g, err := NewGate(ctx, GateAuto, client, nil)
	if err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{}, 10)
	if err := g.Start(ctx, func() { changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if st := g.State(); !st.Open || st.Provider != GateStaticPods || st.SigningIssuer != "https://new" {
		t.Fatalf("before: %+v", st)
	}
	if _, err := client.CoreV1().Pods("kube-system").Create(ctx, forged("kube-apiserver-evil-a", "a", oldFirst...), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		<-changed
		if st := g.State(); strings.Contains(st.Message, "ignored") {
			if !st.Open || st.SigningIssuer != "https://new" {
				t.Errorf("after a forged pod: %+v", st)
			}
			break
		}
	}

	// auto: forged pods alone do not make a cluster static-pods.
	only := fake.NewClientset(kubernetesEndpoints("a"), forged("kube-apiserver-a", "a", newFirst...))
	if g, err := NewGate(ctx, GateAuto, only, nil); err != nil || g.State().Provider != GateNone {
		t.Errorf("auto with only a forged pod: %T %v, want none", g, err)
	}
}

// When the gate's source and OIDC discovery disagree on the signing issuer,
// the gate is closed, with the reason.
func TestGateWithDiscovery(t *testing.T) {
	open := GateState{Provider: GateStaticPods, Open: true, SigningIssuer: "https://new", Message: "1 kube-apiserver pods Ready"}
	if st := open.WithDiscovery("https://new"); !st.Open || st.Message != open.Message {
		t.Errorf("agreeing: %+v", st)
	}
	st := open.WithDiscovery("https://old")
	if st.Open || !strings.Contains(st.Message, "https://old") || !strings.Contains(st.Message, "https://new") || !strings.Contains(st.Message, "disagree") {
		t.Errorf("disagreeing: %+v", st)
	}
	if st := (GateState{Provider: GateOpenShift, Open: true}).WithDiscovery("https://old"); !st.Open {
		t.Errorf("a source that names no signing issuer: %+v", st)
	}
}

// The coordinator logs the gate before starting it: a gate not started
// must answer closed, not panic.
func TestGateStateBeforeStart(t *testing.T) {
	for _, g := range []Gate{&openshiftGate{}, &staticPodsGate{}} {
		if st := g.State(); st.Open || st.Message != "not started" {
			t.Errorf("%T before Start: %+v", g, st)
		}
	}
}

// OIDC discovery and the gate's source disagreeing on the signing issuer is
// a closed gate, in the metric and the log as any closed gate: nothing is
// planned, and the issuer recorded stays. When they agree, work starts.
func TestDiscoveryDisagreeingWithTheGateClosesIt(t *testing.T) {
	f := newFixture(t, testNode("n1", withReport(oldIssuerReport())), stateConfigMap(State{}))
	core, logs := observer.New(zap.InfoLevel)
	f.cfg.Auto, f.cfg.Strategy, f.cfg.Log = true, KubeletRestart, zap.New(core)
	const other = "https://other.tokenroll.test"
	f.gate.Set(GateState{Provider: GateStaticPods, Open: true, SigningIssuer: other, Message: "1 kube-apiserver pods Ready, all signing with " + other})
	f.sync()
	f.expectWrites()
	if v := f.counter("tokenroll_gate_open", "provider", GateStaticPods); v != 0 {
		t.Errorf("tokenroll_gate_open %v while discovery and the gate disagree; want 0", v)
	}
	found := false
	for _, e := range logs.FilterMessage("revision gate").All() {
		ctx := e.ContextMap()
		msg, _ := ctx["message"].(string)
		if ctx["open"] == false && strings.Contains(msg, "disagree") && strings.Contains(msg, newIssuer) && strings.Contains(msg, other) {
			found = true
		}
	}
	if !found {
		t.Errorf("no closed-gate log naming both issuers: %v", logs.All())
	}

	f.gate.Set(GateState{Provider: GateStaticPods, Open: true, SigningIssuer: newIssuer, Message: "1 kube-apiserver pods Ready, all signing with " + newIssuer})
	f.sync()
	got := f.writes()
	if len(got) != 1 || got[0].State == nil || got[0].State.Rollout == nil || got[0].State.Rollout.Issuer != newIssuer {
		t.Fatalf("writes %v; want a rollout for %s once they agree", got, newIssuer)
	}
	if v := f.counter("tokenroll_gate_open", "provider", GateStaticPods); v != 1 {
		t.Errorf("tokenroll_gate_open %v once they agree; want 1", v)
	}
}
