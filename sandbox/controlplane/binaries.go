package controlplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The pinned control-plane versions. test/tools/go.mod holds the same pins
// (a test checks they agree); build.sh builds from there.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.7.0"
)

// BinDirEnv names the environment variable that points at a directory
// holding etcd and kube-apiserver, overriding the build cache.
const BinDirEnv = "TOKENROLL_CONTROLPLANE_BIN"

// Binaries locates the two programs a control plane runs.
type Binaries struct {
	Etcd          string
	KubeAPIServer string
}

// CacheDir is where build.sh puts the binaries for the pinned versions.
func CacheDir() string {
	root := os.Getenv("TOKENROLL_CACHE_DIR")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = filepath.Join(os.TempDir(), "cache")
		}
		root = filepath.Join(base, "tokenroll")
	}
	return filepath.Join(root, "controlplane", "kubernetes-"+KubernetesVersion+"-etcd-"+EtcdVersion)
}

// FindBinaries returns the binaries in dir, or, when dir is empty, in
// $TOKENROLL_CONTROLPLANE_BIN or the build cache. The error says how to build
// them.
func FindBinaries(dir string) (Binaries, error) {
	if dir == "" {
		dir = os.Getenv(BinDirEnv)
	}
	if dir == "" {
		dir = CacheDir()
	}
	b := Binaries{Etcd: filepath.Join(dir, "etcd"), KubeAPIServer: filepath.Join(dir, "kube-apiserver")}
	var errs []error
	for _, p := range []string{b.Etcd, b.KubeAPIServer} {
		st, err := os.Stat(p)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s: not an executable file", p))
		}
	}
	if len(errs) > 0 {
		return Binaries{}, fmt.Errorf("control-plane binaries (kubernetes %s, etcd %s) not found; run `make controlplane` to build them, or point --bin-dir or $%s at a directory holding etcd and kube-apiserver: %w",
			KubernetesVersion, EtcdVersion, BinDirEnv, errors.Join(errs...))
	}
	return b, nil
}
