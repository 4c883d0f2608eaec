// Package issuer reads the API server's signing service-account issuer from
// its OIDC discovery document.
package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"k8s.io/client-go/rest"
)

// DiscoveryPath is the OIDC discovery document every service account may read.
const DiscoveryPath = "/.well-known/openid-configuration"

// Discover returns the issuer the API server signs new tokens with (the
// first --service-account-issuer).
func Discover(ctx context.Context, client rest.Interface) (string, error) {
	body, err := client.Get().AbsPath(DiscoveryPath).DoRaw(ctx)
	if err != nil {
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
