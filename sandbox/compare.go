package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/coordinator"
)

// DeleteAllPods is the OpenShift documentation's other remediation: once
// the new revision is out, the administrator deletes every pod in every
// namespace, without draining, and the controllers recreate them. In the
// sandbox, the sandbox does it; the coordinators only watch.
const DeleteAllPods = "delete-all-pods"

// Remediations are what --strategy takes and --compare runs, in its order:
// the documentation's rolling reboot and its deletion of every pod, then
// the coordinator's other strategies, least disruptive first, as its
// registry lists them.
func Remediations() []string {
	out := []string{string(coordinator.Reboot), DeleteAllPods}
	for _, s := range coordinator.StrategyNames() {
		if s != string(coordinator.Reboot) {
			out = append(out, s)
		}
	}
	return out
}

// noteBoots tells the disruption counter the boot ID each node is in.
func (r *run) noteBoots() {
	for _, n := range r.sb.Nodes {
		r.disruption.boot(n.Name(), n.BootID())
	}
}

// deletePause is the documentation's `sleep 1` between namespaces.
const deletePause = time.Second

// deleteAllPods is the documentation's loop: for each namespace, `oc
// delete pods --all -n NS` (which waits until the pods are gone), then a
// second's pause.
func (r *run) deleteAllPods(ctx context.Context) error {
	client := r.sb.Admin
	nss, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing namespaces to delete their pods: %w", err)
	}
	for _, ns := range nss.Items {
		pods, err := client.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("listing pods in namespace %s to delete them: %w", ns.Name, err)
		}
		deleted := map[types.UID]bool{}
		for _, p := range pods.Items {
			err := client.CoreV1().Pods(ns.Name).Delete(ctx, p.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting pod %s/%s: %w", ns.Name, p.Name, err)
			}
			deleted[p.UID] = true
		}
		if len(deleted) > 0 {
			r.p.printf("the administrator deleted %d pod(s) in namespace %s", len(deleted), ns.Name)
			if err := waitPodsGone(ctx, client.CoreV1().Pods(ns.Name).List, deleted); err != nil {
				return fmt.Errorf("waiting for the pods deleted in namespace %s to be gone: %w", ns.Name, err)
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(deletePause):
		}
	}
	return nil
}

// waitPodsGone waits until no pod with one of the uids is listed.
func waitPodsGone(ctx context.Context, list func(context.Context, metav1.ListOptions) (*corev1.PodList, error), uids map[types.UID]bool) error {
	for {
		pods, err := list(ctx, metav1.ListOptions{})
		if err == nil {
			left := 0
			for _, p := range pods.Items {
				if uids[p.UID] {
					left++
				}
			}
			if left == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Comparison is the outcome of --compare: one summary per remediation, in
// the order they ran.
type Comparison struct {
	Runs []*Summary `json:"runs"`
	// TrustWindow is the runs' --trust-window (printed, not in the JSON,
	// whose runs are the summaries as they are).
	TrustWindow time.Duration `json:"-"`
}

// Compare runs the scenario once per remediation (Remediations), each on
// a fresh cluster built from the same options, prints every run as it goes
// and then one table, and writes the summaries to opts.SummaryJSON as
// {"runs": [...]}. A run that ends with apps still failing is an outcome
// compared, not an error; the error says which runs broke an invariant or
// did not complete.
func Compare(ctx context.Context, opts Options, out io.Writer) (*Comparison, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	rems := Remediations()
	c := &Comparison{TrustWindow: opts.TrustWindow}
	var failed []string
	var broke error
	runs := compareRuns(ctx, opts, rems, out)
	for i, rem := range rems {
		r := <-runs[i]
		sum, err := r.sum, r.err
		if sum == nil {
			if err == nil {
				err = errors.New("it gave no summary")
			}
			if r.first {
				broke = fmt.Errorf("--compare: the %s run: %w", rem, err)
			}
			continue
		}
		c.Runs = append(c.Runs, sum)
		if others := sum.otherFailures(); len(others) > 0 {
			failed = append(failed, fmt.Sprintf("%s: %s", rem, strings.Join(others, "; ")))
		}
	}
	if broke != nil {
		return nil, broke
	}
	var b strings.Builder
	c.Print(&b)
	fmt.Fprint(out, b.String())
	if opts.SummaryJSON != "" {
		if err := c.WriteJSON(opts.SummaryJSON); err != nil {
			return c, err
		}
		fmt.Fprintf(out, "the runs' summaries written to %s\n", opts.SummaryJSON)
	}
	if len(failed) > 0 {
		return c, fmt.Errorf("%w: %s", errNotOK, strings.Join(failed, " | "))
	}
	return c, nil
}

// compareRun is the outcome of one run of --compare.
type compareRun struct {
	sum *Summary
	err error
	// first says this run is the one whose failure (no summary) stopped
	// the others.
	first bool
}

// compareRuns starts the runs of --compare, opts.CompareParallel at a time
// (one after another by default), and returns a channel per remediation
// that gives its outcome once the run has ended and its output, and that
// of every run before it, has been written to out, in the runs' order;
// every channel gives one. The first run that gives no summary stops the
// others.
func compareRuns(ctx context.Context, opts Options, rems []string, out io.Writer) []chan compareRun {
	ctx, stop := context.WithCancel(ctx)
	var failOnce sync.Once
	results := make([]chan compareRun, len(rems))
	for i := range results {
		results[i] = make(chan compareRun, 1)
	}
	one := func(i int, w io.Writer) compareRun {
		rem := rems[i]
		if ctx.Err() != nil {
			return compareRun{err: errors.New("not run: another run failed")}
		}
		o := opts
		o.Compare, o.CompareParallel, o.Strategy, o.SummaryJSON = false, 0, rem, ""
		if opts.Dir != "" {
			o.Dir = filepath.Join(opts.Dir, rem)
		}
		fmt.Fprintf(w, "\n=== --compare: run %d of %d, --strategy %s, on a fresh cluster\n", i+1, len(rems), rem)
		r := compareRun{}
		r.sum, r.err = Run(ctx, o, w)
		if r.sum == nil {
			failOnce.Do(func() { r.first = true; stop() })
		}
		return r
	}
	if opts.CompareParallel <= 1 {
		go func() {
			defer stop()
			for i := range rems {
				results[i] <- one(i, out)
			}
		}()
		return results
	}
	// Runs that overlap write to buffers, copied to out in order.
	ended := make([]chan compareRun, len(rems))
	bufs := make([]bytes.Buffer, len(rems))
	for i := range ended {
		ended[i] = make(chan compareRun, 1)
	}
	go func() {
		slots := make(chan struct{}, opts.CompareParallel)
		for i := range rems {
			slots <- struct{}{}
			go func() {
				defer func() { <-slots }()
				ended[i] <- one(i, &bufs[i])
			}()
		}
	}()
	go func() {
		defer stop()
		for i := range rems {
			r := <-ended[i]
			_, _ = out.Write(bufs[i].Bytes())
			results[i] <- r
		}
	}()
	return results
}

// Print writes the comparison for a person: one column per remediation.
func (c *Comparison) Print(w io.Writer) {
	if len(c.Runs) == 0 {
		fmt.Fprintln(w, "\nComparison: no run")
		return
	}
	first := c.Runs[0]
	fmt.Fprintf(w, "\nComparison: the same issuer change on %d nodes (kubelet: %s), trust window %s\n", first.Nodes, first.Kubelet, c.TrustWindow)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name string, cell func(s *Summary) string) {
		cells := make([]string, len(c.Runs))
		for i, s := range c.Runs {
			cells[i] = cell(s)
		}
		fmt.Fprintf(tw, "  %s\t%s\n", name, strings.Join(cells, "\t"))
	}
	row("", func(s *Summary) string { return s.Strategy })
	row("pods restarted", func(s *Summary) string { return fmt.Sprint(s.PodsRestarted) })
	row("node reboots", func(s *Summary) string { return fmt.Sprint(s.NodeReboots) })
	row("node-seconds out of service", func(s *Summary) string { return fmt.Sprintf("%.1f", s.NodeSecondsOutOfService) })
	for _, k := range AppKinds {
		ran := false
		for _, s := range c.Runs {
			_, ok := s.Apps[k]
			ran = ran || ok
		}
		if !ran {
			continue
		}
		row(fmt.Sprintf("apps %s: errorSeconds", k), func(s *Summary) string { return fmt.Sprintf("%.1f", s.Apps[k].ErrorSeconds) })
		row("  after the gate opened", func(s *Summary) string { return fmt.Sprintf("%.1f", s.Apps[k].ErrorSecondsAfterGate) })
		row(fmt.Sprintf("apps %s: authFailures", k), func(s *Summary) string { return fmt.Sprint(s.Apps[k].AuthFailures) })
	}
	row("apps failing at the end", func(s *Summary) string {
		n := 0
		for _, f := range s.Apps {
			n += f.FailingAtEnd
		}
		return fmt.Sprint(n)
	})
	row("gate open to done (s)", func(s *Summary) string { return fmt.Sprintf("%.1f", s.RolloutSeconds) })
	row("result", func(s *Summary) string {
		switch {
		case s.OK:
			return "OK"
		case len(s.otherFailures()) == 0:
			return "apps fail"
		default:
			return "FAILED"
		}
	})
	tw.Flush()
}

// otherFailures are the failures that do not name apps still failing: an
// invariant broken, or a procedure that did not complete.
func (s *Summary) otherFailures() []string {
	var out []string
	for _, f := range s.Failures {
		if !slices.Contains(s.appFailures, f) {
			out = append(out, f)
		}
	}
	return out
}

// WriteJSON writes {"runs": [...]} to path (indented, mode 0644).
func (c *Comparison) WriteJSON(path string) error {
	out := *c
	if out.Runs == nil {
		out.Runs = []*Summary{}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the comparison: %w", err)
	}
	return nil
}
