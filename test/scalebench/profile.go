package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// rolloutProfileChunk is the length of each of the rollout's CPU profiles:
// its end is not known when it starts, and a profile's length is fixed
// when it is asked for, so the rollout gets consecutive ones (go tool
// pprof merges the files it is given). The last one ends at most this
// long after the rollout.
const rolloutProfileChunk = 30 * time.Second

// cpuProfiler fetches the coordinator's CPU profiles, which its
// --profiling serves on its metrics port, into --cpu-profile-dir. A nil
// cpuProfiler (no --cpu-profile-dir) fetches nothing. A profile that
// cannot be fetched is a warning: the figures are measured without it.
type cpuProfiler struct {
	base  string // http://host:port of the coordinator's metrics server
	dir   string
	nodes int
	chunk time.Duration
	warn  func(format string, args ...any)
}

func newCPUProfiler(dir, metricsAddr string, nodes int, warn func(format string, args ...any)) *cpuProfiler {
	if dir == "" {
		return nil
	}
	return &cpuProfiler{base: "http://" + metricsAddr, dir: dir, nodes: nodes, chunk: rolloutProfileChunk, warn: warn}
}

// profilePath is DIR/coordinator-PHASE-NODES.pprof, or, for the part-th
// (from 1) of consecutive profiles, DIR/coordinator-PHASE-NODES-PART.pprof.
func profilePath(dir, phase string, nodes, part int) string {
	if part == 0 {
		return filepath.Join(dir, fmt.Sprintf("coordinator-%s-%d.pprof", phase, nodes))
	}
	return filepath.Join(dir, fmt.Sprintf("coordinator-%s-%d-%d.pprof", phase, nodes, part))
}

// during profiles the next d, in whole seconds rounded up, in the
// background; wait returns once the profile is written or has failed.
func (p *cpuProfiler) during(ctx context.Context, phase string, d time.Duration) (wait func()) {
	if p == nil {
		return func() {}
	}
	seconds := max(1, int(math.Ceil(d.Seconds())))
	var wg sync.WaitGroup
	wg.Go(func() { p.fetch(ctx, seconds, profilePath(p.dir, phase, p.nodes, 0)) })
	return wg.Wait
}

// until profiles in consecutive chunks, the first at once, until stop is
// called; stop waits for the chunk under way, so that none is lost, and
// may be called again.
func (p *cpuProfiler) until(ctx context.Context, phase string) (stop func()) {
	if p == nil {
		return func() {}
	}
	done := make(chan struct{})
	seconds := max(1, int(math.Ceil(p.chunk.Seconds())))
	var wg sync.WaitGroup
	wg.Go(func() {
		for part := 1; ; part++ {
			if !p.fetch(ctx, seconds, profilePath(p.dir, phase, p.nodes, part)) {
				return // the next would fail as this one did; warned once
			}
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			default:
			}
		}
	})
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// fetch writes the profile of the next seconds to path, or warns; it
// reports whether it wrote it.
func (p *cpuProfiler) fetch(ctx context.Context, seconds int, path string) bool {
	if err := fetchCPUProfile(ctx, p.base, seconds, path); err != nil {
		if ctx.Err() == nil {
			p.warn("warning: no CPU profile %s: %v", path, err)
		}
		return false
	}
	return true
}

// profileSlack is how much longer than the profile itself its request may
// take: the coordinator writes it out once the time is up.
const profileSlack = 30 * time.Second

// fetchCPUProfile asks the coordinator's /debug/pprof/profile for the CPU
// profile of the next seconds and writes it to path.
func fetchCPUProfile(ctx context.Context, base string, seconds int, path string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+profileSlack)
	defer cancel()
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fmt.Errorf("%s answered %s: the coordinator serves no profiles (a --coordinator-binary without --profiling?)", url, resp.Status)
	default:
		return fmt.Errorf("%s answered %s: %.200s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return os.WriteFile(path, body, 0o644)
}
