package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/coordinator"
)

// The remediations compared are the documentation's two, then every other
// strategy of the coordinator's registry: a strategy added there is
// compared without a change here.
func TestRemediationsFollowTheRegistry(t *testing.T) {
	got := Remediations()
	if len(got) < 2 || got[0] != string(coordinator.Reboot) || got[1] != DeleteAllPods {
		t.Fatalf("Remediations() = %v, want reboot and delete-all-pods first", got)
	}
	for _, s := range coordinator.StrategyNames() {
		if n := slices.Index(got, s); n < 0 {
			t.Errorf("strategy %s of the registry is not compared: %v", s, got)
		} else if slices.Index(got[n+1:], s) >= 0 {
			t.Errorf("strategy %s is compared twice: %v", s, got)
		}
	}
	if len(got) != len(coordinator.StrategyNames())+1 {
		t.Errorf("Remediations() = %v: want the registry's %v and %s", got, coordinator.StrategyNames(), DeleteAllPods)
	}
	o := validOptions()
	o.Strategy = DeleteAllPods
	if err := o.Validate(); err != nil {
		t.Errorf("--strategy %s refused: %v", DeleteAllPods, err)
	}
}

func TestValidateRefusesCompareWithKeepOrOnce(t *testing.T) {
	o := validOptions()
	o.Compare, o.Keep, o.Once = true, true, true
	err := o.Validate()
	if err == nil || !strings.Contains(err.Error(), "--compare and --keep") || !strings.Contains(err.Error(), "--compare and --once") {
		t.Errorf("Validate() = %v, want both conflicts named", err)
	}
}

func comparisonRuns() []*Summary {
	return []*Summary{
		{Nodes: 2, Kubelet: KubeletSim, Strategy: "reboot", RolloutSeconds: 31.26, OK: true,
			Disruption: Disruption{PodsRestarted: 9, NodeReboots: 2, NodeSecondsOutOfService: 24.5},
			Apps:       map[AppKind]AppFigures{AppReloading: {Pods: 10, AuthFailures: 12, ErrorSeconds: 20.04, ErrorSecondsAfterGate: 15}, AppCaching: {Pods: 5, AuthFailures: 30, ErrorSeconds: 40, ErrorSecondsAfterGate: 33.3}}},
		{Nodes: 2, Kubelet: KubeletSim, Strategy: DeleteAllPods, RolloutSeconds: 9, OK: true,
			Disruption: Disruption{PodsRestarted: 6},
			Apps:       map[AppKind]AppFigures{AppReloading: {Pods: 8, AuthFailures: 4, ErrorSeconds: 7.5}, AppCaching: {Pods: 4, AuthFailures: 9, ErrorSeconds: 12}}},
		{Nodes: 2, Kubelet: KubeletSim, Strategy: "kubelet-restart", RolloutSeconds: 3.5,
			Failures:    []string{"2 app(s) still fail at the end"},
			appFailures: []string{"2 app(s) still fail at the end"},
			Disruption:  Disruption{NodeSecondsOutOfService: 3.2},
			Apps:        map[AppKind]AppFigures{AppReloading: {Pods: 4, AuthFailures: 4, ErrorSeconds: 5}, AppCaching: {Pods: 2, AuthFailures: 60, ErrorSeconds: 70, FailingAtEnd: 2}}},
		{Nodes: 2, Kubelet: KubeletSim, Strategy: "pod-restart", RolloutSeconds: 12,
			Failures:   []string{"nodes left cordoned: worker-1"},
			Disruption: Disruption{PodsRestarted: 6, NodeSecondsOutOfService: 8},
			Apps:       map[AppKind]AppFigures{AppReloading: {Pods: 8}, AppCaching: {Pods: 4}}},
	}
}

// The table has one column per remediation, in the order they ran, and a
// row per figure the comparison names.
func TestComparisonTable(t *testing.T) {
	c := &Comparison{Runs: comparisonRuns(), TrustWindow: 5 * time.Minute}
	var b strings.Builder
	c.Print(&b)
	got := b.String()
	want := `
Comparison: the same issuer change on 2 nodes (kubelet: sim), trust window 5m0s
                                reboot  delete-all-pods  kubelet-restart  pod-restart
  pods restarted                9       6                0                6
  node reboots                  2       0                0                0
  node-seconds out of service   24.5    0.0              3.2              8.0
  apps reloading: errorSeconds  20.0    7.5              5.0              0.0
    after the gate opened       15.0    0.0              0.0              0.0
  apps reloading: authFailures  12      4                4                0
  apps caching: errorSeconds    40.0    12.0             70.0             0.0
    after the gate opened       33.3    0.0              0.0              0.0
  apps caching: authFailures    30      9                60               0
  apps failing at the end       0       0                2                0
  gate open to done (s)         31.3    9.0              3.5              12.0
  result                        OK      OK               apps fail        FAILED
`
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	// Without apps, no app row.
	c = &Comparison{Runs: []*Summary{{Nodes: 1, Kubelet: KubeletReal, Strategy: "reboot", OK: true}}}
	b.Reset()
	c.Print(&b)
	if strings.Contains(b.String(), "apps reloading") || !strings.Contains(b.String(), "apps failing at the end") {
		t.Errorf("table without apps:\n%s", b.String())
	}
}

// --summary-json with --compare is {"runs": [...]}, each entry a run's
// summary with the disruption figures beside the rest.
func TestComparisonJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	if err := (&Comparison{Runs: comparisonRuns()[:2], TrustWindow: time.Minute}).WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string][]map[string]any
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if len(top) != 1 || len(top["runs"]) != 2 {
		t.Fatalf("want {\"runs\": [two summaries]}, got %s", data)
	}
	r := top["runs"][0]
	if r["strategy"] != "reboot" || r["podsRestarted"] != 9.0 || r["nodeReboots"] != 2.0 || r["nodeSecondsOutOfService"] != 24.5 {
		t.Errorf("first run: %v", r)
	}
	if top["runs"][1]["strategy"] != DeleteAllPods {
		t.Errorf("second run: %v", top["runs"][1])
	}
	if err := (&Comparison{}).WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); strings.TrimSpace(string(data)) != "{\n  \"runs\": []\n}" {
		t.Errorf("no runs: %s", data)
	}
}

// The error time after the gate opened is the total less what every app,
// ended since or not, had spent unable to authenticate when it opened.
func TestErrorsAfterGate(t *testing.T) {
	atGate := []AppReport{{Kind: AppReloading, appStats: appStats{ErrorTime: 3 * time.Second}}, {Kind: AppReloading, appStats: appStats{ErrorTime: 2 * time.Second}},
		{Kind: AppCaching, appStats: appStats{ErrorTime: 4 * time.Second}}}
	figs := map[AppKind]AppFigures{AppReloading: {ErrorSeconds: 12.5}, AppCaching: {ErrorSeconds: 4}}
	errorsAfterGate(figs, atGate)
	if figs[AppReloading].ErrorSecondsAfterGate != 7.5 || figs[AppCaching].ErrorSecondsAfterGate != 0 {
		t.Errorf("after the gate: %+v", figs)
	}
}
