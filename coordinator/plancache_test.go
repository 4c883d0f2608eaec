package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/protocol"
)

// fleetNode is node i of a fleet whose agents report 30 tokens: every
// fifth node still holds two old-issuer tokens that refresh in time.
func fleetNode(i int, rv int) *corev1.Node {
	rep := protocol.TokenReport{Issuer: newIssuer, Tokens: 30, Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 30}}}
	if i%5 == 0 {
		rep.Issuers = []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: 28}, {Issuer: oldIssuer, Tokens: 2, LastRefreshAt: planNow.Add(time.Hour)}}
	}
	raw, _ := json.Marshal(rep)
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%05d", i), UID: types.UID(fmt.Sprintf("uid-%d", i)),
		ResourceVersion: strconv.Itoa(rv), Annotations: map[string]string{protocol.AnnotationTokens: string(raw)}}}
}

// A plan through the cache is the plan MakePlan makes, whatever changed,
// and it judges only the nodes that changed since the last one, or all of
// them when an input changed.
func TestPlanCache(t *testing.T) {
	const n = 200
	gate := GateState{Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: planNow.Add(24 * time.Hour)}}}
	in := PlanInput{Now: planNow, Issuer: newIssuer, Gate: gate, Strategy: KubeletRestart, Margin: time.Hour}
	for i := range n {
		in.Nodes = append(in.Nodes, fleetNode(i, 1))
	}
	c := newPlanCache()
	rng := rand.New(rand.NewPCG(1, 2))
	rv := 1
	check := func(step string, wantJudged int) {
		t.Helper()
		got, want := c.plan(in), MakePlan(in)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the cached plan differs from MakePlan's:\n got %+v\nwant %+v", step, got, want)
		}
		if c.judged != wantJudged {
			t.Errorf("%s: %d nodes judged, want %d", step, c.judged, wantJudged)
		}
	}
	check("first plan", n)
	check("nothing changed", 0)

	// One node reports stale tokens.
	rv++
	stale := in.Nodes[7].DeepCopy()
	raw, _ := json.Marshal(expiredReport())
	stale.Annotations[protocol.AnnotationTokens], stale.ResourceVersion = string(raw), strconv.Itoa(rv)
	in.Nodes[7] = stale
	check("one node changed", 1)

	// A few nodes change, one is deleted, one is added.
	for range 5 {
		i := rng.IntN(len(in.Nodes))
		rv++
		nn := in.Nodes[i].DeepCopy()
		nn.Annotations[protocol.AnnotationRebootRequired] = "true"
		nn.ResourceVersion = strconv.Itoa(rv)
		in.Nodes[i] = nn
	}
	in.Nodes = append(in.Nodes[:3], in.Nodes[4:]...)
	rv++
	in.Nodes = append(in.Nodes, fleetNode(n, rv))
	before := len(c.entries)
	c.plan(in)
	if len(c.entries) != len(in.Nodes) || before != n {
		t.Errorf("cache holds %d nodes (before: %d), the fleet %d", len(c.entries), before, len(in.Nodes))
	}
	check("after a few changes", 0)

	// A node deleted and created again under the same name keeps its
	// resourceVersion nowhere: its UID tells it apart.
	reborn := in.Nodes[10].DeepCopy()
	reborn.UID = "uid-reborn"
	reborn.Annotations[protocol.AnnotationRebootRequired] = "true"
	in.Nodes[10] = reborn
	check("a node recreated", 1)

	// The old issuer's trust ends sooner: every node is judged again.
	in.Gate.Trusted[1].Expires = planNow.Add(90 * time.Minute)
	check("trust window changed", len(in.Nodes))
	in.Strategy = Reboot
	check("strategy changed", len(in.Nodes))
	in.Issuer = oldIssuer
	check("issuer changed", len(in.Nodes))
	in.WaitForReports = true
	check("waiting for reports", len(in.Nodes))
	in.Now = in.Now.Add(time.Hour)
	check("only the time moved", 0)

	// Nodes without a resourceVersion are judged every time.
	in.Nodes[0] = in.Nodes[0].DeepCopy()
	in.Nodes[0].ResourceVersion = ""
	check("no resourceVersion", 1)
	check("no resourceVersion, again", 1)
}

// countingStore counts the Nodes a sync reads from the informer's store.
type countingStore struct {
	cache.Store
	gets, lists atomic.Int64
}

func (s *countingStore) GetByKey(key string) (any, bool, error) {
	s.gets.Add(1)
	return s.Store.GetByKey(key)
}

func (s *countingStore) ListKeys() []string {
	s.lists.Add(1)
	return s.Store.ListKeys()
}

// idleFleet is a leading term over a fleet at idle: no rollout, the gate
// open, the issuer known, nothing needing work. Its Nodes come and change
// as an informer delivers them: into the store, then through the term's
// event handler; update changes one.
type idleFleet struct {
	t       *term
	nodes   *countingStore
	handler cache.ResourceEventHandler
}

func newIdleFleet(tb testing.TB, size int) *idleFleet {
	tb.Helper()
	client := fake.NewSimpleClientset()
	gate := NewFakeGate(GateState{Provider: GateNone, Open: true, Message: "no revision gate", TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: planNow.Add(24 * time.Hour)}}})
	c, err := New(Config{Client: client, Rollouts: apifake.NewSimpleClientset(), Namespace: testNS, Gate: gate, Strategy: KubeletRestart, MaxUnavailable: intstr.FromString("10%"),
		DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute, IssuerRefresh: time.Hour, TrustMargin: time.Hour,
		Auto: true, Log: zap.NewNop(), Registry: prometheus.NewRegistry(), Clock: clocktesting.NewFakeClock(planNow)})
	if err != nil {
		tb.Fatal(err)
	}
	// Discovery was read a moment ago, and the issuer seen an hour ago: the
	// sync reads no issuer and waits for no report.
	c.issuer, c.discovered, c.issuerRead = newIssuer, newIssuer, planNow
	c.observedIssuer, c.observedIssuerAt = newIssuer, planNow.Add(-time.Hour)
	nodes := &countingStore{Store: cache.NewStore(cache.MetaNamespaceKeyFunc)}
	t := c.newTerm(klog.Background(), nodes, cache.NewStore(cache.MetaNamespaceKeyFunc))
	open := true
	t.sourceOpen = &open
	tb.Cleanup(t.queue.ShutDown)
	t.index.track()
	t.recorder = events.NewFakeRecorder(100)
	f := &idleFleet{t: t, nodes: nodes, handler: nodeOnChange(t.nodes, t.parsed, func() {})}
	for i := range size {
		n := fleetNode(i, 1)
		if err := nodes.Add(n); err != nil {
			tb.Fatal(err)
		}
		f.handler.OnAdd(n, true)
	}
	return f
}

func (f *idleFleet) update(tb testing.TB, n *corev1.Node) {
	old, _, _ := f.nodes.Store.GetByKey(n.Name)
	if err := f.nodes.Update(n); err != nil {
		tb.Fatal(err)
	}
	f.handler.OnUpdate(old, n)
}

// A sync after one Node changed reads that Node alone from the cache and
// judges it alone, and plans what a sync reading every Node would.
func TestSyncReadsWhatChanged(t *testing.T) {
	const size = 300
	f := newIdleFleet(t, size)
	ctx := context.Background()
	if _, err := f.t.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.t.plans.judged; got != size {
		t.Errorf("first sync judged %d nodes, want all %d", got, size)
	}
	f.nodes.gets.Store(0)
	f.nodes.lists.Store(0)
	changed := fleetNode(7, 2)
	raw, _ := json.Marshal(expiredReport())
	changed.Annotations[protocol.AnnotationTokens] = string(raw)
	f.update(t, changed)
	if _, err := f.t.sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The changed Node is read to plan it, and once more for the status of
	// the rollout it starts (each rollout node's step): nothing else.
	if gets, lists := f.nodes.gets.Load(), f.nodes.lists.Load(); gets > 2 || lists > 0 {
		t.Errorf("a sync after one Node changed read %d Nodes and listed the cache %d times; want the one Node (twice: its plan, its rollout's status), no list", gets, lists)
	}
	// The expired node started a rollout: the sync planned it.
	st := StateOf(f.t.recordList())
	if r := st.Rollout; r == nil || len(r.Nodes) != 1 || r.Nodes[0].Name != changed.Name {
		t.Fatalf("the rollout after one node's tokens expired: %+v, want %s alone", st.Rollout, changed.Name)
	}
	if got := f.t.plans.judged; got != 1 {
		t.Errorf("judged %d nodes, want 1", got)
	}
}

// planChanged, told which nodes changed, plans what MakePlan plans over
// the whole fleet, through random changes, additions and deletions.
func TestPlanChanged(t *testing.T) {
	const n = 120
	gate := GateState{Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: planNow.Add(24 * time.Hour)}}}
	in := PlanInput{Now: planNow, Issuer: newIssuer, Gate: gate, Strategy: KubeletRestart, Margin: time.Hour}
	byName := map[string]*corev1.Node{}
	for i := range n {
		nd := fleetNode(i, 1)
		byName[nd.Name] = nd
	}
	sorted := func() []*corev1.Node {
		out := make([]*corev1.Node, 0, len(byName))
		for _, nd := range byName {
			out = append(out, nd)
		}
		slices.SortFunc(out, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
		return out
	}
	c := newPlanCache()
	rng := rand.New(rand.NewPCG(3, 4))
	rv, next := 1, n
	expired, _ := json.Marshal(expiredReport())
	for step := range 60 {
		var changed []string
		for range rng.IntN(4) {
			rv++
			switch k := rng.IntN(10); {
			case k == 0: // a node joins
				nd := fleetNode(next, rv)
				next++
				byName[nd.Name] = nd
				changed = append(changed, nd.Name)
			case k == 1 && len(byName) > 1: // a node leaves
				for name := range byName {
					delete(byName, name)
					changed = append(changed, name)
					break
				}
			default: // a node's report or annotations change
				for name, nd := range byName {
					nd = nd.DeepCopy()
					nd.ResourceVersion = strconv.Itoa(rv)
					switch rng.IntN(3) {
					case 0:
						nd.Annotations[protocol.AnnotationTokens] = string(expired)
					case 1:
						nd.Annotations[protocol.AnnotationRebootRequired] = "true"
					default:
						delete(nd.Annotations, protocol.AnnotationRebootRequired)
					}
					byName[name] = nd
					changed = append(changed, name)
					break
				}
			}
		}
		if step == 30 {
			in.Strategy = Reboot // an input changed: every node again
		}
		c.note(changed, step == 0)
		in.Nodes = sorted()
		got, want := c.planChanged(in, byName), MakePlan(in)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: the plan of the changed nodes differs from MakePlan's:\n got %+v\nwant %+v", step, got, want)
		}
		if step > 0 && step != 30 && c.judged > len(changed) {
			t.Errorf("step %d: judged %d nodes, %d changed", step, c.judged, len(changed))
		}
		// A dry run writes into the plan it was given: the cache's own is
		// untouched.
		for i := range got.Nodes {
			got.Nodes[i].Would = "mutated"
		}
	}
}

// BenchmarkIdleSync is one sync of a leader at idle over 5,000 nodes,
// after one node changed (a report, a heartbeat that moved something) and
// after every node changed (as after an issuer change, or the first sync
// of a term). nodes-read/op is how many Nodes the sync read from the
// informer's store.
func BenchmarkIdleSync(b *testing.B) {
	const size = 5000
	for _, changed := range []int{1, size} {
		b.Run(fmt.Sprintf("nodes=%d/changed=%d", size, changed), func(b *testing.B) {
			f := newIdleFleet(b, size)
			ctx := context.Background()
			if _, err := f.t.sync(ctx); err != nil {
				b.Fatal(err)
			}
			rv := 1
			judged, reads := 0, int64(0)
			var cpu time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				rv++
				for k := range changed {
					f.update(b, fleetNode((i+k)%size, rv))
				}
				reads -= f.nodes.gets.Load()
				b.StartTimer()
				cpu0 := cpuTime(b)
				if _, err := f.t.sync(ctx); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime(b) - cpu0
				reads += f.nodes.gets.Load()
				judged += f.t.plans.judged
			}
			b.ReportMetric(float64(judged)/float64(b.N), "judged/op")
			b.ReportMetric(float64(reads)/float64(b.N), "nodes-read/op")
			// CPU time, the process's (GC included): wall time on a shared
			// machine counts other processes' turns.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
