package cli

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// The checks below are shared by the commands' options structs. Each
// returns nil or an error that names the flag, the value and what would be
// right.

// CheckAddr requires a host:port to listen on.
func CheckAddr(flag, addr string) error {
	if _, port, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--%s=%q: want host:port, e.g. :8080 or 127.0.0.1:8080 (%w)", flag, addr, err)
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("--%s=%q: port must be a number from 0 to 65535", flag, addr)
	}
	return nil
}

// CheckPositive requires d to be at least min.
func CheckPositive(flag string, d, min time.Duration) error {
	if d < min {
		return fmt.Errorf("--%s=%s: must be at least %s", flag, d, min)
	}
	return nil
}

// CheckAbsDir requires an absolute path.
func CheckAbsDir(flag, dir string) error {
	if dir == "" {
		return fmt.Errorf("--%s is required", flag)
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("--%s=%q: must be an absolute path", flag, dir)
	}
	return nil
}

// CheckOneOf requires value to be one of allowed.
func CheckOneOf(flag, value string, allowed ...string) error {
	for _, a := range allowed {
		if value == a {
			return nil
		}
	}
	return fmt.Errorf("--%s=%q: must be one of %s", flag, value, strings.Join(allowed, ", "))
}

// CheckFile requires path, when set, to name a file.
func CheckFile(flag, path string) error {
	if path == "" {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--%s=%q: %w", flag, path, err)
	}
	if st.IsDir() {
		return fmt.Errorf("--%s=%q: is a directory, want a file", flag, path)
	}
	return nil
}

// RestConfig loads --kubeconfig, or the in-cluster configuration when it is
// empty, then $KUBECONFIG and ~/.kube/config as kubectl would.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if cfg, err := rest.InClusterConfig(); err == nil {
			return cfg, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading a kubeconfig (set --kubeconfig, or run in a pod): %w", err)
	}
	return cfg, nil
}

// ComponentRestConfig is RestConfig for tokenroll's own components, the
// agent and the coordinator, which run in the cluster beside the API
// server: their requests carry userAgent and ask for no compression, as
// kube-controller-manager's and kube-scheduler's do. Inside a cluster the
// network is not what limits watch streams and lists; gzip costs the API
// server CPU to compress every event, and the client to decompress it (a
// tenth of the coordinator's CPU at idle, measured in the scale
// benchmark). The tokenroll command keeps RestConfig's, kubectl's default:
// it may run far from the cluster.
func ComponentRestConfig(kubeconfig, userAgent string) (*rest.Config, error) {
	cfg, err := RestConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = userAgent
	cfg.DisableCompression = true
	return cfg, nil
}

// CheckDir requires dir to name an existing directory.
func CheckDir(flag, dir string) error {
	if dir == "" {
		return fmt.Errorf("--%s is required", flag)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--%s=%q: %w", flag, dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("--%s=%q: not a directory", flag, dir)
	}
	return nil
}
