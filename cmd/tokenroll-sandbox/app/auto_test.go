package app

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The default strategy, auto, on the whole scenario: each node's kubelet
// restarts, and the pods evicted are exactly the caching apps' (one legacy
// pod per node, which app detection found failing), as the coordinators'
// own record of their evictions says; no node reboots, and every app,
// reloading or caching, authenticates at the end. The run judged is the
// auto run of TestSandboxCompare's --compare (two nodes, one API server):
// the same cluster, issuer change and apps a run of its own would start.
func TestSandboxAuto(t *testing.T) {
	t.Parallel() // see TestSandboxScenario
	dir, code, out, stderr := compareRun(t)
	data, err := os.ReadFile(filepath.Join(dir, "compare.json"))
	if err != nil {
		t.Fatalf("sandbox --compare: exit %d, no summaries (%v)\nstdout:\n%s\nstderr:\n%s", code, err, out, stderr)
	}
	type summary struct {
		Strategy       string         `json:"strategy"`
		ActionsPerNode map[string]int `json:"actionsPerNode"`
		Apps           map[string]struct {
			Pods         int `json:"pods"`
			FailingAtEnd int `json:"failingAtEnd"`
		} `json:"apps"`
		OK bool `json:"ok"`
	}
	var cmp struct {
		Runs []json.RawMessage `json:"runs"`
	}
	if err := json.Unmarshal(data, &cmp); err != nil {
		t.Fatal(err)
	}
	var sum summary
	for _, raw := range cmp.Runs {
		var s summary
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		if s.Strategy == "auto" {
			sum, data = s, raw
		}
	}
	if sum.Strategy == "" {
		t.Fatalf("--compare ran no auto run: %s", data)
	}
	// Two reloading pods per node, never restarted; one caching pod per
	// node, restarted once.
	if !sum.OK || sum.Strategy != "auto" || sum.Apps["reloading"].Pods != 4 || sum.Apps["reloading"].FailingAtEnd != 0 ||
		sum.Apps["caching"].Pods != 4 || sum.Apps["caching"].FailingAtEnd != 0 {
		t.Errorf("summary %s", data)
	}
	out = compareSection(out, "auto")
	var evicted, actions []string
	logs, _ := filepath.Glob(filepath.Join(dir, "sb", "auto", "logs", "coordinator-*.log"))
	for _, l := range logs {
		f, err := os.Open(l)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e struct{ Msg, Node, Pods, Action string }
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			switch e.Msg {
			case "evicting pods whose apps present stale credentials or fail to authenticate":
				evicted = append(evicted, e.Node+": "+e.Pods)
			case "action requested":
				actions = append(actions, e.Node+": "+e.Action)
			}
		}
		_ = f.Close()
	}
	slices.Sort(evicted)
	slices.Sort(actions)
	if len(evicted) != 2 || !strings.HasPrefix(evicted[0], "worker-1: apps/legacy-") || !strings.HasPrefix(evicted[1], "worker-2: apps/legacy-") ||
		strings.Contains(strings.Join(evicted, " "), ", ") {
		t.Errorf("evictions %q; want the one legacy pod of each node", evicted)
	}
	if strings.Join(actions, ",") != "worker-1: kubelet-restart,worker-2: kubelet-restart" {
		t.Errorf("actions %q; want one kubelet restart per node, no reboot", actions)
	}
	for _, n := range []string{"worker-1", "worker-2"} {
		if sum.ActionsPerNode[n] != 1 {
			t.Errorf("node %s: %d actions; want 1", n, sum.ActionsPerNode[n])
		}
	}
	for _, want := range []string{"worker-1: acting (auto: kubelet-restart)", "worker-2: apps: kubelet-restart verified; watching its apps",
		"worker-1: done: apps verified", "1 pod evicted"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not show %q:\n%s", want, out)
		}
	}
}
