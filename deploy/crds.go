// Package deploy holds the tokenroll.io CRDs the manifests install, for
// the sandbox to install the very files an administrator does.
package deploy

import "embed"

// CRDs holds crds/*.yaml of the kustomize base (the chart's crds/ holds
// the same files; test/codegen keeps both generated).
//
//go:embed kustomize/base/crds/*.yaml
var CRDs embed.FS

// CRDDir is the directory of CRDs that holds the files.
const CRDDir = "kustomize/base/crds"
