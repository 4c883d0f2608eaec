package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	clocktesting "k8s.io/utils/clock/testing"
)

type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) Observe(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.evs {
		out = append(out, string(ev.AuditID))
	}
	return out
}

// line is one audit log line: a Presented event with the given audit ID.
func line(t testing.TB, id string) string {
	t.Helper()
	return string(edit(t, fixture(t, "presented.json"), func(m map[string]any) { m["auditID"] = id })) + "\n"
}

func lines(t testing.TB, prefix string, from, to int) (string, []string) {
	var b strings.Builder
	var ids []string
	for i := from; i < to; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		b.WriteString(line(t, id))
		ids = append(ids, id)
	}
	return b.String(), ids
}

func appendTo(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type logFixture struct {
	dir, ckpt string
	rec       *recorder
	metrics   *Metrics
	src       *LogSource
}

func newLogFixture(t *testing.T, dir, ckpt string, paths ...string) *logFixture {
	t.Helper()
	f := &logFixture{dir: dir, ckpt: ckpt, rec: &recorder{}, metrics: NewMetrics(prometheus.NewRegistry())}
	s := newStream(f.rec, f.metrics, zap.NewNop(), clocktesting.NewFakeClock(time.Now()))
	var err error
	f.src, err = newLogSource(LogConfig{Paths: paths, CheckpointDir: ckpt, PollInterval: time.Second}, s, zap.NewNop(), clocktesting.NewFakeClock(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, tl := range f.src.tailers {
			tl.close()
		}
	})
	return f
}

func (f *logFixture) want(t *testing.T, ids []string) {
	t.Helper()
	if got := f.rec.ids(); !slices.Equal(got, ids) {
		t.Fatalf("delivered %d events %v\nwant %d %v", len(got), got, len(ids), ids)
	}
}

func (f *logFixture) skipped(reason SkipReason) float64 {
	return testutil.ToFloat64(f.metrics.skipped.WithLabelValues(SourceLog, string(reason)))
}

func TestLogStartsAtTheEndAndHoldsAPartialLine(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	old, _ := lines(t, "old", 0, 3)
	appendTo(t, p, old)
	f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p)
	f.src.poll()
	f.want(t, nil) // written before tokenroll looked

	more, ids := lines(t, "new", 0, 3)
	last := line(t, "new-3")
	appendTo(t, p, more+last[:100])
	f.src.poll()
	f.want(t, ids)
	appendTo(t, p, last[100:])
	f.src.poll()
	f.want(t, append(ids, "new-3"))
	if n := f.skipped(SkipMalformed); n != 0 {
		t.Errorf("%v lines counted malformed, want 0", n)
	}
}

func TestLogFollowsRenameRotation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	appendTo(t, p, "")
	f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p)
	f.src.poll()

	a, ids := lines(t, "a", 0, 3)
	appendTo(t, p, a)
	f.src.poll()
	// The writer renames its file, writes a last line to it through its
	// open descriptor, then opens a new one.
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, filepath.Join(dir, "audit-2026-12-01T03-00-00.000.log")); err != nil {
		t.Fatal(err)
	}
	f.src.poll() // no file at the path for a moment
	if _, err := w.WriteString(line(t, "a-3")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	b, bids := lines(t, "b", 0, 2)
	appendTo(t, p, b)
	f.src.poll()
	f.want(t, slices.Concat(ids, []string{"a-3"}, bids))
	if n := testutil.ToFloat64(f.metrics.logRotations.WithLabelValues("rename")); n != 1 {
		t.Errorf("rename rotations %v, want 1", n)
	}
}

func TestLogFollowsCopyTruncate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after int // lines written after the truncation, before the next poll
	}{
		{"fewer bytes than were read", 1},
		{"more bytes than were read", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "audit.log")
			appendTo(t, p, "")
			f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p)
			f.src.poll()
			a, ids := lines(t, "a", 0, 3)
			appendTo(t, p, a)
			f.src.poll()
			// logrotate's copytruncate: copy, then truncate in place.
			if err := os.WriteFile(filepath.Join(dir, "audit.log.1"), []byte(a), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, 0); err != nil {
				t.Fatal(err)
			}
			b, bids := lines(t, "b", 0, tc.after)
			appendTo(t, p, b)
			f.src.poll()
			f.want(t, append(ids, bids...))
			if n := testutil.ToFloat64(f.metrics.logRotations.WithLabelValues("truncate")); n != 1 {
				t.Errorf("truncations %v, want 1", n)
			}
		})
	}
}

func TestLogResumesFromItsCheckpoint(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	p := filepath.Join(dir, "audit.log")
	appendTo(t, p, "")
	first := newLogFixture(t, dir, ckpt, p)
	first.src.poll()
	a, ids := lines(t, "a", 0, 4)
	half := line(t, "a-4")
	appendTo(t, p, a+half[:50])
	first.src.poll()
	first.want(t, ids)
	for _, tl := range first.src.tailers {
		tl.close()
	}

	// Down: the partial line is finished, more lines come.
	b, bids := lines(t, "b", 0, 2)
	appendTo(t, p, half[50:]+b)
	second := newLogFixture(t, dir, ckpt, p)
	second.src.poll()
	second.want(t, append([]string{"a-4"}, bids...))

	// Down again, and the log is rotated meanwhile: the rest of the
	// rotated file, then the new one.
	for _, tl := range second.src.tailers {
		tl.close()
	}
	c, cids := lines(t, "c", 0, 2)
	appendTo(t, p, c)
	if err := os.Rename(p, filepath.Join(dir, "audit-old.log")); err != nil {
		t.Fatal(err)
	}
	d, dids := lines(t, "d", 0, 2)
	appendTo(t, p, d)
	third := newLogFixture(t, dir, ckpt, p)
	third.src.poll()
	third.src.poll()
	third.want(t, append(cids, dids...))

	// A checkpoint that is not ours: start at the end, count nothing twice.
	for _, tl := range third.src.tailers {
		tl.close()
	}
	entries, _ := os.ReadDir(ckpt)
	if len(entries) != 1 {
		t.Fatalf("checkpoint dir holds %d files, want 1 (no temporary file left)", len(entries))
	}
	var cp checkpoint
	data, _ := os.ReadFile(filepath.Join(ckpt, entries[0].Name()))
	if err := json.Unmarshal(data, &cp); err != nil || cp.Path != p || cp.Offset != int64(len(d)) {
		t.Fatalf("checkpoint %s: %+v %v; want offset %d in %s", data, cp, err, len(d), p)
	}
	if err := os.WriteFile(filepath.Join(ckpt, entries[0].Name()), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	fourth := newLogFixture(t, dir, ckpt, p)
	fourth.src.poll()
	e, eids := lines(t, "e", 0, 1)
	appendTo(t, p, e)
	fourth.src.poll()
	fourth.want(t, eids)
}

func TestLogMergesSeveralAPIServers(t *testing.T) {
	dir := t.TempDir()
	p0, p1 := filepath.Join(dir, "apiserver-0", "audit.log"), filepath.Join(dir, "apiserver-1", "audit.log")
	for _, p := range []string{p0, p1} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		appendTo(t, p, "")
	}
	f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p0, p1)
	f.src.poll()
	a, aids := lines(t, "a", 0, 3)
	b, bids := lines(t, "b", 0, 2)
	appendTo(t, p0, a)
	// The same request in both logs (a log shipped twice) is delivered once.
	appendTo(t, p1, b+line(t, "a-1"))
	f.src.poll()
	f.want(t, append(aids, bids...))
	if n := f.skipped(SkipDuplicate); n != 1 {
		t.Errorf("duplicates %v, want 1", n)
	}
	// Their checkpoints are two files.
	if entries, _ := os.ReadDir(filepath.Join(dir, "ckpt")); len(entries) != 2 {
		t.Errorf("%d checkpoints, want 2", len(entries))
	}
}

func TestLogSkipsMalformedAndHugeLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	appendTo(t, p, "")
	f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p)
	f.src.poll()
	huge := `{"kind":"Event","apiVersion":"audit.k8s.io/v1","userAgent":"` + strings.Repeat("x", 2*readChunk) + `"}` + "\n"
	appendTo(t, p, line(t, "ok-0")+"{not json\n\n"+huge[:readChunk/2])
	f.src.poll()
	appendTo(t, p, huge[readChunk/2:]+line(t, "ok-1")+`{"kind":"Event","apiVersion":"audit.k8s.io/v1","stage":"ResponseComplete","user":7}`+"\n")
	f.src.poll()
	f.want(t, []string{"ok-0", "ok-1"})
	if m, h := f.skipped(SkipMalformed), f.skipped(SkipTooLarge); m != 2 || h != 1 {
		t.Errorf("malformed %v, too large %v; want 2 and 1", m, h)
	}
}

func TestLogAppearingLaterIsReadFromItsStart(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	f := newLogFixture(t, dir, filepath.Join(dir, "ckpt"), p)
	f.src.poll()
	a, ids := lines(t, "a", 0, 2)
	appendTo(t, p, a)
	f.src.poll()
	f.want(t, ids)
}
