package apps

import (
	"net/netip"
	"slices"
	"strings"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
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

// trimmedPod is a pod as TrimPod leaves it: what the detector reads
// (PodFrom), in place of the whole Pod. Only the pod reflector's
// temporary store holds them, while a watch-list streams every pod, before
// it hands them to the detector (podStore.Replace).
type trimmedPod struct {
	pod   *Pod
	ended bool
}

// GetObjectMeta serves the reflector's data consistency check
// (KUBE_WATCHLIST_INCONSISTENCY_DETECTOR), which reads a trimmed pod's
// namespace, name and UID; the temporary store keys a pod before it is
// trimmed.
func (c *trimmedPod) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: c.pod.Namespace, Name: c.pod.Name, UID: c.pod.UID}
}

// GetObjectKind and DeepCopyObject make it a runtime.Object, as the data
// consistency check wants what a transform returns.
func (c *trimmedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (c *trimmedPod) DeepCopyObject() runtime.Object {
	out, pod := *c, *c.pod
	pod.IPs = slices.Clone(c.pod.IPs)
	pod.TokenAudiences = slices.Clone(c.pod.TokenAudiences)
	out.pod = &pod
	return &out
}

// TrimPod is the pod reflector's transform: it keeps of a pod only what
// PodFrom takes, as a *trimmedPod.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod, ended := trim(p)
	return &trimmedPod{pod: pod, ended: ended}, nil
}

// trim is PodFrom, with the names and the audience list that many pods
// hold alike shared among them.
func trim(p *corev1.Pod) (*Pod, bool) {
	pod, ended := PodFrom(p)
	if len(pod.TokenAudiences) == 1 && pod.TokenAudiences[0] == "" {
		// Nearly every pod's: one source, the API server's audience.
		pod.TokenAudiences = apiServerAudience
	}
	// Thousands of pods share each node, namespace and workload name;
	// decoded, each pod has its own copy.
	pod.Namespace, pod.Node, pod.Workload = intern(pod.Namespace), intern(pod.Node), intern(pod.Workload)
	return &pod, ended
}

// intern gives the one copy of s that the pods holding it share, for as
// long as one does.
func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// apiServerAudience is shared, read only.
var apiServerAudience = []string{""}
