package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

func TestTokenReport(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	tok := func(uid string, st protocol.State, iss string, refresh time.Duration) scan.Token {
		return scan.Token{PodUID: uid, Namespace: "ns", Pod: "p-" + uid, State: st, Issuer: iss, RefreshAt: at.Add(refresh)}
	}
	r := &scan.Report{Tokens: []scan.Token{
		tok("a", protocol.StateIssuerMismatch, "https://old", time.Hour),
		tok("a", protocol.StateIssuerMismatch, "https://old", 3*time.Hour+time.Second),
		tok("b", protocol.StateOverdue, "https://new", -time.Hour),
		tok("c", protocol.StateFresh, "https://new", 2*time.Hour),
		tok("d", protocol.StateOrphaned, "https://older", time.Hour),
	}}
	got := tokenReport(r, "https://new")
	if got.Tokens != 4 || got.Stale[protocol.StateIssuerMismatch] != 2 || got.Stale[protocol.StateOverdue] != 1 || got.StaleTotal() != 3 {
		t.Errorf("counts: %+v", got)
	}
	if len(got.Issuers) != 2 || got.Issuers[0].Issuer != "https://new" || got.Issuers[0].Tokens != 2 || !got.Issuers[0].LastRefreshAt.IsZero() {
		t.Errorf("the current issuer: %+v", got.Issuers)
	}
	// The old issuer's last refresh, rounded up to the minute (the safe side).
	if got.Issuers[1].Issuer != "https://old" || got.Issuers[1].Tokens != 2 || !got.Issuers[1].LastRefreshAt.Equal(at.Add(3*time.Hour+time.Minute)) {
		t.Errorf("the old issuer: %+v", got.Issuers)
	}
	if len(got.StalePods) != 2 || got.StalePods[0].UID != "a" || got.StalePods[1].UID != "b" {
		t.Errorf("stale pods: %+v", got.StalePods)
	}

	// A routine refresh (fresh -> refresh-due -> fresh with a new refreshAt)
	// must not change the annotation.
	before, _ := json.Marshal(got)
	r.Tokens[3].State, r.Tokens[3].RefreshAt = protocol.StateRefreshDue, at.Add(5*time.Hour)
	after, _ := json.Marshal(tokenReport(r, "https://new"))
	if string(before) != string(after) {
		t.Errorf("a routine refresh rewrote the report:\n%s\n%s", before, after)
	}
}

func TestTokenReportCapsPods(t *testing.T) {
	r := &scan.Report{}
	for i := range protocol.MaxStalePods + 10 {
		r.Tokens = append(r.Tokens, scan.Token{PodUID: fmt.Sprintf("u%04d", i), Namespace: "ns", Pod: fmt.Sprint(i), State: protocol.StateExpired, Issuer: "https://x"})
	}
	got := tokenReport(r, "https://x")
	if len(got.StalePods) != protocol.MaxStalePods || !got.StalePodsTruncated || got.Stale[protocol.StateExpired] != protocol.MaxStalePods+10 {
		t.Errorf("cap: %d pods, truncated %v, %v", len(got.StalePods), got.StalePodsTruncated, got.Stale)
	}
}

// The tokens annotation stays within its byte budget whatever the volumes
// hold: thousands of stale pods with the longest names, and many issuers.
// The stale pods go first, then all but the issuers with the most tokens;
// the counts stay whole.
func TestTokenReportFitsItsByteBudget(t *testing.T) {
	long := func(prefix string, n, i int) string {
		s := fmt.Sprintf("%s-%d-", prefix, i)
		return s + strings.Repeat("x", n-len(s))
	}
	build := func(pods, issuers int) *scan.Report {
		r := &scan.Report{}
		for i := range pods {
			iss := testIssuer
			if issuers > 0 {
				iss = long("https://issuer", 256, i%issuers)
			}
			r.Tokens = append(r.Tokens, scan.Token{PodUID: fmt.Sprintf("%08d-0000-4000-8000-000000000000", i),
				Namespace: long("ns", 63, i%40), Pod: long("pod", 253, i), State: protocol.StateOverdue, Issuer: iss})
		}
		return r
	}
	cases := []struct {
		name                  string
		pods, issuers         int
		podsCut, issuersCut   bool
		wantPodsAtLeast, kept int
	}{
		{"a few stale pods fit", 10, 0, false, false, 10, 1},
		{"thousands of pods with long names", 3000, 0, true, false, 20, 1},
		{"thousands of pods and many long issuers", 3000, 200, true, false, 0, protocol.MaxIssuers},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep, raw, err := fitReport(tokenReport(build(c.pods, c.issuers), testIssuer), protocol.MaxTokenReportBytes)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) > protocol.MaxTokenReportBytes {
				t.Errorf("%d bytes, over the budget of %d", len(raw), protocol.MaxTokenReportBytes)
			}
			if rep.StalePodsTruncated != c.podsCut || rep.IssuersTruncated != c.issuersCut {
				t.Errorf("pods cut %v, issuers cut %v; want %v, %v", rep.StalePodsTruncated, rep.IssuersTruncated, c.podsCut, c.issuersCut)
			}
			if len(rep.StalePods) < c.wantPodsAtLeast || len(rep.Issuers) != c.kept {
				t.Errorf("%d stale pods (want at least %d), %d issuers (want %d)", len(rep.StalePods), c.wantPodsAtLeast, len(rep.Issuers), c.kept)
			}
			if rep.Stale[protocol.StateOverdue] != c.pods || rep.Tokens != c.pods {
				t.Errorf("counts cut: %d tokens, %v stale; want %d", rep.Tokens, rep.Stale, c.pods)
			}
			back, err := protocol.ParseTokenReport(string(raw))
			if err != nil || !reflect.DeepEqual(back, rep) {
				t.Errorf("what is written reads back as %+v, %v", back, err)
			}
		})
	}
	// Under a budget too small for every issuer kept, those with the most
	// tokens stay, in name order (the overflow entry holds the most).
	r := build(200, 0)
	for i := range r.Tokens {
		r.Tokens[i].Issuer = long("https://issuer", 256, i%50)
		if i < 60 {
			r.Tokens[i].Issuer = long("https://big", 256, i%5)
		}
	}
	rep, _, _ := fitReport(tokenReport(r, testIssuer), 2000)
	var names []string
	for _, it := range rep.Issuers {
		names = append(names, it.Issuer[:min(len(it.Issuer), len("https://big-0"))])
	}
	if !rep.IssuersTruncated || strings.Join(names, ",") != "(other issuer,https://big-0,https://big-1,https://big-2" {
		t.Errorf("kept issuers %v (truncated %v), want the four with the most tokens", names, rep.IssuersTruncated)
	}
}

// What the agent writes goes through the budget.
func TestWriteReportKeepsTheBudget(t *testing.T) {
	cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	a, err := New(Config{NodeName: "node-1", KubeletRoot: t.TempDir(), Client: cs.CoreV1().Nodes(), Discovery: oidcDiscovery(testIssuer),
		Interval: time.Minute, IssuerRefresh: time.Minute, Clock: clocktesting.NewFakeClock(time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	r := &scan.Report{}
	for i := range 5000 {
		r.Tokens = append(r.Tokens, scan.Token{PodUID: fmt.Sprintf("u%d", i), Namespace: "ns", Pod: strings.Repeat("p", 240) + fmt.Sprint(i), State: protocol.StateExpired, Issuer: testIssuer})
	}
	a.writeReport(context.Background(), tokenReport(r, testIssuer))
	n, _ := cs.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
	v := n.Annotations[protocol.AnnotationTokens]
	rep, err := protocol.ParseTokenReport(v)
	if len(v) > protocol.MaxTokenReportBytes || err != nil || !rep.StalePodsTruncated || rep.Stale[protocol.StateExpired] != 5000 {
		t.Errorf("annotation of %d bytes: %+v, %v", len(v), rep.Stale, err)
	}
}

// Only the healthy tokens' counts may wait for the hourly rewrite: a change
// in anything the coordinator acts on is an alarm change.
func TestSameAlarms(t *testing.T) {
	base := func() protocol.TokenReport {
		return protocol.TokenReport{Issuer: "https://new", Tokens: 10, Stale: map[protocol.State]int{protocol.StateIssuerMismatch: 2},
			Issuers:   []protocol.IssuerTokens{{Issuer: "https://new", Tokens: 8}, {Issuer: "https://old", Tokens: 2}},
			StalePods: []protocol.PodRef{{Namespace: "ns", Name: "p", UID: "u"}}}
	}
	cases := []struct {
		name   string
		change func(*protocol.TokenReport)
		same   bool
	}{
		{"total", func(r *protocol.TokenReport) { r.Tokens = 12 }, true},
		{"the expected issuer's count", func(r *protocol.TokenReport) { r.Issuers[0].Tokens = 9 }, true},
		{"an old issuer's count", func(r *protocol.TokenReport) { r.Issuers[1].Tokens = 1 }, false},
		{"an old issuer's last refresh", func(r *protocol.TokenReport) { r.Issuers[1].LastRefreshAt = time.Unix(60, 0) }, false},
		{"the stale counts", func(r *protocol.TokenReport) { r.Stale[protocol.StateOverdue] = 1 }, false},
		{"the stale pods", func(r *protocol.TokenReport) { r.StalePods = nil }, false},
		{"the expected issuer", func(r *protocol.TokenReport) { r.Issuer = "https://old" }, false},
		{"a truncation", func(r *protocol.TokenReport) { r.StalePodsTruncated = true }, false},
	}
	for _, c := range cases {
		r := base()
		c.change(&r)
		if got := sameAlarms(base(), r); got != c.same {
			t.Errorf("%s changed: same alarms %v, want %v", c.name, got, c.same)
		}
	}
}

// The report carries each live pod's token IDs with their issue times, for
// app detection where the audit events lack the bound pod; a refresh
// changes them without making the report differ in what the coordinator
// acts on (so it waits for the next write), and they are the first detail
// left out when the report outgrows its byte budget.
func TestTokenReportCarriesTokenIDs(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	tok := func(uid, jti string, st protocol.State, iat time.Time) scan.Token {
		return scan.Token{PodUID: uid, Namespace: "ns", Pod: "p-" + uid, State: st, Issuer: "https://new", IssuedAt: iat, ID: protocol.TokenID(jti)}
	}
	r := &scan.Report{Tokens: []scan.Token{
		tok("a", "jti-a1", protocol.StateFresh, at),
		tok("a", "jti-a2", protocol.StateFresh, at.Add(time.Minute)),
		tok("b", "jti-b", protocol.StateFresh, at),
		tok("gone", "jti-gone", protocol.StateOrphaned, at),
	}}
	got := tokenReport(r, "https://new")
	want := map[string][]string{
		"a": {protocol.TokenIDEntry(protocol.TokenID("jti-a1"), at), protocol.TokenIDEntry(protocol.TokenID("jti-a2"), at.Add(time.Minute))},
		"b": {protocol.TokenIDEntry(protocol.TokenID("jti-b"), at)},
	}
	for _, ids := range want {
		slices.Sort(ids)
	}
	if !reflect.DeepEqual(got.TokenIDs, want) {
		t.Errorf("token IDs %v, want %v", got.TokenIDs, want)
	}
	for _, e := range got.TokenIDs["b"] {
		if id, iat, ok := protocol.ParseTokenIDEntry(e); !ok || id != protocol.TokenID("jti-b") || !iat.Equal(at) || strings.Contains(e, "jti-b") {
			t.Errorf("entry %q: %q %s %v; want the digest and the issue time, never the jti", e, id, iat, ok)
		}
	}
	refreshed := *r
	refreshed.Tokens = slices.Clone(r.Tokens)
	refreshed.Tokens[2] = tok("b", "jti-b2", protocol.StateFresh, at.Add(48*time.Minute))
	after := tokenReport(&refreshed, "https://new")
	if reflect.DeepEqual(after.TokenIDs, got.TokenIDs) || !sameAlarms(got, after) {
		t.Errorf("a refresh: token IDs %v -> %v, same alarms %v; want new IDs and the same alarms", got.TokenIDs, after.TokenIDs, sameAlarms(got, after))
	}

	// Too big: the token IDs go, the stale pods stay.
	big := &scan.Report{}
	for i := range 200 {
		uid := fmt.Sprintf("%08d-0000-4000-8000-000000000000", i)
		big.Tokens = append(big.Tokens, tok(uid, uid+"-1", protocol.StateFresh, at), tok(uid, uid+"-2", protocol.StateFresh, at))
	}
	big.Tokens = append(big.Tokens, scan.Token{PodUID: "stale", Namespace: "ns", Pod: "p", State: protocol.StateExpired, Issuer: "https://new"})
	fitted, raw, err := fitReport(tokenReport(big, "https://new"), protocol.MaxTokenReportBytes)
	if err != nil || len(raw) > protocol.MaxTokenReportBytes || fitted.TokenIDs != nil || len(fitted.StalePods) != 1 || fitted.StalePodsTruncated {
		t.Errorf("fitted: %d bytes, %d pods' token IDs, stale pods %v (truncated %v), %v; want the token IDs left out first",
			len(raw), len(fitted.TokenIDs), fitted.StalePods, fitted.StalePodsTruncated, err)
	}
}
