// Package workload holds the example pod of the OpenShift documentation's procedure, shared by the
// sandbox, its test helpers and benchmarks. It imports nothing of
// tokenroll's, so any of them may use it without an import cycle.
package workload

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// BuildRobotPod is the example pod of the OpenShift documentation's procedure: nginx as the
// build-robot service account, with a two-hour token for the audience
// "vault" at vault-token.
func BuildRobotPod(name, namespace, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       BuildRobotSpec(node),
	}
}

// BuildRobotSpec is BuildRobotPod's spec, on node (empty: unscheduled).
func BuildRobotSpec(node string) corev1.PodSpec {
	return corev1.PodSpec{
		NodeName:           node,
		ServiceAccountName: "build-robot",
		Containers: []corev1.Container{{
			Name: "nginx", Image: "nginx",
			VolumeMounts: []corev1.VolumeMount{{Name: "vault-token", MountPath: "/var/run/secrets/tokens"}},
		}},
		Volumes: []corev1.Volume{{
			Name: "vault-token",
			VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
				ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", ExpirationSeconds: ptr.To[int64](7200), Audience: "vault"},
			}}}},
		}},
	}
}
