// Package issuer reads the API server's signing service-account issuer from
// its OIDC discovery document.
package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
)

// DiscoveryPath is the OIDC discovery document every service account may read.
const DiscoveryPath = "/.well-known/openid-configuration"

// Discover returns the issuer the API server signs new tokens with (the
// first --service-account-issuer).
func Discover(ctx context.Context, client rest.Interface) (string, error) {
	body, err := client.Get().AbsPath(DiscoveryPath).DoRaw(ctx)
	switch {
	case apierrors.IsForbidden(err):
		return "", fmt.Errorf("reading %s: forbidden; bind the ClusterRole system:service-account-issuer-discovery to this identity: %w", DiscoveryPath, err)
	case apierrors.IsUnauthorized(err):
		return "", fmt.Errorf("reading %s: unauthorized (is this identity's token from an issuer the API server no longer trusts?): %w", DiscoveryPath, err)
	case err != nil:
		return "", fmt.Errorf("reading %s: %w", DiscoveryPath, err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("decoding %s: %w", DiscoveryPath, err)
	}
	if doc.Issuer == "" {
		return "", errors.New(DiscoveryPath + " has no issuer")
	}
	return doc.Issuer, nil
}
