package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/protocol"
)

// PrometheusBinEnv names the environment variable that gives the prometheus
// binary when --prometheus-bin is empty; make sandbox sets it to what
// test/deploy/tools/build.sh built.
const PrometheusBinEnv = "TOKENROLL_PROMETHEUS_BIN"

// DefaultPrometheusRules is the alert rule file --prometheus loads, the one
// the Helm chart and the kustomize component ship, relative to the
// repository's top directory (where make sandbox runs).
const DefaultPrometheusRules = "deploy/prometheus/tokenroll.rules.yaml"

// The sandbox's Prometheus scrapes and evaluates every second, and each
// alert's for: lasts ForDivisor times less than in the shipped rules (15m
// becomes 15s), so that a run of a minute or two shows the alerts; the
// expressions, which measure real time (a scan 10 minutes old, a trust
// window 6 hours from its end), stay as they ship.
const (
	promInterval = time.Second
	ForDivisor   = 60
)

// ShortenRules rewrites a Prometheus rule file so that every rule's for:
// lasts ForDivisor times less. Nothing else changes: every other key and
// value is carried over as it is (the layout may differ).
func ShortenRules(src []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("parsing the rule file: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("the rule file is not one YAML document")
	}
	for _, g := range mappingValue(doc.Content[0], "groups").seq() {
		for _, r := range mappingValue(g, "rules").seq() {
			f := mappingValue(r, "for")
			if f.Node == nil {
				continue
			}
			d, err := model.ParseDuration(f.Value)
			if err != nil {
				return nil, fmt.Errorf("rule %q: for: %w", mappingValue(r, "alert").value(), err)
			}
			f.Value = model.Duration(time.Duration(d) / ForDivisor).String()
			f.Style = 0
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type yamlNode struct{ *yaml.Node }

// mappingValue is the value of key in mapping n (nil when none).
func mappingValue(n *yaml.Node, key string) yamlNode {
	if n == nil || n.Kind != yaml.MappingNode {
		return yamlNode{}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return yamlNode{n.Content[i+1]}
		}
	}
	return yamlNode{}
}

func (n yamlNode) seq() []*yaml.Node {
	if n.Node == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	return n.Content
}

func (n yamlNode) value() string {
	if n.Node == nil {
		return ""
	}
	return n.Value
}

// findPrometheus returns the prometheus binary and the rule file, or an
// error that says how to get them, before the sandbox starts anything.
func findPrometheus(bin, rules string) (string, string, error) {
	if bin == "" {
		bin = os.Getenv(PrometheusBinEnv)
	}
	var errs []error
	if bin == "" {
		errs = append(errs, fmt.Errorf("--prometheus needs the prometheus binary: run it as make sandbox ARGS='--prometheus ...', or `make deploy-tools` and pass --prometheus-bin=$(bash test/deploy/tools/build.sh)/prometheus (or set $%s)", PrometheusBinEnv))
	} else if err := executables(bin); err != nil {
		errs = append(errs, fmt.Errorf("--prometheus-bin: %w; `make deploy-tools` builds it", err))
	}
	if st, err := os.Stat(rules); err != nil {
		errs = append(errs, fmt.Errorf("--prometheus-rules: %w; run from the repository's top directory or give the path of %s", err, DefaultPrometheusRules))
	} else if !st.Mode().IsRegular() {
		errs = append(errs, fmt.Errorf("--prometheus-rules=%s: not a file; give the path of %s", rules, DefaultPrometheusRules))
	}
	if len(errs) > 0 {
		return "", "", errors.Join(errs...)
	}
	abs, err := filepath.Abs(rules)
	return bin, abs, err
}

// executables checks that each path is an executable file.
func executables(paths ...string) error {
	var errs []error
	for _, p := range paths {
		st, err := os.Stat(p)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s: not an executable file", p))
		}
	}
	return errors.Join(errs...)
}

// promServer is the real Prometheus server of --prometheus: it scrapes
// every agent and coordinator through file_sd target files, rewritten
// whenever one of them moves to another port, and evaluates the shortened
// copy of the shipped rules.
type promServer struct {
	dir   string
	child *child
	mu    sync.Mutex // serializes target writes
}

// Target files in the server's directory, read through file_sd.
const (
	agentTargetsFile       = "agents.json"
	coordinatorTargetsFile = "coordinators.json"
)

// newPromServer writes the configuration and the shortened rules into dir
// and describes the process; start runs it.
func newPromServer(dir, bin, rules, addr, logPath string) (*promServer, error) {
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o750); err != nil {
		return nil, err
	}
	src, err := os.ReadFile(rules)
	if err != nil {
		return nil, err
	}
	short, err := ShortenRules(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rules, err)
	}
	header := fmt.Sprintf("# %s with every for: %d times shorter, written by tokenroll-sandbox --prometheus.\n", rules, ForDivisor)
	if err := os.WriteFile(filepath.Join(dir, "tokenroll.rules.yaml"), append([]byte(header), short...), 0o644); err != nil {
		return nil, err
	}
	// JSON is YAML: paths need no escaping of their own.
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	cfg := fmt.Sprintf(`# Written by tokenroll-sandbox --prometheus.
global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[1]s
rule_files:
- %[2]s
scrape_configs:
# As the agent's ServiceMonitor: the metrics' own labels kept, node added.
- job_name: tokenroll-agent
  honor_labels: true
  file_sd_configs:
  - files: [%[3]s]
- job_name: tokenroll-coordinator
  file_sd_configs:
  - files: [%[4]s]
`, model.Duration(promInterval), q(filepath.Join(dir, "tokenroll.rules.yaml")), q(filepath.Join(dir, agentTargetsFile)), q(filepath.Join(dir, coordinatorTargetsFile)))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	args := func(addr string) []string {
		return []string{bin, "--config.file=" + filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + addr, "--log.format=json"}
	}
	return &promServer{dir: dir, child: newChild("prometheus", addr, args, logPath)}, nil
}

// url is the server's base URL.
func (p *promServer) url() string { return "http://" + p.child.metricsAddr() }

// fileSDGroup is one group of a file_sd target file.
type fileSDGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// writeTargets writes the agents' (labelled with their node) and the
// coordinators' addresses for file_sd; a rename, so that Prometheus never
// reads half a file.
func (p *promServer) writeTargets(agents map[string]*child, coordinators []*child) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ag []fileSDGroup
	for _, n := range slices.SortedFunc(maps.Keys(agents), byNodeName) {
		ag = append(ag, fileSDGroup{Targets: []string{agents[n].metricsAddr()}, Labels: map[string]string{"node": n}})
	}
	co := fileSDGroup{Targets: []string{}}
	for _, c := range coordinators {
		co.Targets = append(co.Targets, c.metricsAddr())
	}
	for name, groups := range map[string][]fileSDGroup{agentTargetsFile: ag, coordinatorTargetsFile: {co}} {
		data, err := json.MarshalIndent(groups, "", "  ")
		if err != nil {
			return err
		}
		tmp := filepath.Join(p.dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(p.dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// waitReady waits until the server answers /-/ready.
func (p *promServer) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url()+"/-/ready", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/-/ready answered %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for Prometheus at %s to be ready: %w (last: %w); its log: %s", p.url(), ctx.Err(), last, p.child.logPath)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// promAPI gets path from a Prometheus HTTP API at base and decodes the
// answer's data into v.
func promAPI(ctx context.Context, hc *http.Client, base, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s answered %s, not the Prometheus API's JSON: %w", path, resp.Status, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, r.Error)
	}
	return json.Unmarshal(r.Data, v)
}

// settle waits until the server has scraped every target after t and then
// evaluated every rule group, so that its alerts judge the state at t.
func (p *promServer) settle(ctx context.Context, t time.Time, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	scraped := time.Time{}
	for {
		var err error
		if scraped.IsZero() {
			var targets struct {
				Active []struct {
					ScrapeURL  string    `json:"scrapeUrl"`
					LastScrape time.Time `json:"lastScrape"`
				} `json:"activeTargets"`
			}
			if err = promAPI(ctx, hc, p.url(), "/api/v1/targets?state=active", &targets); err == nil {
				last := time.Time{}
				for _, tg := range targets.Active {
					if tg.LastScrape.Before(t) {
						err = fmt.Errorf("%s last scraped at %s", tg.ScrapeURL, tg.LastScrape.Format(time.RFC3339Nano))
						break
					}
					last = maxTime(last, tg.LastScrape)
				}
				switch {
				case err == nil && len(targets.Active) == 0:
					err = errors.New("no active target")
				case err == nil:
					scraped = last
				}
			}
		}
		if !scraped.IsZero() {
			var rules struct {
				Groups []struct {
					Name           string    `json:"name"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"groups"`
			}
			if err = promAPI(ctx, hc, p.url(), "/api/v1/rules", &rules); err == nil {
				for _, g := range rules.Groups {
					if !g.LastEvaluation.After(scraped) {
						err = fmt.Errorf("rule group %s last evaluated at %s", g.Name, g.LastEvaluation.Format(time.RFC3339Nano))
						break
					}
				}
				if err == nil {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for Prometheus to scrape and evaluate once more: %w (last: %w)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// promVersion is the first line of `prometheus --version`.
func promVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "prometheus (version unknown)"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return first
}

// promAlert is one alert of /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

// alertWatcher polls a Prometheus server's alerts, prints each as it fires
// and resolves, and keeps the names of those that fired.
type alertWatcher struct {
	clock clock.WithTicker
	url   func() string
	p     *printer
	hc    *http.Client

	mu      sync.Mutex
	polled  bool
	firing  map[string]time.Time // key → since when the watcher saw it firing
	names   map[string]string    // key → alert name
	fired   map[string]bool
	lastErr error
}

func newAlertWatcher(clk clock.WithTicker, url func() string, p *printer) *alertWatcher {
	return &alertWatcher{clock: clk, url: url, p: p, hc: &http.Client{Timeout: 2 * time.Second},
		firing: map[string]time.Time{}, names: map[string]string{}, fired: map[string]bool{}}
}

// run polls every promInterval until ctx ends.
func (a *alertWatcher) run(ctx context.Context) {
	t := a.clock.NewTicker(promInterval)
	defer t.Stop()
	for {
		_ = a.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// alertKey names an alert by its name and its labels other than severity,
// sorted: "TokenrollUntrustedIssuerTokens node=worker-1".
func alertKey(labels map[string]string) (name, key string) {
	name = protocol.Truncate(labels[model.AlertNameLabel])
	parts := []string{name}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if k == model.AlertNameLabel || k == "severity" {
			continue
		}
		parts = append(parts, protocol.Truncate(k)+"="+protocol.Truncate(labels[k]))
	}
	return name, strings.Join(parts, " ")
}

// poll reads the alerts once and prints what changed since the last poll.
func (a *alertWatcher) poll(ctx context.Context) error {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := promAPI(ctx, a.hc, a.url(), "/api/v1/alerts", &data); err != nil {
		a.mu.Lock()
		a.lastErr = err
		a.mu.Unlock()
		return err
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastErr = nil
	a.polled = true
	seen := map[string]bool{}
	for _, al := range data.Alerts {
		if al.State != "firing" {
			continue
		}
		name, key := alertKey(al.Labels)
		seen[key] = true
		if _, ok := a.firing[key]; ok {
			continue
		}
		a.firing[key], a.names[key] = now, name
		a.fired[name] = true
		a.p.printf("alert firing: %s (%s): %s", key, protocol.Truncate(al.Labels["severity"]), protocol.Truncate(al.Annotations["summary"]))
	}
	for _, key := range slices.Sorted(maps.Keys(a.firing)) {
		if seen[key] {
			continue
		}
		a.p.printf("alert resolved: %s (firing for %s)", key, now.Sub(a.firing[key]).Round(time.Second))
		delete(a.firing, key)
		delete(a.names, key)
	}
	return nil
}

// AlertSummary is what the sandbox's Prometheus fired, by alert name.
type AlertSummary struct {
	// Fired are the alerts that fired at some point of the run.
	Fired []string `json:"fired"`
	// FiringAtEnd are those still firing once Prometheus had scraped and
	// evaluated the final state.
	FiringAtEnd []string `json:"firingAtEnd"`
}

// summary is what fired, and what fires now; an error when no poll has
// succeeded.
func (a *alertWatcher) summary() (AlertSummary, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.polled {
		if a.lastErr == nil {
			return AlertSummary{}, errors.New("the alerts of Prometheus (/api/v1/alerts) were never read")
		}
		return AlertSummary{}, fmt.Errorf("no answer from Prometheus' /api/v1/alerts: %w", a.lastErr)
	}
	s := AlertSummary{Fired: slices.Sorted(maps.Keys(a.fired)), FiringAtEnd: []string{}}
	for _, name := range a.names {
		if !slices.Contains(s.FiringAtEnd, name) {
			s.FiringAtEnd = append(s.FiringAtEnd, name)
		}
	}
	slices.Sort(s.FiringAtEnd)
	return s, nil
}

// startPrometheus starts the server of --prometheus once the agents and
// coordinators run, waits until it is ready, and watches its alerts until
// watchCtx ends.
func (r *run) startPrometheus(ctx, watchCtx context.Context) error {
	o := r.opts
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	p, err := newPromServer(filepath.Join(r.dir, "prometheus"), o.PrometheusBin, o.PrometheusRules, addr, filepath.Join(r.dir, "logs", "prometheus.log"))
	if err != nil {
		return err
	}
	exits := 0
	var exitMu sync.Mutex
	p.child.exited = func(c *child, err error) {
		exitMu.Lock()
		exits++
		n := exits
		exitMu.Unlock()
		if n == 1 {
			r.p.printf("prometheus exited by itself (%v); starting it again; its log: %s", waitStatus(err), c.logPath)
		}
		if n == crashLoop {
			r.fail(fmt.Errorf("prometheus exited by itself %d times (last: %v); the end of its log, %s:\n%s", n, waitStatus(err), c.logPath, logTail(c.logPath, 15)))
		}
	}
	p.child.moved = func(c *child, old, addr string) {
		r.p.printf("prometheus: port %s was taken by another process; now http://%s", old, addr)
	}
	r.promMu.Lock()
	r.prom = p
	r.promMu.Unlock()
	if err := p.writeTargets(r.agents, r.coordinators); err != nil {
		return err
	}
	if err := startChildren(ctx, &r.procs, []*child{p.child}); err != nil {
		return err
	}
	if err := p.waitReady(ctx, time.Minute); err != nil {
		return err
	}
	r.p.printf("%s at %s scrapes the %d agents and %d coordinators every %s and evaluates %s every %s, each alert's for: %d times shorter (15m: %s) so that a short run shows the alerts; nothing else in the rules changes (the copy it loads: %s)",
		promVersion(ctx, o.PrometheusBin), p.url(), len(r.agents), len(r.coordinators), promInterval, o.PrometheusRules, promInterval,
		ForDivisor, model.Duration(15*time.Minute/ForDivisor), filepath.Join(p.dir, "tokenroll.rules.yaml"))
	r.alerts = newAlertWatcher(clock.RealClock{}, p.url, r.p)
	r.procs.Add(1)
	go func() { defer r.procs.Done(); r.alerts.run(watchCtx) }()
	return nil
}

// promTargetsMoved rewrites the target files after a process moved to
// another port (no-op without --prometheus).
func (r *run) promTargetsMoved() {
	r.promMu.Lock()
	p := r.prom
	r.promMu.Unlock()
	if p == nil {
		return
	}
	if err := p.writeTargets(r.agents, r.coordinators); err != nil {
		r.p.printf("prometheus: rewriting the target files: %v", err)
	}
}

// alertsAtEnd lets Prometheus scrape and evaluate the final state (end),
// then puts what fired and what still fires in sum; an alert still firing
// is a failure.
func (r *run) alertsAtEnd(ctx context.Context, end time.Time, sum *Summary) {
	if r.alerts == nil {
		return
	}
	if err := r.prom.settle(ctx, end, 30*time.Second); err != nil {
		sum.Failures = append(sum.Failures, "prometheus: "+err.Error())
	}
	_ = r.alerts.poll(ctx)
	as, err := r.alerts.summary()
	if err != nil {
		sum.Failures = append(sum.Failures, "prometheus: "+err.Error())
		return
	}
	sum.Alerts = &as
	if len(as.FiringAtEnd) > 0 {
		sum.Failures = append(sum.Failures, "alerts still firing at the end: "+strings.Join(as.FiringAtEnd, ", "))
	}
}
