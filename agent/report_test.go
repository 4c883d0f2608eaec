package agent

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

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
		tok("a", protocol.StateIssuerMismatch, "https://old", 3*time.Hour),
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
	if got.Issuers[1].Issuer != "https://old" || got.Issuers[1].Tokens != 2 || !got.Issuers[1].LastRefreshAt.Equal(at.Add(3*time.Hour)) {
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
