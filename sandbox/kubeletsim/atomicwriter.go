package kubeletsim

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The kubelet's AtomicWriter layout (pkg/volume/util/atomic_writer.go): the
// payload lives in a timestamped directory, "..data" is a relative link to
// it, and each visible top-level entry is a relative link through "..data".
// Swapping "..data" by rename makes a new payload appear all at once.
const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
)

// file is one entry of a projected volume's payload. FsUser, when set, owns
// it (the kubelet gives a pod's tokens to the pod's runAsUser).
type file struct {
	Data   []byte
	Mode   os.FileMode
	FsUser *int64
}

// writeAtomically makes dir hold exactly payload (paths relative to dir,
// possibly nested), the way the kubelet does. It writes nothing when the
// payload is unchanged and reports whether it wrote. With fsGroup, each
// write hands the whole volume, links included, to that group as the
// kubelet's SetVolumeOwnership does for a read-only volume: group read
// added to every file, directories setgid and searchable.
func writeAtomically(dir string, payload map[string]file, fsGroup *int64, now time.Time) (bool, error) {
	for p := range payload {
		if err := validatePath(p); err != nil {
			return false, err
		}
	}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		// The kubelet mounts a projected volume on an emptyDir of its own
		// (tmpfs on a node), whose directory is world-writable.
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return false, err
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return false, err
		}
	}
	oldTS, _ := os.Readlink(filepath.Join(dir, dataDirName))
	if oldTS != "" && sameContent(filepath.Join(dir, oldTS), payload) {
		return false, nil
	}

	tsDir, err := os.MkdirTemp(dir, now.UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return false, err
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return false, err
	}
	for p, f := range payload {
		full := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
			return false, err
		}
		if err := os.Chmod(full, f.Mode); err != nil {
			return false, err
		}
		if f.FsUser != nil {
			if err := os.Lchown(full, int(*f.FsUser), -1); err != nil {
				return false, err
			}
		}
	}
	tmpLink := filepath.Join(dir, newDataDirName)
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		return false, err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, dataDirName)); err != nil {
		return false, err
	}

	want := map[string]bool{}
	for p := range payload {
		want[strings.SplitN(p, "/", 2)[0]] = true
	}
	for top := range want {
		link := filepath.Join(dir, top)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(dataDirName, top), link); err != nil {
			return false, err
		}
		if f, ok := payload[top]; ok && f.FsUser != nil {
			if err := os.Lchown(link, int(*f.FsUser), -1); err != nil {
				return false, err
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == dataDirName || name == filepath.Base(tsDir):
		case strings.HasPrefix(name, ".."):
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return false, err
			}
		case !want[name]:
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return false, err
			}
		}
	}
	if fsGroup != nil {
		if err := setVolumeOwnership(dir, int(*fsGroup)); err != nil {
			return false, err
		}
	}
	return true, nil
}

func validatePath(p string) error {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "..") || filepath.Clean(p) != p {
		return fmt.Errorf("invalid projected path %q: must be relative, clean and not start with '..'", p)
	}
	return nil
}

// sameContent reports whether tsDir holds exactly payload.
func sameContent(tsDir string, payload map[string]file) bool {
	var have []string
	err := filepath.WalkDir(tsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(tsDir, path)
			have = append(have, rel)
		}
		return nil
	})
	if err != nil || len(have) != len(payload) {
		return false
	}
	sort.Strings(have)
	for _, p := range have {
		f, ok := payload[p]
		if !ok {
			return false
		}
		data, err := os.ReadFile(filepath.Join(tsDir, p))
		if err != nil || !bytes.Equal(data, f.Data) {
			return false
		}
	}
	return true
}

// setVolumeOwnership is the kubelet's SetVolumeOwnership for a read-only
// volume (pkg/volume/volume_linux.go): every entry to group gid; files and
// directories (not links) get group and owner read, directories also
// search and setgid.
func setVolumeOwnership(dir string, gid int) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mask := os.FileMode(0o440)
		if d.IsDir() {
			mask |= os.ModeSetgid | 0o110
		}
		return os.Chmod(path, info.Mode()|mask)
	})
}
