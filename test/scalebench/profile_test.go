package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/metrics"
)

func TestProfilePath(t *testing.T) {
	for _, c := range []struct {
		phase       string
		nodes, part int
		want        string
	}{
		{"idle", 250, 0, "/p/coordinator-idle-250.pprof"},
		{"rollout", 1000, 3, "/p/coordinator-rollout-1000-3.pprof"},
	} {
		if got := profilePath("/p", c.phase, c.nodes, c.part); got != c.want {
			t.Errorf("profilePath(%q, %d, %d) = %q, want %q", c.phase, c.nodes, c.part, got, c.want)
		}
	}
}

// fakeProfiles serves /debug/pprof/profile as the coordinator's
// --profiling does, answering at once with the seconds asked for and the
// request's number.
type fakeProfiles struct {
	mu      sync.Mutex
	seconds []string
	served  chan int
}

func (f *fakeProfiles) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/debug/pprof/profile" {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	f.seconds = append(f.seconds, r.URL.Query().Get("seconds"))
	k := len(f.seconds)
	f.mu.Unlock()
	fmt.Fprintf(w, "profile %d", k)
	select {
	case f.served <- k:
	default:
	}
}

func newFake(t *testing.T) (*fakeProfiles, string) {
	f := &fakeProfiles{served: make(chan int, 1)}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, strings.TrimPrefix(srv.URL, "http://")
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The steady state's profile lasts the window, in whole seconds rounded
// up, and is written as coordinator-idle-NODES.pprof.
func TestIdleProfile(t *testing.T) {
	f, addr := newFake(t)
	dir := t.TempDir()
	p := newCPUProfiler(dir, addr, 50, func(format string, args ...any) { t.Errorf(format, args...) })
	p.during(context.Background(), "idle", 600*time.Second+time.Millisecond)()
	if got := readString(t, filepath.Join(dir, "coordinator-idle-50.pprof")); got != "profile 1" {
		t.Errorf("coordinator-idle-50.pprof holds %q", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seconds) != 1 || f.seconds[0] != "601" {
		t.Errorf("asked for seconds=%q, want one profile of 601", f.seconds)
	}
}

// The rollout's profiles follow one another until stop, each written, the
// one under way when stop is called included.
func TestRolloutProfiles(t *testing.T) {
	f, addr := newFake(t)
	dir := t.TempDir()
	p := newCPUProfiler(dir, addr, 50, func(format string, args ...any) { t.Errorf(format, args...) })
	p.chunk = 1500 * time.Millisecond
	stop := p.until(context.Background(), "rollout")
	for k := 0; k < 3; {
		k = <-f.served
	}
	stop()
	stop() // a second stop, as the deferred one on an error path, is harmless
	f.mu.Lock()
	served := len(f.seconds)
	seconds := f.seconds
	f.mu.Unlock()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != served {
		t.Errorf("%d profiles served, %d written: %q", served, len(files), files)
	}
	for k := 1; k <= served; k++ {
		if got := readString(t, filepath.Join(dir, fmt.Sprintf("coordinator-rollout-50-%d.pprof", k))); got != fmt.Sprintf("profile %d", k) {
			t.Errorf("part %d holds %q", k, got)
		}
		if seconds[k-1] != "2" {
			t.Errorf("part %d asked for seconds=%s, want 2", k, seconds[k-1])
		}
	}
}

// A profile that cannot be fetched is a warning, and no file; the
// rollout's chunks stop after the first failure.
func TestProfileFailureWarns(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	dir := t.TempDir()
	var warnings []string
	warn := func(format string, args ...any) { warnings = append(warnings, fmt.Sprintf(format, args...)) }
	p := newCPUProfiler(dir, strings.TrimPrefix(srv.URL, "http://"), 50, warn)
	p.during(context.Background(), "idle", time.Second)()
	p.until(context.Background(), "rollout")()
	if len(warnings) != 2 || !strings.Contains(warnings[0], "coordinator-idle-50.pprof") || !strings.Contains(warnings[0], "serves no profiles") ||
		!strings.Contains(warnings[1], "coordinator-rollout-50-1.pprof") {
		t.Errorf("warnings %q, want one naming coordinator-idle-50.pprof and one the rollout's first part", warnings)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 0 {
		t.Errorf("files written: %q", files)
	}
	// Without --cpu-profile-dir nothing is fetched.
	none := newCPUProfiler("", "127.0.0.1:1", 50, warn)
	none.during(context.Background(), "idle", time.Second)()
	none.until(context.Background(), "rollout")()
	if len(warnings) != 2 {
		t.Errorf("a profiler without a directory warned: %q", warnings[2:])
	}
}

// The URL asked for is the one the coordinator's --profiling serves, and
// what it answers is a CPU profile (gzipped protocol buffers).
func TestFetchesACoordinatorsProfile(t *testing.T) {
	s, err := metrics.NewServer("127.0.0.1:0", metrics.NewRegistry("coordinator"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.EnableProfiling()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	path := filepath.Join(t.TempDir(), "p.pprof")
	if err := fetchCPUProfile(ctx, "http://"+s.Addr(), 1, path); err != nil {
		t.Fatal(err)
	}
	if b := readString(t, path); !strings.HasPrefix(b, "\x1f\x8b") {
		t.Errorf("%s is not gzipped: %.20q", path, b)
	}
}
