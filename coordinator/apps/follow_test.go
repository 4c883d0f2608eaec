package apps

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
)

// fullPod is a pod with everything the API server returns, the fields
// the detector reads among many it does not.
func fullPod(name, node, ip string, phase corev1.PodPhase, exp int64, aud string) *corev1.Pod {
	ctrl := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), ResourceVersion: "7",
			Labels: map[string]string{"pod-template-hash": "5d8f", "app": "web"}, Annotations: map[string]string{"a": "b"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", UID: "rs", Controller: &ctrl}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet", FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:status":{}}`)}}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "web:1"}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &exp, Audience: aud, Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}}}}}}}}},
		Status: corev1.PodStatus{Phase: phase, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "10.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

// What the pod informer keeps of a pod (its transform) is what the
// detector reads of the whole pod: the detector following pods through
// the informer holds exactly what PodFrom takes from the full objects,
// through pods added, updated and deleted, and ended.
func TestFollowPodsKeepsWhatTheDetectorReads(t *testing.T) {
	full := map[string]*corev1.Pod{
		"a": fullPod("a", "n1", "10.1.0.1", corev1.PodRunning, ExtendedSeconds, ""),
		"b": fullPod("b", "n2", "10.1.0.2", corev1.PodPending, 600, "vault"),
		"c": fullPod("c", "n1", "10.1.0.3", corev1.PodRunning, ExtendedSeconds, ""),
	}
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range full {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d := NewDetector(Config{Grace: grace, Window: window, Clock: clocktesting.NewFakeClock(t0)})
	synced, stop, err := FollowPods(ctx, client, d)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); stop() }()
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		t.Fatal("not synced")
	}
	check := func(when string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			want := map[string]Pod{}
			for _, p := range full {
				if pod, ended := PodFrom(p); !ended {
					want[pod.Name] = pod
				}
			}
			got := map[string]Pod{}
			d.mu.Lock()
			for _, ps := range d.pods {
				got[ps.pod.Name] = *ps.pod
			}
			d.mu.Unlock()
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the detector holds\n%+v\nwant what PodFrom takes from the full pods\n%+v", when, got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check("listed")
	if p := full["a"]; p != nil {
		if pod, _ := PodFrom(p); pod.Workload != "Deployment/web" || !pod.Running || pod.ShortLivedTokens || len(pod.IPs) != 1 || pod.IPs[0] != netip.MustParseAddr("10.1.0.1") {
			t.Fatalf("PodFrom(a) = %+v", pod)
		}
	}
	b := full["b"].DeepCopy()
	b.Status.Phase, b.Status.PodIP, b.Status.PodIPs, b.ResourceVersion = corev1.PodRunning, "10.1.0.9", []corev1.PodIP{{IP: "10.1.0.9"}}, "8"
	full["b"] = b
	if _, err := client.CoreV1().Pods("shop").Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("b running with a new IP")
	c := full["c"].DeepCopy()
	c.Status.Phase, c.ResourceVersion = corev1.PodSucceeded, "9"
	full["c"] = c
	if _, err := client.CoreV1().Pods("shop").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("c ended")
	delete(full, "a")
	if err := client.CoreV1().Pods("shop").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("a deleted")
}
