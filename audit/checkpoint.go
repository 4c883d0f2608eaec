package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// fingerprintMax is how much of a log's beginning identifies it beside its
// device and inode, which a new file may reuse once the old one is
// deleted.
const fingerprintMax = 1024

// checkpoint is where reading one audit log stopped: the file (device,
// inode and a hash of its first bytes) and the offset just past the last
// line read.
type checkpoint struct {
	Path             string `json:"path"`
	Device           uint64 `json:"device"`
	Inode            uint64 `json:"inode"`
	Offset           int64  `json:"offset"`
	FingerprintBytes int    `json:"fingerprintBytes"`
	Fingerprint      string `json:"fingerprint"`
}

// checkpointPath names the checkpoint of the log at logPath: one small file
// per log in dir, named after the log and a hash of its whole path, so two
// logs called audit.log in different directories do not share one.
func checkpointPath(dir, logPath string) string {
	sum := sha256.Sum256([]byte(logPath))
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, filepath.Base(logPath))
	if len(base) > 64 {
		base = base[:64]
	}
	return filepath.Join(dir, fmt.Sprintf("%s-%s.checkpoint.json", base, hex.EncodeToString(sum[:6])))
}

func readCheckpoint(path string) (checkpoint, bool, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return checkpoint{}, false, nil
	}
	if err != nil {
		return checkpoint{}, false, fmt.Errorf("reading audit log checkpoint %s: %w", path, err)
	}
	var c checkpoint
	if err := json.Unmarshal(data, &c); err != nil || c.Offset < 0 || c.FingerprintBytes < 0 || c.FingerprintBytes > fingerprintMax {
		return checkpoint{}, false, fmt.Errorf("audit log checkpoint %s is not one tokenroll wrote; delete it to start from the end of the log", path)
	}
	return c, true, nil
}

// writeCheckpoint replaces the checkpoint at path atomically (a new file
// renamed over the old). It does not fsync: on control-plane nodes the
// disk is etcd's, and a checkpoint lost to a power cut only makes the next
// start begin at the end of the log, which counts nothing twice.
func writeCheckpoint(path string, c checkpoint) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".checkpoint-*")
	if err != nil {
		return fmt.Errorf("writing audit log checkpoint in %s: %w", filepath.Dir(path), err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing audit log checkpoint %s: %w", path, werr)
	}
	return nil
}

// fingerprint hashes the first n bytes of f.
func fingerprint(f *os.File, n int) (string, error) {
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:]), nil
}
