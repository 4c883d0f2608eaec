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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/tokenroll/tokenroll/internal/openshift"
)

// DefaultStartRevision is the revision a new KubeAPIServer/cluster starts at.
const DefaultStartRevision int32 = 11

// GetKubeAPIServerStatus reads KubeAPIServer/cluster's status.
func GetKubeAPIServerStatus(ctx context.Context, dyn dynamic.Interface) (openshift.KubeAPIServerStatus, error) {
	obj, err := dyn.Resource(openshift.KubeAPIServerResource).Get(ctx, openshift.ClusterName, metav1.GetOptions{})
	if err != nil {
		return openshift.KubeAPIServerStatus{}, fmt.Errorf("getting KubeAPIServer/%s: %w", openshift.ClusterName, err)
	}
	return openshift.ParseKubeAPIServerStatus(obj)
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
	_, err = dyn.Resource(openshift.AuthenticationResource).Patch(ctx, openshift.ClusterName, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("setting the service-account issuer to %q: Authentication/%s does not exist; start the Operator first, it creates it", issuer, openshift.ClusterName)
	}
	if err != nil {
		return fmt.Errorf("setting the service-account issuer to %q on Authentication/%s: %w", issuer, openshift.ClusterName, err)
	}
	return nil
}
