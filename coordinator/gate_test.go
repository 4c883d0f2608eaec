package coordinator

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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

func apiserverPod(name string, ready bool, args ...string) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{"component": "kube-apiserver"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "kube-apiserver", Command: append([]string{"kube-apiserver"}, args...)}}},
		Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

func TestStaticPodsGate(t *testing.T) {
	newFirst := []string{"--service-account-issuer=https://new", "--service-account-issuer", "https://old", "--secure-port=6443"}
	oldFirst := []string{"--service-account-issuer=https://old"}
	cases := []struct {
		name string
		pods []*corev1.Pod
		open bool
		msg  string
	}{
		{"none", nil, false, "no kube-apiserver mirror pods"},
		{"settled", []*corev1.Pod{apiserverPod("kube-apiserver-a", true, newFirst...), apiserverPod("kube-apiserver-b", true, newFirst...)}, true, "2 kube-apiserver pods Ready, all signing with https://new"},
		{"one not ready", []*corev1.Pod{apiserverPod("kube-apiserver-a", true, newFirst...), apiserverPod("kube-apiserver-b", false, newFirst...)}, false, "kube-apiserver-b not Ready"},
		{"issuers differ", []*corev1.Pod{apiserverPod("kube-apiserver-a", true, newFirst...), apiserverPod("kube-apiserver-b", true, oldFirst...)}, false, "issuer rolling out"},
		{"no issuer flag", []*corev1.Pod{apiserverPod("kube-apiserver-a", true, "--secure-port=6443")}, false, "has no --service-account-issuer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := staticPodsState(c.pods)
			if st.Open != c.open || !strings.Contains(st.Message, c.msg) {
				t.Errorf("open=%v %q; want open=%v containing %q", st.Open, st.Message, c.open, c.msg)
			}
		})
	}
	st := staticPodsState([]*corev1.Pod{apiserverPod("kube-apiserver-a", true, newFirst...)})
	if st.SigningIssuer != "https://new" || len(st.Trusted) != 1 || st.Trusted[0].Name != "https://old" {
		t.Errorf("issuers from the command line: %+v", st)
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
