// Package programs names tokenroll's binaries, finds them for the sandbox
// and builds them for tests and benchmarks that run them as processes.
package programs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The binaries, each built from ./cmd/NAME.
const (
	// Agent is the node agent (a DaemonSet in a cluster).
	Agent = "tokenroll-agent"
	// Coordinator is the leader-elected coordinator (a Deployment).
	Coordinator = "tokenroll-coordinator"
	// CLI is what a person runs (scan, status, rollout).
	CLI = "tokenroll"
	// Sandbox is the local cluster; its hidden `node reboot|restart-kubelet`
	// commands are the sandbox agents' --reboot-command and
	// --kubelet-restart-command.
	Sandbox = "tokenroll-sandbox"
)

// All is every binary, in the order make build lists them.
var All = []string{CLI, Agent, Coordinator, Sandbox}

// DirEnv names the directory holding the binaries when no flag does.
const DirEnv = "TOKENROLL_BIN_DIR"

// Dir resolves the directory of the binaries: dir, else $TOKENROLL_BIN_DIR,
// else the directory of the running program (make build puts them side by
// side in bin/).
func Dir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv(DirEnv)
	}
	if dir == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("finding this program, to find %s and %s beside it: %w; set $%s", Agent, Coordinator, err, DirEnv)
		}
		dir = filepath.Dir(self)
	}
	return filepath.Abs(dir)
}

// Find checks that dir holds every binary in names and returns their
// paths, in order.
func Find(dir string, names ...string) ([]string, error) {
	var paths, missing []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			missing = append(missing, n)
		}
		paths = append(paths, p)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s not found in %s: run make build (it builds every binary into bin/), or go build -o %s/ ./cmd/%s, or name their directory with $%s",
			strings.Join(missing, ", "), dir, dir, strings.Join(missing, " ./cmd/"), DirEnv)
	}
	return paths, nil
}

// Build builds names into dir with go build, run inside this module. With
// release it builds them as make build does (static, stripped, with the
// Makefile's TAGS), for measurements; without, with the flags go test uses,
// so that the build cache serves it. Tests build what they run instead of
// relying on make.
func Build(ctx context.Context, dir string, release bool, names ...string) error {
	if len(names) == 0 {
		return errors.New("programs.Build: no binary named")
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if release {
		args = append(args, "-trimpath", "-tags", "grpcnotrace", "-ldflags", "-s -w")
	}
	for _, n := range names {
		args = append(args, "github.com/tokenroll/tokenroll/cmd/"+n)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	if release {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
