package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

const (
	// readChunk is how much of a log is read, parsed, checkpointed and
	// delivered at a time.
	readChunk = 1 << 20
	// pollBudget bounds the bytes read from one log per poll, so one busy
	// log does not starve the others.
	pollBudget = 16 * readChunk
	// maxRotatedCandidates bounds the directory entries looked at for a
	// log rotated while tokenroll was down.
	maxRotatedCandidates = 1000
)

// LogConfig configures the audit log source.
type LogConfig struct {
	// Paths are the audit logs to follow, one per API server (JSON lines,
	// --audit-log-format=json).
	Paths []string
	// CheckpointDir holds one checkpoint file per log.
	CheckpointDir string
	// PollInterval is how often each log is read.
	PollInterval time.Duration
}

// LogSource follows kube-apiserver audit logs: it reads new lines as they
// are written, follows rotation by rename (lumberjack, logrotate's create)
// and by copy-and-truncate, resumes after a restart where it stopped, and
// delivers the events of every log to one sink.
//
// Each log's checkpoint is written after a chunk of lines is read and
// before their events are delivered: a restart never delivers a line
// twice; a crash between the two loses at most one chunk.
type LogSource struct {
	cfg     LogConfig
	tailers []*tailer
	stream  *stream
	clock   clock.WithTicker
	log     *zap.Logger
}

// newLogSource makes the checkpoint directory (0700: it is tokenroll's) and
// one tailer per log, and opens the logs there are: whatever is written to
// them from now on is read by Run.
func newLogSource(cfg LogConfig, s *stream, log *zap.Logger, clk clock.WithTicker) (*LogSource, error) {
	if err := os.MkdirAll(cfg.CheckpointDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating --audit-log-checkpoint-dir: %w", err)
	}
	l := &LogSource{cfg: cfg, stream: s, clock: clk, log: log}
	for _, p := range cfg.Paths {
		t := newTailer(filepath.Clean(p), cfg.CheckpointDir, s, log)
		t.start()
		l.tailers = append(l.tailers, t)
	}
	return l, nil
}

// Name is "log".
func (l *LogSource) Name() string { return SourceLog }

// Run polls every log until ctx ends.
func (l *LogSource) Run(ctx context.Context) error {
	t := l.clock.NewTicker(l.cfg.PollInterval)
	defer t.Stop()
	for {
		l.poll()
		select {
		case <-ctx.Done():
			for _, tl := range l.tailers {
				tl.close()
			}
			return nil
		case <-t.C():
		}
	}
}

func (l *LogSource) poll() {
	for _, t := range l.tailers {
		t.poll()
	}
}

// tailer follows one log.
type tailer struct {
	path     string
	ckptPath string
	stream   *stream
	log      *zap.Logger

	started bool
	f       *os.File
	dev     uint64
	ino     uint64
	// offset is just past the last complete line read; readPos is where
	// the next read starts (offset plus the partial line held).
	offset  int64
	readPos int64
	partial []byte
	// discarding: in the middle of a line longer than MaxEventBytes,
	// dropped up to its newline.
	discarding bool
	fpLen      int
	fp         string
	saved      checkpoint
	buf        []byte
	events     []Event
	skips      []error
}

func newTailer(path, ckptDir string, s *stream, log *zap.Logger) *tailer {
	return &tailer{path: path, ckptPath: checkpointPath(ckptDir, path), stream: s, log: log.With(zap.String("auditLog", path))}
}

func fileID(st os.FileInfo) (dev, ino uint64) {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(sys.Dev), sys.Ino //nolint:unconvert // Dev's type differs between platforms
	}
	return 0, 0
}

func (t *tailer) fail(op string, err error) {
	t.stream.metrics.logErrors.WithLabelValues(op).Inc()
	t.stream.skippedLog(op, err, t.log)
}

// start opens the log for the first time: where the checkpoint says, in
// the file it names even if that was rotated away meanwhile; without a
// checkpoint, at the end of the log (what is there was written before
// tokenroll looked).
func (t *tailer) start() {
	f, err := os.Open(t.path)
	if os.IsNotExist(err) {
		t.started = true // not yet: everything in it will be new
		return
	}
	if err != nil {
		t.fail(logErrOpen, fmt.Errorf("opening audit log %s: %w", t.path, err))
		return
	}
	t.started = true
	st, err := f.Stat()
	if err != nil {
		f.Close()
		t.fail(logErrOpen, fmt.Errorf("reading audit log %s: %w", t.path, err))
		return
	}
	dev, ino := fileID(st)
	c, ok, err := readCheckpoint(t.ckptPath)
	if err != nil {
		t.fail(logErrCheckpoint, err)
	}
	switch {
	case !ok:
		t.use(f, dev, ino, st.Size())
		t.log.Info("Following an audit log from its end (no checkpoint)", zap.Int64("offset", st.Size()), zap.String("checkpoint", t.ckptPath))
	case c.Device == dev && c.Inode == ino:
		if st.Size() >= c.Offset && t.matches(f, c) {
			t.use(f, dev, ino, c.Offset)
		} else {
			t.use(f, dev, ino, 0) // truncated or replaced while we were down
		}
		t.log.Info("Resuming an audit log from its checkpoint", zap.Int64("offset", t.offset))
	default:
		if old := t.findRotated(c); old != nil {
			// Finish the rotated file first; poll moves on to the new one.
			f.Close()
			t.use(old, c.Device, c.Inode, c.Offset)
			t.log.Info("Resuming an audit log rotated while tokenroll was down", zap.String("rotatedTo", old.Name()), zap.Int64("offset", c.Offset))
		} else {
			t.use(f, dev, ino, 0)
			t.log.Info("Audit log was rotated while tokenroll was down and its checkpointed file is gone; reading the new one from its start")
		}
	}
}

// matches tells whether f begins as the checkpointed file did.
func (t *tailer) matches(f *os.File, c checkpoint) bool {
	if c.FingerprintBytes == 0 {
		return true
	}
	fp, err := fingerprint(f, c.FingerprintBytes)
	return err == nil && fp == c.Fingerprint
}

// findRotated looks beside the log for the file the checkpoint names.
func (t *tailer) findRotated(c checkpoint) *os.File {
	dir := filepath.Dir(t.path)
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(maxRotatedCandidates)
	for _, name := range names {
		p := filepath.Join(dir, name)
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		if dev, ino := fileID(st); dev != c.Device || ino != c.Inode || st.Size() < c.Offset {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if t.matches(f, c) {
			return f
		}
		f.Close()
	}
	return nil
}

func (t *tailer) use(f *os.File, dev, ino uint64, offset int64) {
	t.f, t.dev, t.ino = f, dev, ino
	t.offset, t.readPos = offset, offset
	t.partial, t.discarding = t.partial[:0], false
	t.fpLen, t.fp = 0, ""
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// poll reads what was appended, then follows a rotation: a new file at the
// path (the old one renamed: finish it, then read the new one from its
// start) or a shorter file (truncated: read it again from its start).
func (t *tailer) poll() {
	if !t.started {
		t.start()
		if t.f == nil {
			return
		}
	} else if t.f == nil {
		t.startNew()
		if t.f == nil {
			return
		}
	}
	if st, err := t.f.Stat(); err == nil && (st.Size() < t.readPos || !t.sameStart()) {
		t.stream.metrics.logRotations.WithLabelValues("truncate").Inc()
		t.use(t.f, t.dev, t.ino, 0)
	}
	t.readAvailable(pollBudget)
	st, err := os.Stat(t.path)
	if err != nil {
		// Renamed, the new file not yet created: keep the old one.
		return
	}
	if dev, ino := fileID(st); dev != t.dev || ino != t.ino {
		t.readAvailable(-1)
		t.flushPartial()
		t.close()
		t.stream.metrics.logRotations.WithLabelValues("rename").Inc()
		t.startNew()
		if t.f != nil {
			t.readAvailable(pollBudget)
		}
	}
}

// sameStart tells whether the file still begins as it did when read: a
// copy-and-truncate followed by more writes than were read before it
// leaves the file longer, not shorter.
func (t *tailer) sameStart() bool {
	if t.fpLen == 0 {
		return true
	}
	fp, err := fingerprint(t.f, t.fpLen)
	return err == nil && fp == t.fp
}

// startNew opens the file now at the path from its start.
func (t *tailer) startNew() {
	t.started = true
	f, err := os.Open(t.path)
	if err != nil {
		if !os.IsNotExist(err) {
			t.fail(logErrOpen, fmt.Errorf("opening audit log %s: %w", t.path, err))
		}
		return
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		t.fail(logErrOpen, fmt.Errorf("reading audit log %s: %w", t.path, err))
		return
	}
	dev, ino := fileID(st)
	t.use(f, dev, ino, 0)
}

// readAvailable reads up to budget bytes (-1: to the end), chunk by chunk.
func (t *tailer) readAvailable(budget int64) {
	if t.buf == nil {
		t.buf = make([]byte, readChunk)
	}
	for budget != 0 {
		n, err := t.f.ReadAt(t.buf, t.readPos)
		if n > 0 {
			t.readPos += int64(n)
			t.stream.metrics.logBytes.Add(float64(n))
			t.lines(t.buf[:n])
			t.commit()
			if budget > 0 {
				budget = max(0, budget-int64(n))
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.fail(logErrRead, fmt.Errorf("reading audit log %s at offset %d: %w", t.path, t.readPos, err))
			}
			return
		}
	}
}

// lines parses the complete lines in data, holding the last, partial one.
func (t *tailer) lines(data []byte) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if t.discarding {
				t.offset += int64(len(data))
				return
			}
			if len(t.partial)+len(data) > MaxEventBytes {
				t.skips = append(t.skips, skip(SkipTooLarge, "line longer than %d bytes", MaxEventBytes))
				t.offset += int64(len(t.partial) + len(data))
				t.partial, t.discarding = t.partial[:0], true
				return
			}
			t.partial = append(t.partial, data...)
			return
		}
		line := data[:i]
		data = data[i+1:]
		if t.discarding {
			t.offset += int64(i + 1)
			t.discarding = false
			continue
		}
		if len(t.partial) > 0 {
			t.partial = append(t.partial, line...)
			line = t.partial
		}
		t.offset += int64(len(line) + 1)
		t.parseLine(line)
		t.partial = t.partial[:0]
	}
}

func (t *tailer) parseLine(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var err error
	if t.events, err = Parse(line, t.events); err != nil {
		t.skips = append(t.skips, err)
	}
}

// flushPartial parses a last line that never got its newline: the file it
// was in has been rotated away, so nothing more will come.
func (t *tailer) flushPartial() {
	if len(t.partial) > 0 {
		line := t.partial
		t.offset += int64(len(line))
		t.parseLine(line)
		t.partial = t.partial[:0]
		t.commit()
	}
}

// commit writes the checkpoint, then delivers what was read.
func (t *tailer) commit() {
	if t.offset != t.saved.Offset || t.dev != t.saved.Device || t.ino != t.saved.Inode {
		if want := int(min(t.offset, fingerprintMax)); want > t.fpLen {
			if fp, err := fingerprint(t.f, want); err == nil {
				t.fp, t.fpLen = fp, want
			}
		}
		c := checkpoint{Path: t.path, Device: t.dev, Inode: t.ino, Offset: t.offset, FingerprintBytes: t.fpLen, Fingerprint: t.fp}
		if err := writeCheckpoint(t.ckptPath, c); err != nil {
			t.fail(logErrCheckpoint, err)
		} else {
			t.saved = c
		}
	}
	for _, ev := range t.events {
		t.stream.deliver(SourceLog, ev)
	}
	for _, err := range t.skips {
		t.stream.skipped(SourceLog, err, zap.String("auditLog", t.path))
	}
	clear(t.events)
	t.events, t.skips = t.events[:0], t.skips[:0]
}
