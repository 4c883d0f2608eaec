// Command scanbench measures a scan of a large node: it builds a kubelet
// root of 10,000 token files in 3,000 pod directories, times reading the
// same files as a baseline and scanning them in-process, then runs the real
// `tokenroll scan` binary on it and reports the child's peak resident memory.
//
//	make build && go run ./test/scanbench -bin-dir bin [-agent]
//
// Without -bin-dir it builds tokenroll and tokenroll-agent itself, as make
// build does. With -agent it also starts a real control plane (make
// controlplane) and runs tokenroll-agent on the tree for -agent-scans scans
// at a one-second interval, sampling the agent's resident memory, private
// (anonymous) and file-backed, from /proc.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/agent/scan/scantest"
	"github.com/tokenroll/tokenroll/sandbox/programs"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scanbench:", err)
		os.Exit(1)
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

func run() error {
	pods := flag.Int("pods", 3000, "pod directories")
	tokens := flag.Int("tokens", 10000, "token files")
	rounds := flag.Int("rounds", 7, "timed rounds of each")
	binDir := flag.String("bin-dir", "", "directory holding tokenroll and tokenroll-agent, as make build leaves them in bin/ (default: build them into a temporary directory)")
	withAgent := flag.Bool("agent", false, "also run tokenroll-agent against a real control plane and measure its memory")
	agentScans := flag.Int("agent-scans", 20, "scans the agent runs before it is measured")
	flag.Parse()

	dir, err := os.MkdirTemp("", "tokenroll-scanbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	now := time.Now().UTC()
	tree, err := scantest.Build(dir, *pods, *tokens, now)
	if err != nil {
		return err
	}
	fmt.Printf("tree: %d token files (%d files read) in %d pod directories\n", tree.Tokens, len(tree.Files), *pods)

	var base, scans []time.Duration
	s := scan.NewScanner()
	for range *rounds {
		start := time.Now()
		for _, f := range tree.Files {
			if _, err := os.ReadFile(f); err != nil {
				return err
			}
		}
		base = append(base, time.Since(start))
		start = time.Now()
		r, err := s.Scan(scan.Options{Root: dir, Now: now, ExpectedIssuer: "https://kubernetes.default.svc", Grace: 5 * time.Minute})
		if err != nil {
			return err
		}
		scans = append(scans, time.Since(start))
		if len(r.Tokens) != tree.Tokens {
			return fmt.Errorf("scanned %d tokens, want %d", len(r.Tokens), tree.Tokens)
		}
	}
	b, sc := median(base), median(scans)
	fmt.Printf("baseline read: median %v over %d rounds\n", b.Round(time.Millisecond), *rounds)
	fmt.Printf("scan:          median %v over %d rounds (%.2fx the baseline; goal <= 2x)\n", sc.Round(time.Millisecond), *rounds, float64(sc)/float64(b))

	bins, cleanup, err := binaries(*binDir)
	if err != nil {
		return err
	}
	defer cleanup()
	bin := bins[0]
	cmd := exec.Command(bin, "scan", "--kubelet-root", dir, "--issuer", "https://kubernetes.default.svc", "-o", "json")
	cmd.Stdout = io.Discard
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s scan: %w", bin, err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Printf("tokenroll scan -o json: peak resident memory %.1f MiB (anonymous and file-backed)\n", float64(ru.Maxrss)/1024)
	if *withAgent {
		return measureAgent(bins[1], dir, *agentScans)
	}
	return nil
}

// binaries finds tokenroll and tokenroll-agent in dir, or builds them as
// make build does (static, stripped, with its build tags) into a temporary
// directory that cleanup removes.
func binaries(dir string) (paths []string, cleanup func(), err error) {
	cleanup = func() {}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tokenroll-scanbench-bin-"); err != nil {
			return nil, nil, err
		}
		tmp := dir
		cleanup = func() { _ = os.RemoveAll(tmp) }
		fmt.Printf("building %s and %s into %s\n", programs.CLI, programs.Agent, dir)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		if err := programs.Build(ctx, dir, true, programs.CLI, programs.Agent); err != nil {
			cleanup()
			return nil, nil, err
		}
	}
	paths, err = programs.Find(dir, programs.CLI, programs.Agent)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return paths, cleanup, nil
}
