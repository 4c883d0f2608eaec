package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every annotation value tokenroll writes carries the protocol version, a
// value of the previous release (no version) reads as version 1, and one of
// an unknown version is refused with a message naming the annotation, the
// version found and what to do.
func TestAnnotationsCarryTheProtocolVersion(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		annotation string
		value      any
		legacy     string
		parse      func(string) error
	}{
		{AnnotationTokens, TokenReport{Issuer: "https://new", Tokens: 3}, `{"issuer":"https://new","tokens":3}`,
			func(v string) error { _, err := ParseTokenReport(v); return err }},
		{AnnotationRequest, Request{ID: "r-1", Action: ActionReboot, Node: "n", CreatedAt: at},
			`{"id":"r-1","action":"reboot","node":"n","createdAt":"2026-11-27T10:00:00Z"}`,
			func(v string) error { _, err := ParseRequest(v); return err }},
		{AnnotationStatus, Status{ID: "r-1", Phase: PhaseDone, UpdatedAt: at}, `{"id":"r-1","phase":"done","updatedAt":"2026-11-27T10:00:00Z"}`,
			func(v string) error { _, err := ParseStatus(v); return err }},
		{AnnotationNodeState, NodeState{Rollout: "r", Step: StepDone, StepAt: at}, `{"rollout":"r","step":"done","action":"","cordonedByUs":false,"stepAt":"2026-11-27T10:00:00Z","startedAt":"0001-01-01T00:00:00Z"}`,
			func(v string) error { _, err := ParseNodeState(v); return err }},
		{AnnotationRebootRequired, json.RawMessage(RebootRequiredValue()), "true",
			func(v string) error { _, err := ParseRebootRequired(v); return err }},
	}
	for _, c := range cases {
		// The coordinator and the agent encode with encoding/json.
		raw, err := json.Marshal(c.value)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(raw), `{"version":1,`) {
			t.Errorf("%s written as %s, without the version first", c.annotation, raw)
		}
		if err := c.parse(string(raw)); err != nil {
			t.Errorf("%s: the current version refused: %v", c.annotation, err)
		}
		if err := c.parse(c.legacy); err != nil {
			t.Errorf("%s: the previous release's value %s refused: %v", c.annotation, c.legacy, err)
		}
		future := strings.Replace(string(raw), `"version":1`, `"version":2`, 1)
		err = c.parse(future)
		if !IsVersionError(err) {
			t.Errorf("%s: version 2 not refused as an unknown version: %v", c.annotation, err)
			continue
		}
		for _, want := range []string{c.annotation, "protocol version 2", "version 1 only", "upgrade"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: message %q does not say %q", c.annotation, err, want)
			}
		}
	}
}

func TestTokenReportRoundTrip(t *testing.T) {
	in := TokenReport{Issuer: "https://new", Tokens: 4, Stale: map[State]int{StateOverdue: 1},
		Issuers:   []IssuerTokens{{Issuer: "https://old", Tokens: 1, LastRefreshAt: time.Date(2026, 11, 27, 10, 1, 0, 0, time.UTC)}},
		StalePods: []PodRef{{Namespace: "ns", Name: "p", UID: "u"}}, StalePodsTruncated: true, IssuersTruncated: true}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseTokenReport(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(out)
	if string(again) != string(raw) {
		t.Errorf("round trip:\n%s\n%s", raw, again)
	}
}

func TestParseRebootRequired(t *testing.T) {
	for v, want := range map[string]bool{"": false, "true": true, RebootRequiredValue(): true, `{"version":1,"required":false}`: false} {
		if got, err := ParseRebootRequired(v); err != nil || got != want {
			t.Errorf("%q: %v, %v; want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"yes", `{"version":"1"}`} {
		if got, err := ParseRebootRequired(v); err == nil {
			t.Errorf("%q read as %v", v, got)
		}
	}
}

// A request of an unknown version is refused with its ID, so the agent's
// refusal names the request the coordinator waits on.
func TestRequestOfAnUnknownVersionKeepsItsID(t *testing.T) {
	req, err := ParseRequest(`{"version":2,"id":"r-7","action":"reboot","node":"n","createdAt":"2026-11-27T10:00:00Z"}`)
	if !IsVersionError(err) || req.ID != "r-7" {
		t.Errorf("ParseRequest = %+v, %v; want the ID and a version error", req, err)
	}
}

// The coordinator parses every Node's node state and tokens report: one
// pass over each value (go test -run '^$' -bench Parse ./protocol/).
func BenchmarkParse(b *testing.B) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rep := TokenReport{Issuer: "https://new", Tokens: 30, Stale: map[State]int{StateIssuerMismatch: 30},
		Issuers: []IssuerTokens{{Issuer: "https://old", Tokens: 30, LastRefreshAt: at}}}
	for i := range 20 {
		rep.StalePods = append(rep.StalePods, PodRef{Namespace: "shop", Name: fmt.Sprintf("web-%d", i), UID: fmt.Sprintf("0b8c4a7e-5f0e-4c39-9d5c-%012d", i)})
	}
	state := NodeState{Rollout: "r-20261127-100000", Step: StepActing, Strategy: "kubelet-restart", CordonedByUs: true,
		Request: "req-1", BootID: "6f1e2d3c", StepAt: at, StartedAt: at, Message: "waiting for every token"}
	for _, c := range []struct {
		name  string
		value any
		parse func(string) error
	}{
		{"tokens", rep, func(v string) error { _, err := ParseTokenReport(v); return err }},
		{"state", state, func(v string) error { _, err := ParseNodeState(v); return err }},
	} {
		raw, err := json.Marshal(c.value)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.parse(string(raw)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
