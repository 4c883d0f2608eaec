package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// memory holds /proc/PID/status fields in KiB: the last sample of each
// (last) and the largest (peak).
type memory struct{ last, peak map[string]int }

func (m memory) sample(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmHWM" && k != "RssAnon" && k != "RssFile" && k != "RssShmem" && k != "VmRSS") {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		m.last[k] = n
		m.peak[k] = max(m.peak[k], n)
	}
}

func measureAgent(bin, root string, scans int) error {
	bins, err := controlplane.FindBinaries("")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Config{Binaries: bins})
	if err != nil {
		return err
	}
	defer cp.Stop()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	kubeconfig := filepath.Join(cp.Dir(), "kubeconfig")
	if err := controlplane.WriteKubeconfig(kubeconfig, cp.AdminConfig()); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()

	cmd := exec.Command(bin, "--node-name=worker-1", "--kubelet-root="+root, "--kubeconfig="+kubeconfig,
		"--interval=1s", "--metrics-bind-address="+addr, "--log-format=json",
		"--state-dir="+filepath.Join(cp.Dir(), "agent-state"))
	cmd.Stdout = io.Discard
	cmd.Stderr = io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	mem := memory{last: map[string]int{}, peak: map[string]int{}}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var done int
	var sum float64
	for done < scans {
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent ran %d of %d scans before the deadline", done, scans)
		case <-tick.C:
		}
		mem.sample(cmd.Process.Pid)
		done, sum = scrape("http://" + addr + "/metrics")
	}
	mem.sample(cmd.Process.Pid)
	mib := func(kib int) float64 { return float64(kib) / 1024 }
	fmt.Printf("%s, %d scans of the tree at --interval=1s: mean scan %.0f ms\n", filepath.Base(bin), done, 1000*sum/float64(done))
	fmt.Printf("  command: %s\n", strings.Join(cmd.Args, " "))
	fmt.Printf("  resident now: VmRSS %.1f MiB = RssAnon %.1f MiB (private) + RssFile %.1f MiB (the binary's shared, evictable pages) + RssShmem %.1f MiB (goal: VmRSS < 30 MiB)\n",
		mib(mem.last["VmRSS"]), mib(mem.last["RssAnon"]), mib(mem.last["RssFile"]), mib(mem.last["RssShmem"]))
	fmt.Printf("  peaks: VmHWM %.1f MiB, RssAnon %.1f MiB, RssFile %.1f MiB\n", mib(mem.peak["VmHWM"]), mib(mem.peak["RssAnon"]), mib(mem.peak["RssFile"]))
	return nil
}

// scrape reads the scan count and total scan seconds from /metrics.
func scrape(url string) (int, float64) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	var count int
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "tokenroll_scan_duration_seconds_count "); ok {
			count, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(line, "tokenroll_scan_duration_seconds_sum "); ok {
			sum, _ = strconv.ParseFloat(v, 64)
		}
	}
	return count, sum
}
