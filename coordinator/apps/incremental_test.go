package apps

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/protocol"
)

// An evaluation that judges only the pods that changed, or whose evidence
// left the window, finds what one judging every pod finds: the same
// transitions, totals, per-node and per-namespace counts and problems,
// through random pods coming, changing (node, phase, IPs, sources) and
// going, tokens issued, presented, replaced and failing, agents'
// reports, and evaluations at random intervals, some longer than the
// window.
func TestIncrementalEvaluationJudgesAsAFullOne(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			clock := clocktesting.NewFakeClock(t0)
			cfg := Config{Grace: grace, FailingGrace: 30 * time.Second, Window: window, RepeatEvents: time.Hour, Clock: clock}
			inc, full := NewDetector(cfg), NewDetector(cfg)
			full.judgeAll = true
			both := func(f func(d *Detector)) { f(inc); f(full) }
			const npods = 40
			pod := func(i int) Pod {
				p := Pod{UID: types.UID(fmt.Sprint("uid-", i)), Namespace: fmt.Sprint("ns-", i%4), Name: fmt.Sprint("pod-", i),
					Node: fmt.Sprint("node-", rng.IntN(5)), Running: rng.IntN(8) != 0, HostNetwork: rng.IntN(10) == 0,
					IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(npods + 5))})}}
				for range rng.IntN(3) {
					p.TokenAudiences = append(p.TokenAudiences, []string{"", "", "vault"}[rng.IntN(3)])
				}
				return p
			}
			pods := map[int]Pod{}
			tokens := map[int][]string{}
			jti := 0
			var evaluations, transitions, judged int
			for step := range 3000 {
				switch k := rng.IntN(100); {
				case k < 10: // a pod comes or changes
					i := rng.IntN(npods)
					p := pod(i)
					if old, ok := pods[i]; ok && rng.IntN(3) != 0 {
						p.Node, p.IPs = old.Node, old.IPs // most changes are the phase's
					}
					pods[i] = p
					ended := rng.IntN(20) == 0
					both(func(d *Detector) { d.SetPod(p, ended) })
					if ended {
						delete(pods, i)
					}
				case k < 13: // a pod goes
					i := rng.IntN(npods)
					delete(pods, i)
					both(func(d *Detector) { d.DeletePod(types.UID(fmt.Sprint("uid-", i))) })
				case k < 30: // a token issued
					i := rng.IntN(npods)
					jti++
					tokens[i] = append(tokens[i], fmt.Sprint("jti-", jti))
					user := "system:node:" + pods[i].Node
					if rng.IntN(6) == 0 {
						user = "system:serviceaccount:x:y"
					}
					ev := audit.Event{Kind: audit.Issued, Time: clock.Now(), User: user, Code: 201,
						Pod: audit.PodRef{Namespace: pods[i].Namespace, Name: pods[i].Name, UID: pods[i].UID}, JTI: fmt.Sprint("jti-", jti)}
					if rng.IntN(4) == 0 {
						ev.Audiences = []string{"vault"}
					}
					both(func(d *Detector) { d.Observe(ev) })
				case k < 70: // a token presented: often the newest, sometimes an old one
					i := rng.IntN(npods)
					tok := fmt.Sprint("jti-", jti)
					if ts := tokens[i]; len(ts) > 0 {
						tok = ts[max(0, len(ts)-1-rng.IntN(3))]
					}
					ev := audit.Event{Kind: audit.Presented, Time: clock.Now().Add(-time.Duration(rng.IntN(20)) * time.Second), Code: 200,
						Pod: audit.PodRef{Namespace: pods[i].Namespace, Name: pods[i].Name, UID: pods[i].UID, Node: pods[i].Node}, JTI: tok}
					both(func(d *Detector) { d.Observe(ev) })
				case k < 80: // a request fails from a pod IP
					ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(npods + 5))})
					if p, ok := pods[rng.IntN(npods)]; ok && rng.IntN(2) == 0 {
						ip = p.IPs[0]
					}
					ev := audit.Event{Kind: audit.AuthFailed, Time: clock.Now(), Code: 401, SourceIP: ip}
					both(func(d *Detector) { d.Observe(ev) })
				case k < 85: // a node's agent reports its pods' tokens
					node := fmt.Sprint("node-", rng.IntN(5))
					ids := map[string][]string{}
					for i, p := range pods {
						if p.Node == node && rng.IntN(2) == 0 {
							ids[string(p.UID)] = []string{protocol.TokenID(fmt.Sprint("jti-", jti-rng.IntN(3))) + "@" + fmt.Sprint(clock.Now().Add(-time.Duration(i)*time.Second).Unix())}
						}
					}
					both(func(d *Detector) { d.SetVolumeTokens(node, ids) })
				default: // time passes and both evaluate
					clock.Step([]time.Duration{10 * time.Second, 10 * time.Second, time.Minute, 7 * time.Minute, 20 * time.Minute}[rng.IntN(5)])
					a, b := inc.Evaluate(), full.Evaluate()
					judged += len(inc.pods)
					evaluations++
					transitions += len(a.Transitions)
					normalize(&a)
					normalize(&b)
					if !reflect.DeepEqual(a, b) {
						t.Fatalf("step %d: the incremental evaluation differs from the full one:\n got %+v\nwant %+v", step, a, b)
					}
				}
			}
			if evaluations < 20 || transitions == 0 {
				t.Fatalf("%d evaluations, %d transitions: the test exercised too little", evaluations, transitions)
			}
		})
	}
}

// normalize orders a result's problems, which come in no order.
func normalize(r *Result) {
	slices.SortFunc(r.Problems, func(a, b PodProblem) int { return cmp.Compare(a.Pod.UID, b.Pod.UID) })
}

// An evaluation at idle judges no pod again: only the pods an event,
// an agent's report or a spec change touched, and those whose evidence
// just left the window.
func TestEvaluationJudgesOnlyWhatChanged(t *testing.T) {
	h := newHarness(t)
	for i := range 100 {
		p := testPod(fmt.Sprint("p", i), "n1", fmt.Sprintf("10.0.1.%d", i))
		h.pods[p.Name] = p
		h.d.SetPod(p, false)
	}
	h.present("p1", "j1")
	h.present("p2", "j2")
	first := h.eval()
	if first.Followed != 100 || first.Healthy != 2 || first.Unobserved != 98 {
		t.Fatalf("first evaluation: %+v", first)
	}
	if n := len(h.d.dirty); n != 0 {
		t.Fatalf("%d pods left to judge after an evaluation", n)
	}
	h.clock.Step(10 * time.Second)
	h.present("p3", "j3")
	if n := len(h.d.dirty); n != 1 {
		t.Errorf("one presentation left %d pods to judge, want 1", n)
	}
	res := h.eval()
	if res.Healthy != 3 || res.Unobserved != 97 {
		t.Errorf("after p3 authenticated: healthy %d, unobserved %d; want 3, 97", res.Healthy, res.Unobserved)
	}
	// The three observed pods are due when their requests leave the
	// window, and only they.
	if n := h.d.due.Len(); n != 3 {
		t.Errorf("%d pods due to be judged again by time alone, want 3", n)
	}
	h.clock.Step(window - 5*time.Second)
	res = h.eval()
	if res.Healthy != 1 || res.Unobserved != 99 {
		t.Errorf("once p1 and p2's requests left the window: healthy %d, unobserved %d; want 1, 99", res.Healthy, res.Unobserved)
	}
	if n := h.d.due.Len(); n != 1 {
		t.Errorf("%d pods due, want p3 alone", n)
	}
	if res.Nodes["n1"] != (NodeCounts{Pods: 100, Healthy: 1, Unobserved: 99}) {
		t.Errorf("node n1: %+v", res.Nodes["n1"])
	}
}
