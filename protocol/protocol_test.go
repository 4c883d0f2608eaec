package protocol

import "testing"

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
