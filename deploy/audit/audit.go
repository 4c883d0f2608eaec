// Package audit holds the audit policy tokenroll ships, for the sandbox and
// the tests to run the API server with the very file an administrator
// installs.
package audit

import _ "embed"

// Policy is policy.yaml: the audit.k8s.io/v1 Policy for kubeadm and
// self-managed clusters.
//
//go:embed policy.yaml
var Policy []byte
