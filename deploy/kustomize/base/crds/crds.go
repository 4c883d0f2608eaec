// Package crds holds the tokenroll.io CRDs as shipped (this directory is
// the kustomize base's copy of the chart's crds/), for what installs them
// itself: the sandbox, and tests against a real API server.
package crds

import (
	"embed"
	"fmt"
	"io/fs"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed *.yaml
var files embed.FS

// Objects returns the CRDs.
func Objects() ([]*unstructured.Unstructured, error) {
	names, err := fs.Glob(files, "*.yaml")
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, name := range names {
		data, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal(data, &obj); err != nil {
			return nil, fmt.Errorf("parsing CRD %s: %w", name, err)
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out, nil
}
