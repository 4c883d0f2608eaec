// Package deploy_test proves the manifests in deploy/: the kustomize base and
// overlays and the Helm chart render (with the kustomize and Helm libraries),
// agree with each other, and are accepted by a real API server (server-side
// dry-run, with the prometheus-operator and OpenShift CRDs installed); the
// admission policy and RBAC hold for real against the agent's and the
// coordinator's own identities; the alert rules pass promtool. Tests that
// need the control plane or the tools built from the module proxy skip
// under -short.
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// repoRoot is the repository's top directory.
var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}()

func repoPath(rel string) string { return filepath.Join(repoRoot, filepath.FromSlash(rel)) }

var (
	toolsOnce sync.Once
	toolsDir  string
	toolsErr  error
)

// tools returns the directory that test/deploy/tools/build.sh fills (render,
// promtool, crds/), building it on first use. It skips under -short: a cold
// build takes minutes.
func tools(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs render and promtool built from the module proxy (make deploy-tools); run without -short")
	}
	toolsOnce.Do(func() {
		var stderr bytes.Buffer
		cmd := exec.Command("bash", repoPath("test/deploy/tools/build.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			toolsErr = fmt.Errorf("building the deploy test tools (test/deploy/tools/build.sh): %w\n%s", err, stderr.String())
			return
		}
		toolsDir = strings.TrimSpace(string(out))
	})
	if toolsErr != nil {
		t.Fatal(toolsErr)
	}
	return toolsDir
}

// rendering is one way the manifests are installed.
type rendering struct {
	name string
	// args for the render tool; paths are relative to the repository.
	args []string
	// namespace the components run in.
	namespace string
	// release is the Helm release name ("" for kustomize).
	release string
}

// customValues is a Helm values file that changes every value.
const customValues = "test/deploy/testdata/values-custom.yaml"

var renderings = []rendering{
	{name: "kustomize-base", args: []string{"kustomize", "deploy/kustomize/base"}, namespace: "tokenroll"},
	{name: "kustomize-kubeadm", args: []string{"kustomize", "deploy/kustomize/overlays/kubeadm"}, namespace: "tokenroll"},
	{name: "kustomize-openshift", args: []string{"kustomize", "deploy/kustomize/overlays/openshift"}, namespace: "tokenroll"},
	// What the README tells kubeadm users to write to add monitoring.
	{name: "kustomize-kubeadm-monitoring", args: []string{"kustomize", "test/deploy/testdata/kubeadm-monitoring"}, namespace: "tokenroll"},
	{name: "helm-default", args: []string{"helm", "deploy/helm/tokenroll"}, namespace: "tokenroll", release: "tokenroll"},
	{name: "helm-kubeadm", args: []string{"helm", "deploy/helm/tokenroll", "--set", "coordinator.gate=static-pods"}, namespace: "tokenroll", release: "tokenroll"},
	{name: "helm-openshift", args: []string{"helm", "deploy/helm/tokenroll", "--set", "openshift.enabled=true",
		"--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
		"--set", "monitoring.grafanaDashboard.enabled=true"}, namespace: "tokenroll", release: "tokenroll"},
	// Both audit sources, as deploy/README.md tells kubeadm users to add
	// them, and the chart's values for the same.
	{name: "kustomize-kubeadm-audit", args: []string{"kustomize", "test/deploy/testdata/kubeadm-audit"}, namespace: "tokenroll"},
	{name: "helm-kubeadm-audit", args: []string{"helm", "deploy/helm/tokenroll", "--set", "coordinator.gate=static-pods",
		"--set", "coordinator.audit.webhook.enabled=true", "--set", "coordinator.audit.log.enabled=true"}, namespace: "tokenroll", release: "tokenroll"},
	{name: "helm-custom", args: []string{"helm", "deploy/helm/tokenroll", "--release", "ops", "--namespace", "tokenroll-system", "-f", customValues},
		namespace: "tokenroll-system", release: "ops"},
}

func findRendering(name string) rendering {
	for _, r := range renderings {
		if r.name == name {
			return r
		}
	}
	panic("no rendering " + name)
}

var (
	renderMu    sync.Mutex
	renderCache = map[string][]*unstructured.Unstructured{}
)

// render runs the render tool for r and returns the objects, each a fresh
// copy.
func render(t testing.TB, r rendering) []*unstructured.Unstructured {
	t.Helper()
	renderMu.Lock()
	defer renderMu.Unlock()
	objs, ok := renderCache[r.name]
	if !ok {
		out := runTool(t, "render", r.args...)
		var err error
		if objs, err = decodeObjects(out); err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		renderCache[r.name] = objs
	}
	copies := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		copies[i] = o.DeepCopy()
	}
	return copies
}

// runTool runs one of the built tools in the repository's directory.
func runTool(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(tools(t), tool), args...)
	cmd.Dir = repoRoot
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", tool, strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

// decodeObjects splits a YAML stream into objects, skipping empty documents.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding the rendered YAML: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("an object without kind, apiVersion or name: %v", m)
		}
		objs = append(objs, u)
	}
}

func objectKey(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + strings.TrimPrefix(o.GetNamespace()+"/", "/") + o.GetName()
}

// find returns the object of that kind and name.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	i := slices.IndexFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == kind && o.GetName() == name })
	if i < 0 {
		var have []string
		for _, o := range objs {
			have = append(have, objectKey(o))
		}
		t.Fatalf("no %s %s among %s", kind, name, strings.Join(have, ", "))
	}
	return objs[i]
}

func readFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
