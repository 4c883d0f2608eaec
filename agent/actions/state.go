package actions

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokenroll/tokenroll/protocol"
)

// StateFileName is the record's name in --state-dir (a hostPath, so it
// survives the agent and the node's reboots).
const StateFileName = "actions.json"

// historySize is how many requests the record remembers.
const historySize = 32

// Record is what the agent knows of one request.
type Record struct {
	ID     string          `json:"id"`
	Action protocol.Action `json:"action"`
	// Phase is running from just before the action is started, then done
	// or failed. A running record found at start means the agent stopped
	// mid-action: the action is never repeated.
	Phase   protocol.RequestPhase `json:"phase"`
	Message string                `json:"message,omitempty"`
	// BootID is the boot the action started in.
	BootID string `json:"bootID"`
	// DryRun: done without acting, the executor being a dry run.
	DryRun    bool      `json:"dryRun,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`

	// fromNode: the state file had no record of the request, and this one
	// was read from the Node's status annotation.
	fromNode bool
}

// withOrigin says, in a record read from the Node, where it came from.
func (r Record) withOrigin() Record {
	if r.fromNode {
		r.Message += " (the state directory had no record of this request; the Node's status was the record)"
	}
	return r
}

// stateFile is the durable record of requests acted on.
type stateFile struct {
	path string
}

type stateDoc struct {
	Version int      `json:"version"`
	Records []Record `json:"records"`
}

// statfsType tells the filesystem type (statfs f_type) of the filesystem
// holding dir; a variable so tests can stand for a tmpfs mount.
var statfsType = func(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Type, nil
}

// volatileFilesystems are the filesystems that keep their files in memory:
// a record there is gone after a reboot, exactly when it is needed.
var volatileFilesystems = map[int64]string{unix.TMPFS_MAGIC: "tmpfs", unix.RAMFS_MAGIC: "ramfs"}

// newStateFile opens the record in dir. A dir in memory is refused unless
// allowVolatile: the record must outlive the reboots it records.
func newStateFile(dir string, allowVolatile bool) (*stateFile, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	fsType, err := statfsType(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: finding its filesystem: %w", dir, err)
	}
	if name, ok := volatileFilesystems[fsType]; ok && !allowVolatile {
		return nil, fmt.Errorf("state directory %s is on %s, which a reboot empties: the record of which requests were carried out would be lost "+
			"exactly when a reboot needs it. Mount a hostPath on the node's persistent disk there (the shipped DaemonSet mounts /var/lib/tokenroll), "+
			"(--allow-volatile-state-dir is for test harnesses whose nodes reboot without emptying it)", dir, name)
	}
	return &stateFile{path: filepath.Join(dir, StateFileName)}, nil
}

// load reads the records; a missing file is an empty record. A file that
// cannot be read or decoded is an error: acting without the record could act
// twice.
func (s *stateFile) load() ([]Record, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file %s: %w; refusing to act until it is readable", s.path, err)
	}
	var doc stateDoc
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 {
		return nil, fmt.Errorf("state file %s is corrupt (%w); refusing to act. It records which requests were already carried out: inspect it, and remove it only if no action is in flight on this node", s.path, errOrVersion(err, doc.Version))
	}
	return doc.Records, nil
}

func errOrVersion(err error, v int) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("version %d, want 1", v)
}

// find returns the record of request id.
func (s *stateFile) find(id string) (*Record, error) {
	recs, err := s.load()
	if err != nil {
		return nil, err
	}
	for i := range recs {
		if recs[i].ID == id {
			return &recs[i], nil
		}
	}
	return nil, nil
}

// put records rec durably: written to a temporary file, fsynced, renamed
// over the record, and the directory fsynced.
func (s *stateFile) put(rec Record) error {
	recs, err := s.load()
	if err != nil {
		return err
	}
	out := []Record{rec}
	for _, r := range recs {
		if r.ID != rec.ID && len(out) < historySize {
			out = append(out, r)
		}
	}
	data, err := json.MarshalIndent(stateDoc{Version: 1, Records: out}, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, ".actions-*.json")
	if err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replacing state file %s: %w", s.path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing state directory %s: %w", dir, err)
	}
	return nil
}
