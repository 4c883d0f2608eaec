// Package openshift reads the OpenShift resources tokenroll depends on:
// KubeAPIServer/cluster's revisions and trusted issuers, with OpenShift's
// field names. The coordinator's gate and the sandbox's simulated operator
// share this one reader.
package openshift

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The resources, and the one object of each that matters.
var (
	KubeAPIServerResource  = schema.GroupVersionResource{Group: "operator.openshift.io", Version: "v1", Resource: "kubeapiservers"}
	AuthenticationResource = schema.GroupVersionResource{Group: "config.openshift.io", Version: "v1", Resource: "authentications"}
)

// ClusterName is the name of the one KubeAPIServer and the one
// Authentication object.
const ClusterName = "cluster"

// Condition types and reasons on KubeAPIServer/cluster.
const (
	ConditionNodeInstallerProgressing = "NodeInstallerProgressing"
	ConditionNodeInstallerDegraded    = "NodeInstallerDegraded"
	// ReasonAllNodesAtLatestRevision goes with NodeInstallerProgressing=False.
	ReasonAllNodesAtLatestRevision = "AllNodesAtLatestRevision"
	// ReasonNodeInstaller goes with NodeInstallerProgressing=True. (library-go
	// leaves this reason empty on the operator resource; "NodeInstaller" is
	// what the kube-apiserver ClusterOperator shows for it.)
	ReasonNodeInstaller = "NodeInstaller"
)

// KubeAPIServerStatus is the part of KubeAPIServer .status tokenroll reads
// (operator/v1 StaticPodOperatorStatus, and serviceAccountIssuers).
type KubeAPIServerStatus struct {
	LatestAvailableRevision int32                        `json:"latestAvailableRevision,omitempty"`
	NodeStatuses            []NodeStatus                 `json:"nodeStatuses,omitempty"`
	Conditions              []OperatorCondition          `json:"conditions,omitempty"`
	ServiceAccountIssuers   []ServiceAccountIssuerStatus `json:"serviceAccountIssuers,omitempty"`
}

// NodeStatus is one control-plane node's revision. TargetRevision is set only
// on the node being installed.
type NodeStatus struct {
	NodeName        string `json:"nodeName"`
	CurrentRevision int32  `json:"currentRevision,omitempty"`
	TargetRevision  int32  `json:"targetRevision,omitempty"`
}

// OperatorCondition is operator/v1's condition: no observedGeneration, and
// reason may be empty.
type OperatorCondition struct {
	Type               string      `json:"type"`
	Status             string      `json:"status"`
	LastTransitionTime metav1.Time `json:"lastTransitionTime"`
	Reason             string      `json:"reason,omitempty"`
	Message            string      `json:"message,omitempty"`
}

// ServiceAccountIssuerStatus is one trusted issuer. The one without an
// ExpirationTime signs; the others were used before and stay trusted until
// their ExpirationTime.
type ServiceAccountIssuerStatus struct {
	Name           string       `json:"name"`
	ExpirationTime *metav1.Time `json:"expirationTime,omitempty"`
}

// Condition returns the condition of type t.
func (s KubeAPIServerStatus) Condition(t string) (OperatorCondition, bool) {
	for _, c := range s.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return OperatorCondition{}, false
}

// AtLatestRevision reports whether every control-plane node runs the latest
// available revision and none is installing one: the API servers then all
// run the same configuration. No node reported yet is not settled.
func (s KubeAPIServerStatus) AtLatestRevision() bool {
	if len(s.NodeStatuses) == 0 {
		return false
	}
	for _, n := range s.NodeStatuses {
		if n.CurrentRevision != s.LatestAvailableRevision || n.TargetRevision != 0 {
			return false
		}
	}
	return true
}

// ParseKubeAPIServerStatus reads the status of a KubeAPIServer object.
func ParseKubeAPIServerStatus(obj *unstructured.Unstructured) (KubeAPIServerStatus, error) {
	var s KubeAPIServerStatus
	raw, found, err := unstructured.NestedMap(obj.Object, "status")
	if err != nil || !found {
		return s, err
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &s); err != nil {
		return s, fmt.Errorf("reading the status of KubeAPIServer/%s: %w", obj.GetName(), err)
	}
	return s, nil
}

// RequestedIssuer is Authentication .spec.serviceAccountIssuer: the issuer
// an administrator asked for ("" for the default).
func RequestedIssuer(obj *unstructured.Unstructured) string {
	s, _, _ := unstructured.NestedString(obj.Object, "spec", "serviceAccountIssuer")
	return s
}
