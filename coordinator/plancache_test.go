package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
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
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
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

// benchFleet is a leading term over a 5,000-node fleet at idle: no
// rollout, the gate open, the issuer known, nothing needing work.
func benchFleet(b *testing.B, size int) (*term, cache.Store) {
	b.Helper()
	client := fake.NewSimpleClientset()
	gate := NewFakeGate(GateState{Provider: GateNone, Open: true, Message: "no revision gate", TrustKnown: true,
		Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: planNow.Add(24 * time.Hour)}}})
	c, err := New(Config{Client: client, Rollouts: apifake.NewSimpleClientset(), Namespace: testNS, Gate: gate, Strategy: KubeletRestart, MaxUnavailable: intstr.FromString("10%"),
		DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute, IssuerRefresh: time.Hour, TrustMargin: time.Hour,
		Auto: true, Log: zap.NewNop(), Registry: prometheus.NewRegistry(), Clock: clocktesting.NewFakeClock(planNow)})
	if err != nil {
		b.Fatal(err)
	}
	// Discovery was read a moment ago: the sync reads no issuer.
	c.issuer, c.discovered, c.issuerRead = newIssuer, newIssuer, planNow
	nodes, cms := cache.NewStore(cache.MetaNamespaceKeyFunc), cache.NewStore(cache.MetaNamespaceKeyFunc)
	t := c.newTerm(klog.Background(), nodes, cms)
	open := true
	t.sourceOpen = &open
	b.Cleanup(t.queue.ShutDown)
	for i := range size {
		if err := nodes.Add(fleetNode(i, 1)); err != nil {
			b.Fatal(err)
		}
	}
	return t, nodes
}

// BenchmarkIdleSync is one sync of a leader at idle over 5,000 nodes,
// after one node changed (a report, a heartbeat that moved something) and
// after every node changed (as after an issuer change, or the first sync
// of a term).
func BenchmarkIdleSync(b *testing.B) {
	const size = 5000
	for _, changed := range []int{1, size} {
		b.Run(fmt.Sprintf("nodes=%d/changed=%d", size, changed), func(b *testing.B) {
			t, nodes := benchFleet(b, size)
			ctx := context.Background()
			if _, err := t.sync(ctx); err != nil {
				b.Fatal(err)
			}
			rv := 1
			judged := 0
			var cpu time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				rv++
				for k := range changed {
					if err := nodes.Update(fleetNode((i+k)%size, rv)); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				cpu0 := cpuTime(b)
				if _, err := t.sync(ctx); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime(b) - cpu0
				judged += t.plans.judged
			}
			b.ReportMetric(float64(judged)/float64(b.N), "judged/op")
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
