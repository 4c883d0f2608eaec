// Package codegen_test fails when the code and CRDs generated from the
// tokenroll.io API types are stale: it runs hack/update-codegen.sh on a
// copy of the types in a temporary directory and compares the output with
// the repository's. It skips under -short: the first run builds the pinned
// generators (test/codegen/tools) from the module proxy.
package codegen_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}()

// inputs are what the generators read: the module's dependency pins and
// the types; and crds.go, written by hand beside the generated CRDs of the
// kustomize base, which the script keeps.
var inputs = []string{"go.mod", "go.sum", "pkg/apis", "deploy/kustomize/base/crds/crds.go"}

// outputs are what hack/update-codegen.sh writes.
var outputs = []string{
	"pkg/generated",
	"pkg/apis/tokenroll/v1alpha1/zz_generated.deepcopy.go",
	"deploy/helm/tokenroll/crds",
	"deploy/kustomize/base/crds",
}

func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the code generators, built from the module proxy on first use (make codegen-tools); run without -short")
	}
	tmp := t.TempDir()
	for _, in := range inputs {
		copyTree(t, filepath.Join(repoRoot, in), filepath.Join(tmp, in))
	}
	// The repository's generated files are not inputs: remove the copies so
	// that a generator that writes nothing cannot pass for one up to date.
	if err := os.Remove(filepath.Join(tmp, "pkg/apis/tokenroll/v1alpha1/zz_generated.deepcopy.go")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(repoRoot, "hack/update-codegen.sh"), tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/update-codegen.sh: %v\n%s", err, out)
	}
	for _, out := range outputs {
		want := files(t, filepath.Join(tmp, out))
		got := files(t, filepath.Join(repoRoot, out))
		if len(want) == 0 {
			t.Errorf("%s: the generators wrote nothing", out)
		}
		for name, data := range want {
			have, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s is missing: run hack/update-codegen.sh (make codegen)", filepath.Join(out, name))
			case !bytes.Equal(have, data):
				t.Errorf("%s is stale: run hack/update-codegen.sh (make codegen)", filepath.Join(out, name))
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s is not generated any more: run hack/update-codegen.sh (make codegen), which removes it", filepath.Join(out, name))
			}
		}
	}
}

// files reads every regular file under root (root itself when it is a
// file), by path relative to root.
func files(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		out[rel] = data
		return err
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

// copyTree copies a file or a directory of regular files.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	names := files(t, src)
	if len(names) == 0 {
		t.Fatalf("%s: nothing to copy", src)
	}
	for rel, data := range names {
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
