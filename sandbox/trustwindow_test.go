package sandbox

import (
	"strings"
	"testing"
	"time"
)

// A run inside a trust window is judged only once the API servers have
// dropped the previous issuer: before, an app still presenting its token
// looks healthy.
func TestTrustEnd(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	old := "https://kubernetes.default.svc"
	inWindow := gateView{Known: true, Open: true, Latest: 12, Trusted: map[string]time.Time{old: at.Add(5 * time.Minute), "https://older": at.Add(time.Minute)}}
	if got := trustEnds(inWindow); !got.Equal(at.Add(5 * time.Minute)) {
		t.Errorf("trustEnds = %s; want the last previous issuer's end, %s", got, at.Add(5*time.Minute))
	}
	if got := trustEnds(gateView{Known: true, Open: true, Latest: 12, Trusted: map[string]time.Time{}}); !got.IsZero() {
		t.Errorf("trustEnds with no previous issuer = %s; want none", got)
	}
	for _, c := range []struct {
		name string
		cur  gateView
		want bool
	}{
		{"nothing changed yet", inWindow, false},
		{"the revision that drops it still rolls", gateView{Known: true, Latest: 13, Trusted: map[string]time.Time{}}, false},
		{"a newer revision still trusts one", gateView{Known: true, Open: true, Latest: 13, Trusted: map[string]time.Time{old: at.Add(5 * time.Minute)}}, false},
		{"every server dropped both", gateView{Known: true, Open: true, Latest: 14, Trusted: map[string]time.Time{}}, true},
	} {
		if got := trustEnded(inWindow, c.cur); got != c.want {
			t.Errorf("%s: trustEnded = %v; want %v", c.name, got, c.want)
		}
	}
}

// With a trust window no app's request may fail, reloading or caching;
// without one, failures during the rollout are an outcome, not a failure.
func TestTrustWindowFailures(t *testing.T) {
	clean := map[AppKind]AppFigures{AppReloading: {Pods: 10, Requests: 900}, AppCaching: {Pods: 5, Requests: 400}}
	if got := trustWindowFailures(clean, 5*time.Minute); got != nil {
		t.Errorf("no failure: got %q; want none", got)
	}
	failed := map[AppKind]AppFigures{AppReloading: {Pods: 10, Requests: 900}, AppCaching: {Pods: 5, Requests: 400, AuthFailures: 7, ErrorSeconds: 12.5}}
	got := trustWindowFailures(failed, 5*time.Minute)
	if len(got) != 1 || !strings.Contains(got[0], "caching 7 (12.5s unable to authenticate)") || strings.Contains(got[0], "reloading") {
		t.Errorf("caching apps failed 7 times in a trust window: got %q; want one failure naming caching 7 and not reloading", got)
	}
	if got := trustWindowFailures(failed, 0); got != nil {
		t.Errorf("no trust window: got %q; want none (the failures are compared, not judged)", got)
	}
}
