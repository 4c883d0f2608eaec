package apps

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/protocol"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

const grace, window = 2 * time.Minute, 15 * time.Minute

func testPod(name, node, ip string) Pod {
	p := Pod{UID: types.UID("uid-" + name), Namespace: "apps", Name: name, Node: node, Running: true,
		Workload: "Deployment/" + name, TokenAudiences: []string{""}}
	if ip != "" {
		p.IPs = []netip.Addr{netip.MustParseAddr(ip)}
	}
	return p
}

// harness drives a detector on a fake clock. Events happen "now".
type harness struct {
	t     *testing.T
	clock *clocktesting.FakeClock
	d     *Detector
	pods  map[string]Pod
	// transitions collects every transition seen, as "pod condition +/-".
	transitions []string
	all         []Transition
}

func newHarness(t *testing.T, pods ...Pod) *harness {
	h := &harness{t: t, clock: clocktesting.NewFakeClock(t0), pods: map[string]Pod{}}
	h.d = NewDetector(Config{Grace: grace, Window: window, RepeatEvents: time.Hour, Clock: h.clock})
	for _, p := range pods {
		h.pods[p.Name] = p
		h.d.SetPod(p, false)
	}
	return h
}

func (h *harness) ref(name string) audit.PodRef {
	p := h.pods[name]
	return audit.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Node: p.Node}
}

// issue: the kubelet of the pod's node is issued jti for it.
func (h *harness) issue(pod, jti string) {
	h.issueBy(pod, jti, "system:node:"+h.pods[pod].Node)
}

func (h *harness) issueBy(pod, jti, user string, auds ...string) {
	ref := h.ref(pod)
	ref.Node = ""
	h.d.Observe(audit.Event{Kind: audit.Issued, Time: h.clock.Now(), User: user, Code: 201, Pod: ref, JTI: jti, Audiences: auds})
}

func (h *harness) present(pod, jti string) {
	h.d.Observe(audit.Event{Kind: audit.Presented, Time: h.clock.Now(), User: "system:serviceaccount:apps:default", Code: 200,
		Pod: h.ref(pod), JTI: jti})
}

func (h *harness) fail(ip string) {
	h.d.Observe(audit.Event{Kind: audit.AuthFailed, Time: h.clock.Now(), Code: 401, SourceIP: netip.MustParseAddr(ip)})
}

// run repeats every for d, calling f at each step, then evaluates, as
// the coordinator does every 10 s.
func (h *harness) run(d, every time.Duration, f func()) Result {
	var res Result
	for end := h.clock.Now().Add(d); h.clock.Now().Before(end); {
		if f != nil {
			f()
		}
		h.clock.Step(every)
		res = h.eval()
	}
	return res
}

func (h *harness) eval() Result {
	res := h.d.Evaluate()
	h.all = append(h.all, res.Transitions...)
	for _, tr := range res.Transitions {
		sign := "-"
		if tr.Set {
			sign = "+"
		}
		h.transitions = append(h.transitions, fmt.Sprintf("%s %s%s @%s", tr.Pod.Name, tr.Condition, sign, tr.Pod.Node))
	}
	return res
}

type want struct {
	followed, healthy, unobserved, stale, failing int
}

func (h *harness) expect(res Result, w want) {
	h.t.Helper()
	got := want{res.Followed, res.Healthy, res.Unobserved, res.Stale, res.Failing}
	if got != w {
		h.t.Errorf("at +%s: followed/healthy/unobserved/stale/failing = %+v; want %+v", h.clock.Now().Sub(t0), got, w)
	}
}

func TestDetectorRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		pods []Pod
		// script drives the pods; it returns the last evaluation.
		script func(h *harness) Result
		want   want
		// transitions are every transition, in order.
		transitions []string
	}{
		{
			name: "a reloading app is never stale",
			pods: []Pod{testPod("web", "n1", "10.1.0.5")},
			script: func(h *harness) Result {
				h.issue("web", "j1")
				jti := "j1"
				h.run(48*time.Minute, 10*time.Second, func() { h.present("web", jti) })
				h.issue("web", "j2")
				// It reads the new file within client-go's minute.
				h.run(time.Minute, 10*time.Second, func() { h.present("web", "j1") })
				jti = "j2"
				return h.run(30*time.Minute, 10*time.Second, func() { h.present("web", jti) })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "a caching app is stale once its token is replaced, past the grace",
			pods: []Pod{testPod("cache", "n1", "10.1.0.6")},
			script: func(h *harness) Result {
				h.issue("cache", "j1")
				h.run(48*time.Minute, 10*time.Second, func() { h.present("cache", "j1") })
				h.issue("cache", "j2")
				res := h.run(grace, 10*time.Second, func() { h.present("cache", "j1") })
				if res.Stale != 0 {
					h.t.Errorf("stale within the grace after the refresh")
				}
				return h.run(20*time.Second, 10*time.Second, func() { h.present("cache", "j1") })
			},
			want:        want{followed: 1, stale: 1},
			transitions: []string{"cache app-stale+ @n1"},
		},
		{
			name: "a caching app stops being stale a window after it last presents the old token",
			pods: []Pod{testPod("cache", "n1", "10.1.0.6")},
			script: func(h *harness) Result {
				h.issue("cache", "j1")
				h.present("cache", "j1")
				h.clock.Step(time.Minute)
				h.issue("cache", "j2")
				h.run(grace+20*time.Second, 10*time.Second, func() { h.present("cache", "j1") })
				// Its container restarts and reads the current file.
				res := h.run(window-time.Minute, 10*time.Second, func() { h.present("cache", "j2") })
				h.expect(res, want{followed: 1, stale: 1})
				return h.run(time.Minute+20*time.Second, 10*time.Second, func() { h.present("cache", "j2") })
			},
			want:        want{followed: 1, healthy: 1},
			transitions: []string{"cache app-stale+ @n1", "cache app-stale- @n1"},
		},
		{
			name: "a token issued before the detector started is stale if presented before the next issuance",
			pods: []Pod{testPod("old", "n1", "10.1.0.7")},
			script: func(h *harness) Result {
				h.run(10*time.Minute, 10*time.Second, func() { h.present("old", "j0") })
				h.issue("old", "j1")
				return h.run(grace+20*time.Second, 10*time.Second, func() { h.present("old", "j0") })
			},
			want:        want{followed: 1, stale: 1},
			transitions: []string{"old app-stale+ @n1"},
		},
		{
			name: "a token first presented after the newest issuance seen is not judged (its own issuance may be late)",
			pods: []Pod{testPod("late", "n1", "10.1.0.8")},
			script: func(h *harness) Result {
				h.issue("late", "j1")
				h.clock.Step(time.Minute)
				return h.run(30*time.Minute, 10*time.Second, func() { h.present("late", "j2") })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "a token issued by the pod's own service account (a tenant's TokenRequest) does not make it stale",
			pods: []Pod{testPod("self", "n1", "10.1.0.9")},
			script: func(h *harness) Result {
				h.issue("self", "j1")
				h.present("self", "j1")
				h.issueBy("self", "t1", "system:serviceaccount:apps:default")
				return h.run(20*time.Minute, 10*time.Second, func() { h.present("self", "j1"); h.present("self", "t1") })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "a token another node's kubelet was issued for the pod does not make it stale",
			pods: []Pod{testPod("web", "n1", "10.1.0.10")},
			script: func(h *harness) Result {
				h.issue("web", "j1")
				h.present("web", "j1")
				h.issueBy("web", "x1", "system:node:n2")
				return h.run(20*time.Minute, 10*time.Second, func() { h.present("web", "j1") })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "a token issued for another audience (a CSI driver's) does not make the app stale",
			pods: []Pod{testPod("csi", "n1", "10.1.0.11")},
			script: func(h *harness) Result {
				h.issue("csi", "j1")
				h.present("csi", "j1")
				h.issueBy("csi", "v1", "system:node:n1", "vault")
				return h.run(20*time.Minute, 10*time.Second, func() { h.present("csi", "j1") })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "two sources of one audience are not told apart: not judged",
			pods: []Pod{func() Pod { p := testPod("two", "n1", "10.1.0.12"); p.TokenAudiences = []string{"", ""}; return p }()},
			script: func(h *harness) Result {
				h.issue("two", "long")
				h.issue("two", "short")
				return h.run(20*time.Minute, 10*time.Second, func() { h.present("two", "long") })
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "a second source of another audience: each token is judged against its own source's newest",
			pods: []Pod{func() Pod {
				p := testPod("multi", "n1", "10.1.0.13")
				p.TokenAudiences = []string{"", "vault"}
				return p
			}()},
			script: func(h *harness) Result {
				h.issue("multi", "api1")
				h.issueBy("multi", "vault1", "system:node:n1", "vault")
				h.clock.Step(10 * time.Minute)
				h.issueBy("multi", "vault2", "system:node:n1", "vault")
				res := h.run(10*time.Minute, 10*time.Second, func() { h.present("multi", "api1") })
				h.expect(res, want{followed: 1, healthy: 1})
				h.issue("multi", "api2")
				return h.run(grace+20*time.Second, 10*time.Second, func() { h.present("multi", "api1") })
			},
			want:        want{followed: 1, stale: 1},
			transitions: []string{"multi app-stale+ @n1"},
		},
		{
			name: "requests failing from a pod's IP past the grace make it app-failing",
			pods: []Pod{testPod("cache", "n1", "10.1.0.20")},
			script: func(h *harness) Result {
				h.present("cache", "j1")
				res := h.run(grace, 10*time.Second, func() { h.fail("10.1.0.20") })
				h.expect(res, want{followed: 1, healthy: 1})
				return h.run(20*time.Second, 10*time.Second, func() { h.fail("10.1.0.20") })
			},
			want:        want{followed: 1, failing: 1},
			transitions: []string{"cache app-failing+ @n1"},
		},
		{
			name: "an app that reloads after a 401 is not app-failing",
			pods: []Pod{testPod("web", "n1", "10.1.0.21")},
			script: func(h *harness) Result {
				h.present("web", "j1")
				return h.run(30*time.Minute, 3*time.Minute, func() {
					h.fail("10.1.0.21")
					h.clock.Step(time.Second)
					h.present("web", "j1")
				})
			},
			want: want{followed: 1, healthy: 1},
		},
		{
			name: "an app-failing pod recovers when it authenticates again",
			pods: []Pod{testPod("web", "n1", "10.1.0.22")},
			script: func(h *harness) Result {
				h.run(grace+20*time.Second, 10*time.Second, func() { h.fail("10.1.0.22") })
				return h.run(20*time.Second, 10*time.Second, func() { h.present("web", "j2") })
			},
			want:        want{followed: 1, healthy: 1},
			transitions: []string{"web app-failing+ @n1", "web app-failing- @n1"},
		},
		{
			name: "failed requests from a hostNetwork pod's IP are not attributed",
			pods: []Pod{func() Pod { p := testPod("hostnet", "n1", "192.168.0.1"); p.HostNetwork = true; return p }()},
			script: func(h *harness) Result {
				return h.run(10*time.Minute, 10*time.Second, func() { h.fail("192.168.0.1") })
			},
			want: want{followed: 1, unobserved: 1},
		},
		{
			name: "failed requests from an IP two pods hold are not attributed",
			pods: []Pod{testPod("a", "n1", "10.1.0.30"), testPod("b", "n2", "10.1.0.30")},
			script: func(h *harness) Result {
				return h.run(10*time.Minute, 10*time.Second, func() { h.fail("10.1.0.30") })
			},
			want: want{followed: 2, unobserved: 2},
		},
		{
			name: "failed requests from a pod IP shared with a hostNetwork pod are not attributed",
			pods: []Pod{testPod("a", "n1", "10.1.0.31"), func() Pod { p := testPod("h", "n1", "10.1.0.31"); p.HostNetwork = true; return p }()},
			script: func(h *harness) Result {
				return h.run(10*time.Minute, 10*time.Second, func() { h.fail("10.1.0.31") })
			},
			want: want{followed: 2, unobserved: 2},
		},
		{
			name: "failed requests dated before the pod had its IP were another pod's",
			pods: []Pod{testPod("new", "n1", "10.1.0.32")},
			script: func(h *harness) Result {
				before := h.clock.Now().Add(-time.Minute)
				for i := range 30 {
					h.d.Observe(audit.Event{Kind: audit.AuthFailed, Time: before.Add(-time.Duration(30-i) * 10 * time.Second), Code: 401,
						SourceIP: netip.MustParseAddr("10.1.0.32")})
				}
				return h.run(time.Minute, 10*time.Second, nil)
			},
			want: want{followed: 1, unobserved: 1},
		},
		{
			name: "a pod that never authenticates is unobserved, never healthy",
			pods: []Pod{testPod("quiet", "n1", "10.1.0.40"), testPod("talks", "n1", "10.1.0.41")},
			script: func(h *harness) Result {
				h.issue("quiet", "q1")
				res := h.run(time.Minute, 10*time.Second, func() { h.present("talks", "t1") })
				h.expect(res, want{followed: 2, healthy: 1, unobserved: 1})
				// Silent for a window: unobserved again.
				return h.run(window+20*time.Second, time.Minute, nil)
			},
			want: want{followed: 2, unobserved: 2},
		},
		{
			name: "a pod without a token source, or not running, is not followed",
			pods: []Pod{func() Pod { p := testPod("notoken", "n1", "10.1.0.50"); p.TokenAudiences = nil; return p }(),
				func() Pod { p := testPod("pending", "n1", ""); p.Running = false; return p }()},
			script: func(h *harness) Result { return h.run(time.Minute, 10*time.Second, nil) },
			want:   want{},
		},
		{
			name: "an event naming a pod's UID with another name or node is not evidence",
			pods: []Pod{testPod("web", "n1", "10.1.0.60")},
			script: func(h *harness) Result {
				ref := h.ref("web")
				ref.Node = "n9"
				h.d.Observe(audit.Event{Kind: audit.Presented, Time: h.clock.Now(), Pod: ref, JTI: "j1"})
				ref = h.ref("web")
				ref.Name = "other"
				h.d.Observe(audit.Event{Kind: audit.Presented, Time: h.clock.Now(), Pod: ref, JTI: "j1"})
				return h.run(time.Minute, 10*time.Second, nil)
			},
			want: want{followed: 1, unobserved: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.pods...)
			res := tc.script(h)
			h.expect(res, tc.want)
			if fmt.Sprint(h.transitions) != fmt.Sprint(tc.transitions) && (len(h.transitions) > 0 || len(tc.transitions) > 0) {
				t.Errorf("transitions %q; want %q", h.transitions, tc.transitions)
			}
		})
	}
}

// A deleted pod's state goes: nothing is kept of it, its IP no longer
// attributes failures, and an app-stale pod leaves the counts without an
// Event (there is no pod to put it on).
func TestDetectorDropsDeletedPods(t *testing.T) {
	p := testPod("cache", "n1", "10.1.0.70")
	h := newHarness(t, p)
	h.issue("cache", "j1")
	h.present("cache", "j1")
	h.clock.Step(time.Minute)
	h.issue("cache", "j2")
	h.expect(h.run(grace+20*time.Second, 10*time.Second, func() { h.present("cache", "j1") }), want{followed: 1, stale: 1})
	h.d.DeletePod(p.UID)
	if n := h.d.Pods(); n != 0 {
		t.Errorf("after the delete the detector holds %d pods; want 0", n)
	}
	if len(h.d.byIP) != 0 || len(h.d.sharedIP) != 0 {
		t.Errorf("after the delete the IP index holds %v and %v; want nothing", h.d.byIP, h.d.sharedIP)
	}
	h.transitions = nil
	h.fail("10.1.0.70")
	h.present("cache", "j1")
	res := h.eval()
	h.expect(res, want{})
	if len(h.transitions) != 0 || len(res.Problems) != 0 {
		t.Errorf("a deleted pod gave transitions %q, problems %v", h.transitions, res.Problems)
	}
	if got := res.Events["auth_failed"]["unknown_pod"] + res.Events["presented"]["unknown_pod"]; got != 2 {
		t.Errorf("events about the deleted pod counted as unknown: %d; want 2", got)
	}
	// A pod that ends (Succeeded, Failed) is dropped the same way.
	h.d.SetPod(p, false)
	h.d.SetPod(p, true)
	if n := h.d.Pods(); n != 0 {
		t.Errorf("after the pod ended the detector holds %d pods; want 0", n)
	}
}

// Whatever the events, a pod keeps a bounded number of tokens.
func TestDetectorBoundsTokensPerPod(t *testing.T) {
	h := newHarness(t, testPod("busy", "n1", "10.1.0.80"))
	for i := range 1000 {
		h.issue("busy", fmt.Sprint("i", i))
		h.issueBy("busy", fmt.Sprint("o", i), "system:serviceaccount:apps:default")
		h.present("busy", fmt.Sprint("p", i))
	}
	ps := h.d.pods["uid-busy"]
	if ps.nIssued != 1000 || len(ps.issued) != maxIssued || len(ps.presented) != maxPresented || len(ps.other) != maxOther {
		t.Errorf("rings: issued %d/%d, presented %d, other %d", ps.nIssued, len(ps.issued), len(ps.presented), len(ps.other))
	}
	// The newest issuance is still known after the ring wrapped.
	if n, ok := ps.newest(h.d.audKey(nil)); !ok || n.jti != h.d.hash("i999") {
		t.Errorf("the newest issuance is lost from the ring")
	}
}

// Entering a condition again within an hour asks for no second Event.
func TestDetectorRepeatedTransitionIsQuiet(t *testing.T) {
	h := newHarness(t, testPod("web", "n1", "10.1.0.90"))
	var repeats []bool
	for range 2 {
		h.run(grace+20*time.Second, 10*time.Second, func() { h.fail("10.1.0.90") })
		res := h.run(20*time.Second, 10*time.Second, func() { h.present("web", "j") })
		if res.Failing != 0 {
			t.Fatal("still failing after authenticating")
		}
	}
	for _, tr := range h.all {
		if tr.Set {
			repeats = append(repeats, tr.Repeat)
		}
	}
	if fmt.Sprint(repeats) != "[false true]" {
		t.Errorf("repeat flags of the two app-failing transitions: %v; want [false true]", repeats)
	}
}

// Where the audit events do not name the pod a token was issued for
// (OpenShift's default Metadata profile), what the pod's agent reports its
// volumes hold decides: an app presenting a token its volumes no longer
// hold, past the grace after the newest one was issued, is app-stale, and
// found as soon as the report comes, even if it comes late; an app that
// reloads within the grace is not; a token someone other than a kubelet
// had issued is never judged; a token first presented after the report
// (newer than what it says) is not judged; a report about a pod of another
// node is not taken.
func TestDetectorMatchesVolumeTokensWithoutTheBoundPod(t *testing.T) {
	h := newHarness(t, testPod("cache", "n1", "10.1.0.6"), testPod("web", "n1", "10.1.0.5"), testPod("minted", "n1", "10.1.0.7"),
		testPod("other", "n2", "10.1.0.8"))
	unbound := func(jti, user string) {
		h.d.Observe(audit.Event{Kind: audit.Issued, Time: h.clock.Now(), User: user, Code: 201, JTI: jti})
	}
	volume := func(node string, byPod map[string]map[string]time.Time) {
		pods := map[string][]string{}
		for name, toks := range byPod {
			for jti, iat := range toks {
				uid := string(h.pods[name].UID)
				pods[uid] = append(pods[uid], protocol.TokenIDEntry(protocol.TokenID(jti), iat))
			}
		}
		h.d.SetVolumeTokens(node, pods)
	}
	// Every app presents its first token; the kubelet's issuances name no
	// pod, and a namespace user has a token minted for "minted".
	for _, jti := range []string{"c1", "w1", "m1"} {
		unbound(jti, "system:node:n1")
	}
	unbound("x1", "alice")
	h.run(10*time.Minute, 10*time.Second, func() {
		h.present("cache", "c1")
		h.present("web", "w1")
		h.present("minted", "m1")
		h.present("other", "o1")
	})
	// The kubelet refreshes every token; web reloads within a minute, cache
	// never; minted's app also presents the minted token.
	refresh := h.clock.Now()
	for _, jti := range []string{"c2", "w2", "m2"} {
		unbound(jti, "system:node:n1")
	}
	h.run(time.Minute, 10*time.Second, func() {
		h.present("cache", "c1")
		h.present("web", "w1")
		h.present("minted", "x1")
	})
	res := h.run(20*time.Minute, 10*time.Second, func() {
		h.present("cache", "c1")
		h.present("web", "w2")
		h.present("minted", "x1")
		h.present("other", "o1")
	})
	if res.Stale != 0 {
		t.Fatalf("stale %d before any report of the volumes; no evidence yet", res.Stale)
	}
	// The agent's report comes (late, as an hourly one may): n1's volumes,
	// and a report from n1 about n2's pod, which is not n1's to make.
	volume("n1", map[string]map[string]time.Time{
		"cache": {"c2": refresh}, "web": {"w2": refresh}, "minted": {"m2": refresh}, "other": {"o2": refresh}})
	res = h.run(30*time.Second, 10*time.Second, func() {
		h.present("cache", "c1")
		h.present("web", "w2")
		h.present("minted", "x1")
		h.present("other", "o1")
		// A token newer than the report: not judged.
		h.present("web", "w3")
	})
	h.expect(res, want{followed: 4, healthy: 3, stale: 1})
	if len(res.Problems) != 1 || res.Problems[0].Pod.Name != "cache" || !res.Problems[0].ReplacedAt.Equal(refresh) {
		t.Errorf("problems %+v; want cache, its token replaced at %s", res.Problems, refresh)
	}
}

// A pod whose every request is refused is app-failing after the failing
// grace, not after the (longer) app-stale grace; one whose app
// authenticates again within it, as a reloading app does after the
// kubelet's new token, never is.
func TestDetectorFailingGraceIsItsOwn(t *testing.T) {
	const failingGrace = 30 * time.Second
	h := newHarness(t, testPod("cache", "n1", "10.1.0.91"), testPod("reload", "n1", "10.1.0.92"))
	h.d = NewDetector(Config{Grace: grace, FailingGrace: failingGrace, Window: window, RepeatEvents: time.Hour, Clock: h.clock})
	for _, p := range h.pods {
		h.d.SetPod(p, false)
	}
	h.fail("10.1.0.91")
	h.fail("10.1.0.92")
	h.clock.Step(time.Second)
	h.issue("cache", "new-cache")
	h.issue("reload", "new-reload")
	step := 0
	res := h.run(failingGrace+10*time.Second, 5*time.Second, func() {
		h.fail("10.1.0.91")
		if step < 3 {
			h.fail("10.1.0.92")
		} else {
			h.present("reload", "new")
		}
		step++
	})
	if failingGrace+10*time.Second >= grace {
		t.Fatalf("the test needs a failing grace well below the grace %s", grace)
	}
	h.expect(res, want{followed: 2, healthy: 1, failing: 1})
	if len(res.Problems) != 1 || res.Problems[0].Pod.Name != "cache" || !res.Problems[0].Failing {
		t.Errorf("problems %+v; want cache app-failing alone", res.Problems)
	}
}

// Without a failing grace the detector takes the app-stale grace for it.
func TestDetectorFailingGraceDefaultsToGrace(t *testing.T) {
	h := newHarness(t, testPod("cache", "n1", "10.1.0.91"))
	res := h.run(grace-10*time.Second, 5*time.Second, func() { h.fail("10.1.0.91") })
	h.expect(res, want{followed: 1, unobserved: 1})
	res = h.run(20*time.Second, 5*time.Second, func() { h.fail("10.1.0.91") })
	h.expect(res, want{followed: 1, failing: 1})
}

// Failures with the token the pod had when they began may be that
// token's, which the node's remediation replaces: the failing grace runs
// from a new token, so a pod refused while its node waits its turn is not
// blamed before the (longer) grace, and one refused on past the failing
// grace with the new token is.
func TestDetectorFailingGraceRunsFromTheNewToken(t *testing.T) {
	const failingGrace = 30 * time.Second
	h := newHarness(t, testPod("cache", "n1", "10.1.0.91"))
	h.d = NewDetector(Config{Grace: grace, FailingGrace: failingGrace, Window: window, RepeatEvents: time.Hour, Clock: h.clock})
	h.d.SetPod(h.pods["cache"], false)
	failing := func() { h.fail("10.1.0.91") }
	res := h.run(60*time.Second, 5*time.Second, failing)
	h.expect(res, want{followed: 1, unobserved: 1})
	h.issue("cache", "new")
	res = h.run(20*time.Second, 5*time.Second, failing)
	h.expect(res, want{followed: 1, unobserved: 1})
	res = h.run(15*time.Second, 5*time.Second, failing)
	h.expect(res, want{followed: 1, failing: 1})
}

func TestOptionsFailingGrace(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatalf("default options: %v", err)
	}
	if d := DefaultOptions(); d.FailingGrace <= 0 || d.FailingGrace >= d.Grace {
		t.Errorf("default failing grace %s; want positive and below the grace %s", d.FailingGrace, d.Grace)
	}
	o := DefaultOptions()
	o.FailingGrace = o.Grace + time.Second
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "failing grace") {
		t.Errorf("a failing grace above the grace: %v; want an error naming it", err)
	}
}
