package agent

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

const testIssuer = "https://kubernetes.default.svc"

// simNode is a kubelet root the test writes as the kubelet does: one
// kube-api-access volume per pod in the AtomicWriter layout, its token an
// extended one (warnafter iat+3607), refreshed once past 80% of that.
type simNode struct {
	t     *testing.T
	root  string
	pods  map[string]*simPod
	order []string // pod UIDs, oldest first
	next  int
	// iss is the issuer the API server signs new tokens with ("":
	// testIssuer).
	iss string
}

type simPod struct {
	uid, ns, name string
	iat           time.Time
	// lag is how long after its refresh time the kubelet's sync rewrites
	// the token (its 60-90 s period).
	lag   time.Duration
	stuck bool // the kubelet does not refresh this one
}

func newSimNode(t *testing.T) *simNode {
	return &simNode{t: t, root: t.TempDir(), pods: map[string]*simPod{}}
}

func (s *simNode) volume(p *simPod) string {
	return filepath.Join(s.root, "pods", p.uid, "volumes", "kubernetes.io~projected", "kube-api-access-x")
}

func (s *simNode) addPod(now time.Time) *simPod {
	s.next++
	p := &simPod{uid: fmt.Sprintf("%08d-0000-4000-8000-000000000000", s.next), ns: fmt.Sprintf("tenant-%d", s.next%5),
		name: fmt.Sprintf("app-%d", s.next), lag: time.Duration(60+s.next*7%30) * time.Second}
	dir := s.volume(p)
	ts := filepath.Join(dir, "..2026_11_27_10_31_05.123456789")
	if err := os.MkdirAll(ts, 0o755); err != nil {
		s.t.Fatal(err)
	}
	for _, link := range [][2]string{{"..2026_11_27_10_31_05.123456789", "..data"}, {"..data/token", "token"}} {
		if err := os.Symlink(link[0], filepath.Join(dir, link[1])); err != nil {
			s.t.Fatal(err)
		}
	}
	s.pods[p.uid] = p
	s.order = append(s.order, p.uid)
	s.writeToken(p, now)
	return p
}

// deleteOldest deletes the oldest pod but a stuck one (kept so an alarm
// stays the same alarm).
func (s *simNode) deleteOldest() {
	i := 0
	if s.pods[s.order[0]].stuck {
		i = 1
	}
	uid := s.order[i]
	s.order = append(s.order[:i:i], s.order[i+1:]...)
	delete(s.pods, uid)
	if err := os.RemoveAll(filepath.Join(s.root, "pods", uid)); err != nil {
		s.t.Fatal(err)
	}
}

func (s *simNode) writeToken(p *simPod, iat time.Time) {
	p.iat = iat.Truncate(time.Second)
	enc := base64.RawURLEncoding
	iss := cmp.Or(s.iss, testIssuer)
	payload, _ := json.Marshal(map[string]any{
		"aud": []string{iss}, "iss": iss, "iat": p.iat.Unix(), "nbf": p.iat.Unix(), "exp": p.iat.Unix() + 365*86400,
		"sub": "system:serviceaccount:" + p.ns + ":default", "jti": "j-" + p.uid,
		"kubernetes.io": map[string]any{
			"namespace": p.ns, "warnafter": p.iat.Unix() + 3607,
			"node":           map[string]any{"name": "node-1", "uid": "n-uid"},
			"pod":            map[string]any{"name": p.name, "uid": p.uid},
			"serviceaccount": map[string]any{"name": "default", "uid": "sa-uid"},
		},
	})
	tok := enc.EncodeToString([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString(make([]byte, 64))
	if err := os.WriteFile(filepath.Join(s.volume(p), "..2026_11_27_10_31_05.123456789", "token"), []byte(tok), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// sync refreshes every token past its refresh time and lag, as the
// kubelet's token manager and volume sync do.
func (s *simNode) sync(now time.Time) {
	for _, p := range s.pods {
		if refreshAt := p.iat.Add(3607*time.Second - 721*time.Second); !p.stuck && !now.Before(refreshAt.Add(p.lag)) {
			s.writeToken(p, now)
		}
	}
}

// nodeWrites counts the requests that changed the Node.
func nodeWrites(cs *fake.Clientset) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.GetVerb() == "patch" || a.GetVerb() == "update" {
			n++
		}
	}
	return n
}

// In steady state, with tokens refreshing and pods created and deleted
// every few minutes, an agent writes its Node at most once an hour; an
// alarm (a token the kubelet stops refreshing, then refreshes again) is
// written at the scan that sees it.
func TestNodeWritesUnderChurn(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(start)
	sim := newSimNode(t)
	for range 30 {
		p := sim.addPod(clk.Now())
		// Spread the tokens' ages over their lifetime.
		sim.writeToken(p, clk.Now().Add(-time.Duration(sim.next*71%2800)*time.Second))
	}
	cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	const interval = time.Minute
	a, err := New(Config{NodeName: "node-1", KubeletRoot: sim.root, Client: cs.CoreV1().Nodes(), Discovery: oidcDiscovery(testIssuer),
		Interval: interval, Grace: 5 * time.Minute, IssuerRefresh: 10 * time.Minute, MaxTokenSeries: 100, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	a.readIssuer(ctx, readStart)
	if r := a.ScanOnce(ctx); r == nil || r.Summary[protocol.StateFresh]+r.Summary[protocol.StateRefreshDue] != 30 {
		t.Fatalf("first scan: %+v", r)
	}
	first := nodeWrites(cs)
	if first != 2 {
		t.Fatalf("first scan wrote %d times, want the condition and the report", first)
	}

	// step advances one scan interval: the kubelet syncs, a pod is replaced
	// every 3 minutes and one more comes or goes every 9 (so the counts
	// change), the agent scans.
	steps := 0
	step := func() {
		clk.Step(interval)
		steps++
		sim.sync(clk.Now())
		if steps%3 == 0 {
			sim.deleteOldest()
			sim.addPod(clk.Now())
		}
		switch steps % 18 {
		case 0:
			sim.addPod(clk.Now())
		case 9:
			sim.deleteOldest()
		}
		if r := a.ScanOnce(ctx); r == nil {
			t.Fatal("scan failed")
		}
	}
	// While the agent settles (its first minutes: a node booted, its pods
	// starting) the counts follow within a minute.
	step()
	for range 5 {
		sim.addPod(clk.Now())
	}
	before := nodeWrites(cs)
	step()
	if n := nodeWrites(cs) - before; n != 1 {
		t.Errorf("five pods started while the agent settles: %d writes, want the report at once", n)
	}
	for clk.Now().Sub(start) < reportSettle {
		step()
	}

	const hours = 4
	perHour := make([]int, hours)
	for h := range hours {
		before := nodeWrites(cs)
		for range int(time.Hour / interval) {
			step()
		}
		perHour[h] = nodeWrites(cs) - before
	}
	t.Logf("node writes per simulated hour in steady state (about 35 pods, %d pods started in %d h, each token refreshed every 48 min): %v", sim.next-35, hours, perHour)
	for h, n := range perHour {
		if n > 1 {
			t.Errorf("hour %d: %d node writes, want at most 1", h+1, n)
		}
	}
	if n := perHour[0] + perHour[1]; n == 0 {
		t.Errorf("no rewrite in two hours although the pods' counts changed")
	}

	// An alarm: the kubelet stops refreshing one token. The scan that finds
	// it overdue writes the condition and the report.
	stuck := sim.pods[sim.order[len(sim.order)-1]]
	stuck.stuck = true
	overdueAt := stuck.iat.Add(3607*time.Second - 721*time.Second + 5*time.Minute)
	for clk.Now().Add(interval).Before(overdueAt) {
		step()
	}
	node, _ := cs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if c := conditionOf(node); c == nil || c.Status != corev1.ConditionFalse {
		t.Fatalf("condition before the token is overdue: %+v", c)
	}
	before = nodeWrites(cs)
	step()
	if n := nodeWrites(cs) - before; n != 2 {
		t.Errorf("the scan that found a token overdue made %d writes, want 2 (condition and report)", n)
	}
	node, _ = cs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if c := conditionOf(node); c == nil || c.Status != corev1.ConditionTrue || c.Reason != ReasonOverdue {
		t.Errorf("condition with an overdue token: %+v", c)
	}
	if rep, err := protocol.ParseTokenReport(node.Annotations[protocol.AnnotationTokens]); err != nil || rep.Stale[protocol.StateOverdue] != 1 ||
		len(rep.StalePods) != 1 || rep.StalePods[0].UID != stuck.uid {
		t.Errorf("report with an overdue token: %+v, %v", rep, err)
	}
	// The alarm holds while pods churn: at most the hourly rewrite.
	before = nodeWrites(cs)
	for range int(time.Hour / interval) {
		step()
	}
	if n := nodeWrites(cs) - before; n > 1 {
		t.Errorf("an hour with an unchanged alarm: %d writes, want at most 1", n)
	}
	// It heals: the next scan clears the condition.
	stuck.stuck = false
	before = nodeWrites(cs)
	step()
	if n := nodeWrites(cs) - before; n != 2 {
		t.Errorf("the scan that found the token refreshed made %d writes, want 2", n)
	}
	node, _ = cs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if c := conditionOf(node); c == nil || c.Status != corev1.ConditionFalse {
		t.Errorf("condition after the token healed: %+v", c)
	}
}

func conditionOf(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if string(n.Status.Conditions[i].Type) == protocol.ConditionTokensStale {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// What the agent wrote and someone removed, or a Node deleted and
// registered again under the same name, is written again: at once, and
// within a minute of the last repair at the next scan.
func TestAgentRewritesWhatWasRemoved(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	sim := newSimNode(t)
	stuck := sim.addPod(clk.Now().Add(-time.Hour)) // overdue: an alarm to report
	stuck.stuck = true
	sim.addPod(clk.Now())
	cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "first"}})
	nodes := cs.CoreV1().Nodes()
	a, err := New(Config{NodeName: "node-1", KubeletRoot: sim.root, Client: nodes, Discovery: oidcDiscovery(testIssuer),
		Interval: 30 * time.Second, Grace: 5 * time.Minute, IssuerRefresh: 10 * time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	a.readIssuer(ctx, readStart)
	a.ScanOnce(ctx)
	live := func() *corev1.Node {
		n, err := nodes.Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	reported := func(n *corev1.Node) bool {
		c := conditionOf(n)
		rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
		return c != nil && c.Reason == ReasonOverdue && err == nil && rep.Stale[protocol.StateOverdue] == 1
	}
	n := live()
	if !reported(n) {
		t.Fatalf("first scan: %+v", n)
	}
	// The informer sees the agent's own writes: nothing to do.
	a.ObserveNode(n)
	before := nodeWrites(cs)
	a.repair(ctx)
	if w := nodeWrites(cs) - before; w != 0 {
		t.Errorf("%d writes for a Node as the agent wrote it", w)
	}

	// Someone removes the annotation and the condition.
	n = live()
	delete(n.Annotations, protocol.AnnotationTokens)
	n.Status.Conditions = nil
	if _, err := nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a.ObserveNode(live())
	a.repair(ctx)
	if n = live(); !reported(n) {
		t.Errorf("after a removal: condition %+v, annotation %q", conditionOf(n), n.Annotations[protocol.AnnotationTokens])
	}

	// The Node is deleted and registered again, 30 s later: within a
	// minute of the last repair, it is written at the next scan.
	if err := nodes.Delete(ctx, "node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	a.ObserveNode(nil)
	a.repair(ctx)
	clk.Step(30 * time.Second)
	fresh, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "second"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.ObserveNode(fresh)
	a.repair(ctx)
	if n = live(); reported(n) {
		t.Errorf("repaired twice within a minute")
	}
	a.ScanOnce(ctx)
	if n = live(); !reported(n) {
		t.Errorf("the Node registered again was not written at the next scan: condition %+v, annotations %v", conditionOf(n), n.Annotations)
	}
	// Someone else changes the condition's message a minute later: put
	// back at once, its transition time kept (the status did not change).
	clk.Step(time.Minute)
	n = live()
	since := conditionOf(n).LastTransitionTime
	conditionOf(n).Message = "all good"
	if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a.ObserveNode(live())
	a.repair(ctx)
	if c := conditionOf(live()); c.Message == "all good" || !c.LastTransitionTime.Equal(&since) {
		t.Errorf("after a change: %+v (transition time was %v)", c, since)
	}

	// A late event, a version older than the agent's last write, is not
	// someone else's change; a newer one without the report is.
	clk.Step(time.Minute)
	a.mu.Lock()
	a.writtenRV = "100"
	a.mu.Unlock()
	bare := func(rv string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "second", ResourceVersion: rv}}
	}
	before = nodeWrites(cs)
	a.ObserveNode(bare("99"))
	a.repair(ctx)
	if w := nodeWrites(cs) - before; w != 0 {
		t.Errorf("a late event made %d writes", w)
	}
	a.ObserveNode(bare("101"))
	a.repair(ctx)
	if w := nodeWrites(cs) - before; w != 2 {
		t.Errorf("a newer Node without the condition and report made %d writes, want 2", w)
	}
}
