// Package openshiftsim simulates, on a real local control plane, the part of
// OpenShift's kube-apiserver operator that tokenroll depends on: an issuer
// change in Authentication/cluster becomes a revision rollout across the API
// servers, reported in KubeAPIServer/cluster exactly as OpenShift reports it.
package openshiftsim

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// The resources the simulator owns, and the one object of each it uses.
var (
	KubeAPIServerResource  = schema.GroupVersionResource{Group: "operator.openshift.io", Version: "v1", Resource: "kubeapiservers"}
	AuthenticationResource = schema.GroupVersionResource{Group: "config.openshift.io", Version: "v1", Resource: "authentications"}
)

// ClusterName is the name of the one KubeAPIServer and the one
// Authentication object, as on OpenShift.
const ClusterName = "cluster"

// Condition types and reasons the simulator writes on KubeAPIServer/cluster.
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

// DefaultStartRevision is the revision a new KubeAPIServer/cluster starts at.
const DefaultStartRevision int32 = 11

// KubeAPIServerStatus is the part of KubeAPIServer .status the simulator
// writes, with OpenShift's field names (operator/v1 StaticPodOperatorStatus).
type KubeAPIServerStatus struct {
	LatestAvailableRevision int32                        `json:"latestAvailableRevision,omitempty"`
	NodeStatuses            []NodeStatus                 `json:"nodeStatuses,omitempty"`
	Conditions              []OperatorCondition          `json:"conditions,omitempty"`
	ServiceAccountIssuers   []ServiceAccountIssuerStatus `json:"serviceAccountIssuers,omitempty"`
}

// NodeStatus is one control-plane node's revision. TargetRevision is set only
// on the node being installed, and on at most one node at a time.
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

// GetKubeAPIServerStatus reads KubeAPIServer/cluster's status.
func GetKubeAPIServerStatus(ctx context.Context, dyn dynamic.Interface) (KubeAPIServerStatus, error) {
	obj, err := dyn.Resource(KubeAPIServerResource).Get(ctx, ClusterName, metav1.GetOptions{})
	if err != nil {
		return KubeAPIServerStatus{}, fmt.Errorf("getting KubeAPIServer/%s: %w", ClusterName, err)
	}
	return ParseKubeAPIServerStatus(obj)
}

// SetIssuer does what an administrator does to change the service-account
// issuer:
//
//	oc patch authentication cluster --type merge -p '{"spec":{"serviceAccountIssuer":"..."}}'
//
// An empty issuer asks for the default one.
func SetIssuer(ctx context.Context, dyn dynamic.Interface, issuer string) error {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"serviceAccountIssuer": issuer}})
	if err != nil {
		return err
	}
	_, err = dyn.Resource(AuthenticationResource).Patch(ctx, ClusterName, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("setting the service-account issuer to %q: Authentication/%s does not exist; start the Operator first, it creates it", issuer, ClusterName)
	}
	if err != nil {
		return fmt.Errorf("setting the service-account issuer to %q on Authentication/%s: %w", issuer, ClusterName, err)
	}
	return nil
}
