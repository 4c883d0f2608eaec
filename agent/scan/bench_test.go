package scan_test

import (
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/agent/scan/scantest"
)

var (
	benchOnce sync.Once
	benchTree *scantest.Tree
	benchErr  error
	benchNow  = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
)

// tree is 10,000 token files in 3,000 pod directories, built once per run.
func tree(b *testing.B) *scantest.Tree {
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tokenroll-bench-")
		if err != nil {
			benchErr = err
			return
		}
		benchTree, benchErr = scantest.Build(dir, 3000, 10000, benchNow)
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchTree
}

// BenchmarkReadOnly is the baseline: read the same files, knowing their
// paths, and do nothing with them.
func BenchmarkReadOnly(b *testing.B) {
	t := tree(b)
	b.ReportAllocs()
	for b.Loop() {
		for _, f := range t.Files {
			if _, err := os.ReadFile(f); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(t.Files)), "files/op")
}

// BenchmarkScan walks, reads safely, parses and judges the same tree.
func BenchmarkScan(b *testing.B) {
	t := tree(b)
	s := scan.NewScanner()
	b.ReportAllocs()
	for b.Loop() {
		r, err := s.Scan(scan.Options{Root: t.Root, Now: benchNow, ExpectedIssuer: "https://kubernetes.default.svc", Grace: 5 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Tokens) != t.Tokens {
			b.Fatalf("scanned %d tokens, want %d", len(r.Tokens), t.Tokens)
		}
	}
	b.ReportMetric(float64(t.Tokens), "tokens/op")
}

// defaultInterval is the agent's default time between scans (its --interval).
const defaultInterval = 30 * time.Second

// cpuTime is the CPU time this process has used, in all its threads: the
// garbage collector's work on other cores counts too.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScanNode110x3 scans a node at the kubelet's default pod limit,
// 110 pods with three projected tokens each, and reports what one scan
// costs as a share of one core at the agent's default interval, by wall
// time (%core@30s) and by the process's CPU time (cpu-%core@30s). The goal
// is under 1%.
func BenchmarkScanNode110x3(b *testing.B) {
	t, err := scantest.Build(b.TempDir(), 110, 330, benchNow)
	if err != nil {
		b.Fatal(err)
	}
	s := scan.NewScanner()
	opts := scan.Options{Root: t.Root, Now: benchNow, ExpectedIssuer: "https://kubernetes.default.svc", Grace: 5 * time.Minute}
	b.ReportAllocs()
	cpu := cpuTime(b)
	for b.Loop() {
		r, err := s.Scan(opts)
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Tokens) != t.Tokens {
			b.Fatalf("scanned %d tokens, want %d", len(r.Tokens), t.Tokens)
		}
	}
	cpu = cpuTime(b) - cpu
	share := func(d time.Duration) float64 { return 100 * float64(d) / float64(b.N) / float64(defaultInterval) }
	b.ReportMetric(float64(t.Tokens), "tokens/op")
	b.ReportMetric(share(b.Elapsed()), "%core@30s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(share(cpu), "cpu-%core@30s")
}
