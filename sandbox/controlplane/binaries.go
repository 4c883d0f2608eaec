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
	if err := executables(b.Etcd, b.KubeAPIServer); err != nil {
		return Binaries{}, fmt.Errorf("control-plane binaries (kubernetes %s, etcd %s) not found; run `make controlplane` to build them, or point --bin-dir or $%s at a directory holding etcd and kube-apiserver: %w",
			KubernetesVersion, EtcdVersion, BinDirEnv, err)
	}
	return b, nil
}

// KubeletBinaries locates the two programs a sandbox node with the real
// kubelet code runs, built by build.sh from the same pinned Kubernetes
// (test/tools/hollowkubelet and test/tools/fakeruntime).
type KubeletBinaries struct {
	// HollowKubelet is the kubelet code over kubemark's fakes.
	HollowKubelet string
	// FakeRuntime is kubemark's fake CRI runtime, served on a unix socket.
	FakeRuntime string
}

// FindKubeletBinaries returns the kubelet binaries in dir, or, when dir is
// empty, in $TOKENROLL_CONTROLPLANE_BIN or the build cache. The error says
// how to build them.
func FindKubeletBinaries(dir string) (KubeletBinaries, error) {
	if dir == "" {
		dir = os.Getenv(BinDirEnv)
	}
	if dir == "" {
		dir = CacheDir()
	}
	b := KubeletBinaries{HollowKubelet: filepath.Join(dir, "hollow-kubelet"), FakeRuntime: filepath.Join(dir, "fake-runtime")}
	if err := executables(b.HollowKubelet, b.FakeRuntime); err != nil {
		return KubeletBinaries{}, fmt.Errorf("kubelet binaries (kubernetes %s) not found; run `make kubelet` to build them, or point --bin-dir or $%s at a directory holding hollow-kubelet and fake-runtime: %w",
			KubernetesVersion, BinDirEnv, err)
	}
	return b, nil
}

// ControllerBinaries locates the cluster's controllers, built by build.sh
// from the same pinned Kubernetes.
type ControllerBinaries struct {
	ControllerManager string
	Scheduler         string
}

// FindControllerBinaries returns kube-controller-manager and kube-scheduler
// in dir, or, when dir is empty, in $TOKENROLL_CONTROLPLANE_BIN or the build
// cache. The error says how to build them.
func FindControllerBinaries(dir string) (ControllerBinaries, error) {
	if dir == "" {
		dir = os.Getenv(BinDirEnv)
	}
	if dir == "" {
		dir = CacheDir()
	}
	b := ControllerBinaries{ControllerManager: filepath.Join(dir, "kube-controller-manager"), Scheduler: filepath.Join(dir, "kube-scheduler")}
	if err := executables(b.ControllerManager, b.Scheduler); err != nil {
		return ControllerBinaries{}, fmt.Errorf("controller binaries (kubernetes %s) not found; run `make controllers` to build them, or point --bin-dir or $%s at a directory holding kube-controller-manager and kube-scheduler: %w",
			KubernetesVersion, BinDirEnv, err)
	}
	return b, nil
}

// executables checks that each path is an executable file.
func executables(paths ...string) error {
	var errs []error
	for _, p := range paths {
		st, err := os.Stat(p)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s: not an executable file", p))
		}
	}
	return errors.Join(errs...)
}
