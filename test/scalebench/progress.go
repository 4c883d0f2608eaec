package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenroll/tokenroll/test/benchkit"
)

// progress prints what a run is doing to stderr, one timestamped line at a
// time, so that a long run on a loaded machine shows where it is and a
// failure where it was.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	nodes int
	phase string
}

func newProgress(w io.Writer, nodes int) *progress { return &progress{w: w, nodes: nodes} }

// enter names the phase that follows; fail says it in an error.
func (p *progress) enter(phase string) {
	p.mu.Lock()
	p.phase = phase
	p.mu.Unlock()
	p.printf("%s", phase)
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "scalebench: %s %d nodes: %s (load %s)\n", time.Now().UTC().Format("15:04:05"), p.nodes,
		fmt.Sprintf(format, args...), loadAverage())
}

// fail wraps err with the phase it happened in.
func (p *progress) fail(err error) error {
	if err == nil {
		return nil
	}
	p.mu.Lock()
	phase := p.phase
	p.mu.Unlock()
	return fmt.Errorf("phase %q: %w", phase, err)
}

// every calls report every d until the returned stop is called.
func every(d time.Duration, report func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// loadAverage is the machine's 1, 5 and 15 minute load averages as
// uptime(1) prints them ("?" when /proc cannot say).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// load1 is the 1-minute load average (0 when /proc cannot say).
func load1() float64 {
	f := strings.Fields(loadAverage())
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// auditPolicy records, at Metadata level, every request of the
// coordinator (apiserver_request_total cannot tell its requests from the
// API server's own, which re-lists everything after a restart) and
// everyone's requests outside the resource API (discovery, OIDC discovery,
// /metrics, health checks), which that counter gives no path.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["` + coordinatorUser + `"]
- level: Metadata
  nonResourceURLs: ["*"]
- level: None
`

// audited is what an API server's audit log says of a time window.
type audited struct {
	// user's requests by "VERB resource" (as benchkit.ResourceName names
	// it) or "VERB /path" outside the resource API; lease requests apart.
	user, userLeases map[string]int
	// others' requests outside the resource API, by "VERB /path (user)".
	othersNonResource map[string]int
}

// readAudit reads an API server's audit log (JSON lines) for the requests
// received between from and to, each counted once (a watch is logged when
// it starts and when it ends).
func readAudit(r io.Reader, user string, from, to time.Time) (audited, error) {
	out := audited{user: map[string]int{}, userLeases: map[string]int{}, othersNonResource: map[string]int{}}
	err := benchkit.ReadAudit(r, func(ev benchkit.AuditEvent) {
		if ev.RequestReceivedTimestamp.Before(from) || ev.RequestReceivedTimestamp.After(to) {
			return
		}
		what := strings.ToUpper(ev.Verb) + " " + ev.What()
		res := ev.Resource()
		switch {
		case ev.User.Username == user && res != nil && benchkit.IsLease(*res):
			out.userLeases[what]++
		case ev.User.Username == user:
			out.user[what]++
		case res == nil:
			out.othersNonResource[fmt.Sprintf("%s (%s)", what, ev.User.Username)]++
		}
	})
	return out, err
}

func total(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}

// sortedCounts renders counts largest first: "GET /x 12, GET /y 3".
func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
