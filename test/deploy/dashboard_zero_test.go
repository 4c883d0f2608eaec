package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dashboardHealthy are dashboard queries ("panel title/refId") that could
// return nothing on a healthy cluster, and what they must return there:
// nothing shows "No data", which reads as broken, not as none.
var dashboardHealthy = map[string][]string{
	"Agents reporting/A":      {`{} 2`},
	"Agents reporting/B":      {`{} 0`},
	"Stale tokens per node/A": {`{node="worker-1"} 0`, `{node="worker-2"} 0`},
}

// TestDashboardZeroes evaluates those queries with promtool over the
// series of a healthy cluster (two agents, every token fresh) and, for
// the agents, over none at all.
func TestDashboardZeroes(t *testing.T) {
	var d struct {
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatal(err)
	}
	exprs := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs[p.Title+"/"+tg.RefID] = strings.NewReplacer(`"$node"`, `".*"`, `"$namespace"`, `".*"`).Replace(tg.Expr)
		}
	}
	var tests strings.Builder
	tests.WriteString(`rule_files: []
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'up{job="tokenroll-agent",instance="10.0.0.1:8080",node="worker-1"}'
    values: '1x5'
  - series: 'up{job="tokenroll-agent",instance="10.0.0.2:8080",node="worker-2"}'
    values: '1x5'
  - series: 'tokenroll_tokens{job="tokenroll-agent",instance="10.0.0.1:8080",node="worker-1",namespace="apps",state="fresh"}'
    values: '3x5'
  - series: 'tokenroll_tokens{job="tokenroll-agent",instance="10.0.0.2:8080",node="worker-2",namespace="apps",state="fresh"}'
    values: '2x5'
  promql_expr_test:
`)
	for name, want := range dashboardHealthy {
		expr, ok := exprs[name]
		if !ok {
			t.Fatalf("the dashboard has no query %s", name)
		}
		writeExprTest(&tests, expr, want)
	}
	// No agent at all: both counts are 0.
	tests.WriteString("- interval: 1m\n  input_series: []\n  promql_expr_test:\n")
	writeExprTest(&tests, exprs["Agents reporting/A"], []string{`{} 0`})
	writeExprTest(&tests, exprs["Agents reporting/B"], []string{`{} 0`})

	file := filepath.Join(t.TempDir(), "dashboard.test.yaml")
	if err := os.WriteFile(file, []byte(tests.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", runTool(t, "promtool", "test", "rules", file))
}

func writeExprTest(b *strings.Builder, expr string, want []string) {
	q, _ := json.Marshal(expr)
	fmt.Fprintf(b, "  - expr: %s\n    eval_time: 4m\n    exp_samples:\n", q)
	for _, w := range want {
		labels, value, _ := strings.Cut(w, " ")
		fmt.Fprintf(b, "    - labels: '%s'\n      value: %s\n", labels, value)
	}
}
