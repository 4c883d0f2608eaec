package scan_test

import (
	"os"
	"sync"
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
