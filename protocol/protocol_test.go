package protocol

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestStateRules(t *testing.T) {
	cases := []struct {
		s                              State
		needsWork, alarm, notRefreshed bool
	}{
		{StateInvalid, true, false, false},
		{StateClockSkew, true, false, false},
		{StateExpired, true, true, true},
		{StateIssuerMismatch, true, true, false},
		{StateOverdue, true, true, true},
		{StateRefreshDue, false, false, false},
		{StateFresh, false, false, false},
		{StateOrphaned, false, false, false},
		{StateForeign, false, false, false},
	}
	if len(cases) != len(States) {
		t.Fatalf("%d cases for %d states", len(cases), len(States))
	}
	for _, c := range cases {
		if c.s.NeedsWork() != c.needsWork || c.s.Alarm() != c.alarm || c.s.NotRefreshed() != c.notRefreshed {
			t.Errorf("%s: needs work %v, alarm %v, not refreshed %v", c.s, c.s.NeedsWork(), c.s.Alarm(), c.s.NotRefreshed())
		}
		if c.s.Alarm() && !c.s.NeedsWork() {
			t.Errorf("%s is an alarm but needs no work", c.s)
		}
	}
	rep := TokenReport{Stale: map[State]int{StateExpired: 1, StateOverdue: 2, StateIssuerMismatch: 4, StateInvalid: 8}}
	if rep.StaleTotal() != 15 || rep.Count(State.NotRefreshed) != 3 || rep.Count(State.Alarm) != 7 {
		t.Errorf("counts: total %d, not refreshed %d, alarm %d", rep.StaleTotal(), rep.Count(State.NotRefreshed), rep.Count(State.Alarm))
	}
}

func TestForeignSortsLast(t *testing.T) {
	if StateForeign.Severity() != len(States)-1 || !StateForeign.Valid() || StateForeign.Severity() <= StateOrphaned.Severity() {
		t.Errorf("foreign: severity %d of %d", StateForeign.Severity(), len(States))
	}
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("a", 300)
	cases := []struct {
		in       string
		same     bool
		maxBytes int
	}{
		{"", true, 0},
		{"https://kubernetes.default.svc", true, 30},
		{strings.Repeat("x", MaxClaimLen), true, MaxClaimLen},
		{strings.Repeat("x", MaxClaimLen+1), false, MaxClaimLen},
		{long, false, MaxClaimLen},
		{strings.Repeat("é", 200), false, MaxClaimLen}, // 400 bytes, two per character
	}
	for _, c := range cases {
		got := Truncate(c.in)
		if (got == c.in) != c.same || len(got) > MaxClaimLen || !utf8.ValidString(got) {
			t.Errorf("Truncate(%d bytes) = %d bytes %q", len(c.in), len(got), got)
		}
		if !c.same && !strings.HasPrefix(c.in, strings.SplitN(got, "…", 2)[0]) {
			t.Errorf("Truncate(%d bytes) does not keep a prefix: %q", len(c.in), got)
		}
	}
	if Truncate(long) == Truncate(long+"b") || Truncate(long) != Truncate(strings.Clone(long)) {
		t.Error("two long values with one prefix must stay distinct, one value stable")
	}
}

func TestCapIssuers(t *testing.T) {
	t0 := time.Unix(1795000000, 0).UTC()
	var its []IssuerTokens
	for i := range 20 {
		its = append(its, IssuerTokens{Issuer: fmt.Sprintf("https://i%02d", i), Tokens: i + 1, LastRefreshAt: t0.Add(time.Duration(i) * time.Minute)})
	}
	// The current issuer has the fewest tokens and must still be kept.
	got := CapIssuers(its, "https://i00")
	if len(got) != MaxIssuers {
		t.Fatalf("%d issuers, want %d: %+v", len(got), MaxIssuers, got)
	}
	if got[0].Issuer != "https://i00" || got[len(got)-1].Issuer != IssuerOverflow {
		t.Errorf("order: first %s, last %s", got[0].Issuer, got[len(got)-1].Issuer)
	}
	total, kept := 0, 0
	for _, it := range got {
		kept += it.Tokens
	}
	for _, it := range its {
		total += it.Tokens
	}
	if kept != total {
		t.Errorf("%d tokens after the cap, %d before", kept, total)
	}
	// i14..i19 are kept (most tokens); the overflow holds i01..i13, the
	// latest of which refreshes at +13m.
	if over := got[len(got)-1]; !over.LastRefreshAt.Equal(t0.Add(13 * time.Minute)) {
		t.Errorf("overflow last refresh %s", over.LastRefreshAt)
	}
	few := its[:3]
	if got := CapIssuers(few, ""); len(got) != 3 || got[0].Issuer != "https://i00" {
		t.Errorf("under the cap: %+v", got)
	}
}

func TestReportComplete(t *testing.T) {
	for p, want := range map[PodsAPI]bool{"": true, PodsAPIListed: true, PodsAPIAbsent: true, PodsAPIUnavailable: false, PodsAPIInitializing: false, PodsAPIEmpty: false} {
		if got := (TokenReport{PodsAPI: p}).Complete(); got != want {
			t.Errorf("PodsAPI %q: complete %v, want %v", p, got, want)
		}
	}
}
