package sandbox

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

// podLayout describes what a kubelet keeps for one pod under its root, one
// line per entry: the path relative to the pod's directory, its type and
// permission bits (setgid shown) and its owner, with the names that differ
// from one pod to the next (the AtomicWriter's timestamped directories, the
// kube-api-access volume's suffix, the container IDs) made alike, so that
// two kubelets' layouts of the same pod compare equal.
func podLayout(root, podUID string) ([]string, error) {
	dir := filepath.Join(root, "pods", podUID)
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner", path)
		}
		rel, _ := filepath.Rel(dir, path)
		kind := "file"
		switch {
		case d.IsDir():
			kind = "dir"
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			kind = "link->" + alike(target)
		}
		mode := fmt.Sprintf("%04o", info.Mode().Perm())
		if info.Mode()&fs.ModeSetgid != 0 {
			mode = "g+s " + mode
		}
		if kind[0] == 'l' {
			mode = "" // a link's own bits mean nothing
		}
		line := fmt.Sprintf("%s %s %s %d:%d", alike(rel), kind, mode, st.Uid, st.Gid)
		if !slices.Contains(out, line) {
			out = append(out, line)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

var (
	atomicWriterDir = regexp.MustCompile(`\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+`)
	kubeAPIAccess   = regexp.MustCompile(`kube-api-access-[a-z0-9]{5}`)
)

func alike(p string) string {
	p = atomicWriterDir.ReplaceAllString(p, "..TIMESTAMP")
	p = kubeAPIAccess.ReplaceAllString(p, "kube-api-access-X")
	// The runtime names what it keeps per container by its own IDs.
	if parts := strings.Split(p, "/"); len(parts) > 2 && parts[0] == "containers" {
		parts[2] = "ID"
		p = strings.Join(parts[:3], "/")
	}
	return p
}
