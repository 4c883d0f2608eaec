package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/fake"
	restfake "k8s.io/client-go/rest/fake"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
)

// The sources and what is generated from them.
const (
	rulesFile     = "deploy/prometheus/tokenroll.rules.yaml"
	rulesTestFile = "deploy/prometheus/tokenroll.rules.test.yaml"
	dashboardFile = "deploy/grafana/tokenroll-dashboard.json"
	updateEnv     = "TOKENROLL_UPDATE_GENERATED"
)

const prometheusRuleHeader = `# Generated from deploy/prometheus/tokenroll.rules.yaml by
# TOKENROLL_UPDATE_GENERATED=1 go test ./test/deploy/ -run TestGenerated; do not edit.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tokenroll
  namespace: tokenroll
  labels:
    app.kubernetes.io/name: tokenroll
    app.kubernetes.io/instance: tokenroll
spec:
`

// TestGenerated checks that the PrometheusRule and the copies in the Helm
// chart and the kustomize component match their sources; with
// TOKENROLL_UPDATE_GENERATED=1 it rewrites them.
func TestGenerated(t *testing.T) {
	rules := readFile(t, rulesFile)
	dashboard := readFile(t, dashboardFile)
	var indented bytes.Buffer
	indented.WriteString(prometheusRuleHeader)
	for _, line := range strings.SplitAfter(string(rules), "\n") {
		if strings.TrimSpace(line) != "" {
			indented.WriteString("  ")
		}
		indented.WriteString(line)
	}
	want := map[string][]byte{
		"deploy/kustomize/components/monitoring/prometheusrule.yaml":      indented.Bytes(),
		"deploy/kustomize/components/monitoring/tokenroll-dashboard.json": dashboard,
		"deploy/helm/tokenroll/files/tokenroll.rules.yaml":                rules,
		"deploy/helm/tokenroll/files/tokenroll-dashboard.json":            dashboard,
	}
	for rel, content := range want {
		if os.Getenv(updateEnv) != "" {
			if err := os.WriteFile(repoPath(rel), content, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(repoPath(rel))
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s is not up to date with its source (err %v); run %s=1 go test ./test/deploy/ -run TestGenerated", rel, err, updateEnv)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTestFile struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string            `json:"alertname"`
			ExpAlerts []json.RawMessage `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

var anchorRe = regexp.MustCompile(`(?m)^#+\s+(\S.*)$`)

// readmeAnchors are the GitHub anchors of deploy/README.md's headings.
func readmeAnchors(t testing.TB) map[string]bool {
	anchors := map[string]bool{}
	for _, m := range anchorRe.FindAllStringSubmatch(string(readFile(t, "deploy/README.md")), -1) {
		a := strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				return r
			case r >= 'A' && r <= 'Z':
				return r + 'a' - 'A'
			case r == ' ':
				return '-'
			}
			return -1
		}, strings.TrimSpace(m[1]))
		anchors[a] = true
	}
	return anchors
}

// TestAlerts: every alert has a severity, a summary, a description and a
// runbook link to a section of deploy/README.md, and promtool's test file
// has a case where it fires and one where it does not.
func TestAlerts(t *testing.T) {
	var rf ruleFile
	if err := utilyaml.Unmarshal(readFile(t, rulesFile), &rf); err != nil {
		t.Fatal(err)
	}
	var tf ruleTestFile
	if err := utilyaml.Unmarshal(readFile(t, rulesTestFile), &tf); err != nil {
		t.Fatal(err)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	anchors := readmeAnchors(t)
	const runbookBase = "https://github.com/tokenroll/tokenroll/blob/main/deploy/README.md#"
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: no summary or description", r.Alert)
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
			if !ok || anchor != strings.ToLower(r.Alert) || !anchors[anchor] {
				t.Errorf("%s: runbook_url %q, want %s%s with that section in deploy/README.md", r.Alert, r.Annotations["runbook_url"], runbookBase, strings.ToLower(r.Alert))
			}
			if !firing[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: %s needs a case where it fires (%v) and one where it does not (%v)", r.Alert, rulesTestFile, firing[r.Alert], quiet[r.Alert])
			}
		}
	}
	// The reasons the alerts name are ones the coordinator gives.
	for _, r := range []string{coordinator.HaltNodeNotBack} {
		if !strings.Contains(string(readFile(t, rulesFile)), `reason="`+r+`"`) {
			t.Errorf("no alert on halts for %s", r)
		}
	}
	for _, want := range []string{"TokenrollTokensOverdue", "TokenrollTokensExpired", "TokenrollOldIssuerTokensTrustEnding",
		"TokenrollRolloutHalted", "TokenrollNodeNotBack", "TokenrollNoLeader", "TokenrollGateClosedTooLong", "TokenrollAgentNotReporting",
		"TokenrollRolloutStalled", "TokenrollNodeUnresolved", "TokenrollUntrustedIssuerTokens", "TokenrollRolloutWillMissTrustDeadline"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
}

// describeRecorder is a prometheus.Registerer that keeps the names of what
// is registered with it.
type describeRecorder struct{ names map[string]bool }

var fqNameRe = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *describeRecorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqNameRe.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *describeRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *describeRecorder) Unregister(prometheus.Collector) bool { return true }

// knownMetrics are the names of every tokenroll metric, read from what the
// agent and the coordinator register.
func knownMetrics(t testing.TB) map[string]bool {
	rec := &describeRecorder{names: map[string]bool{"tokenroll_build_info": true}}
	if _, err := agent.New(agent.Config{NodeName: "n", KubeletRoot: t.TempDir(), Client: fake.NewClientset().CoreV1().Nodes(), Discovery: &restfake.RESTClient{},
		Interval: 1, IssuerRefresh: 1, Registry: rec}); err != nil {
		t.Fatal(err)
	}
	if _, err := actions.NewHandler(actions.HandlerConfig{NodeName: "n", Executor: actions.DryRun{}, StateDir: t.TempDir(),
		MaxRequestAge: 1, Reporter: actions.NodeReporter{}, Registry: rec}); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	gate, err := coordinator.NewGate(context.Background(), "none", client, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := coordinator.New(coordinator.Config{Client: client, Rollouts: apifake.NewSimpleClientset(), Namespace: "tokenroll", Gate: gate, Strategy: "kubelet-restart",
		MaxUnavailable: intstr.FromInt32(1), DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute,
		IssuerRefresh: time.Minute, Registry: rec, Apps: new(apps.DefaultOptions())}); err != nil {
		t.Fatal(err)
	}
	return rec.names
}

var metricRe = regexp.MustCompile(`\btokenroll_[a-z0-9_]+`)

// checkExpr reports tokenroll metric names in expr that no component exports.
func checkExpr(known map[string]bool, expr string) []string {
	var unknown []string
	for _, m := range metricRe.FindAllString(expr, -1) {
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suffix); ok && known[b] {
				base = b
			}
		}
		if !known[base] {
			unknown = append(unknown, m)
		}
	}
	return unknown
}

// TestRuleMetrics: the alerts use only metrics tokenroll exports.
func TestRuleMetrics(t *testing.T) {
	known := knownMetrics(t)
	var rf ruleFile
	if err := utilyaml.Unmarshal(readFile(t, rulesFile), &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if u := checkExpr(known, r.Expr); len(u) > 0 {
				t.Errorf("%s uses metrics nothing exports: %v", r.Alert, u)
			}
		}
	}
}

type dashboardPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// TestDashboard: the dashboard is valid JSON with unique panel IDs, panels
// inside the 24-column grid, every query on the chosen data source, and only
// metrics tokenroll exports; it shows what the issue asks for.
func TestDashboard(t *testing.T) {
	var d struct {
		UID        string           `json:"uid"`
		Title      string           `json:"title"`
		Panels     []dashboardPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(bytes.NewReader(readFile(t, dashboardFile)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("no uid or title")
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "node", "namespace"} {
		if !slices.Contains(vars, want) {
			t.Errorf("no template variable %s (have %v)", want, vars)
		}
	}
	known := knownMetrics(t)
	ids := map[int]bool{}
	var all strings.Builder
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: no targets or not on ${datasource}", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || refs[tg.RefID] {
				t.Errorf("panel %q: empty query or refId %s twice", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if u := checkExpr(known, tg.Expr); len(u) > 0 {
				t.Errorf("panel %q uses metrics nothing exports: %v", p.Title, u)
			}
			fmt.Fprintln(&all, tg.Expr)
		}
	}
	for _, want := range []string{"tokenroll_tokens", "tokenroll_rollout_phase", "tokenroll_rollout_nodes", "tokenroll_gate_open",
		"tokenroll_node_step_duration_seconds_bucket", "by (node, namespace, state)", "tokenroll_rollout_estimated_completion_timestamp_seconds",
		"tokenroll_rollout_max_unavailable_nodes"} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// TestPromtool checks the rule file with promtool and runs its unit tests.
func TestPromtool(t *testing.T) {
	out := runTool(t, "promtool", "check", "rules", rulesFile)
	t.Logf("%s", out)
	out = runTool(t, "promtool", "test", "rules", rulesTestFile)
	t.Logf("%s", out)
}
