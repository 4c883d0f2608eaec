package apps

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodFrom takes what the detector needs from a pod; ended says the pod
// will never run again (Succeeded, Failed), so its state goes.
func PodFrom(p *corev1.Pod) (Pod, bool) {
	out := Pod{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
		Running: p.Status.Phase == corev1.PodRunning, Workload: workload(p)}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		// Only serviceAccountToken sources hold service-account tokens;
		// ConfigMap, Secret and downwardAPI items beside them are the
		// tenant's.
		for _, s := range v.Projected.Sources {
			if t := s.ServiceAccountToken; t != nil {
				out.TokenAudiences = append(out.TokenAudiences, t.Audience)
				out.ShortLivedTokens = out.ShortLivedTokens || t.Audience != "" || t.ExpirationSeconds == nil || *t.ExpirationSeconds != ExtendedSeconds
			}
		}
	}
	ended := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	return out, ended
}

// workload names the controller that owns a pod. A ReplicaSet a Deployment
// made is named <deployment>-<pod-template-hash> and its pods carry that
// hash as a label: the Deployment is read from the name, without watching
// ReplicaSets. The owner a pod names is its own claim, so this names what
// the pod says, for people, and decides nothing.
func workload(p *corev1.Pod) string {
	ref := metav1.GetControllerOfNoCopy(p)
	if ref == nil {
		return ""
	}
	if ref.Kind == "ReplicaSet" {
		if h := p.Labels["pod-template-hash"]; h != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok && d != "" {
				return "Deployment/" + d
			}
		}
	}
	return ref.Kind + "/" + ref.Name
}

// TrimPod keeps, of a cached pod, only what PodFrom reads: the informer
// holds every pod of the cluster.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			OwnerReferences: p.OwnerReferences},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	if h, ok := p.Labels["pod-template-hash"]; ok {
		t.Labels = map[string]string{"pod-template-hash": h}
	}
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		var srcs []corev1.VolumeProjection
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil {
				srcs = append(srcs, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: s.ServiceAccountToken.Audience}})
			}
		}
		if len(srcs) > 0 {
			t.Spec.Volumes = append(t.Spec.Volumes, corev1.Volume{Name: v.Name,
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: srcs}}})
		}
	}
	return t, nil
}
