package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// A coordinator upgraded in the middle of a rollout reads the node state
// its predecessor wrote, owners as "Kind/namespace/name" strings.
func TestParseNodeStateFromThePreviousVersion(t *testing.T) {
	old := `{"rollout":"r-1","step":"acting","action":"pod-restart","cordonedByUs":true,` +
		`"evicted":[{"namespace":"build","name":"api-1","uid":"u1"}],` +
		`"owners":["ReplicaSet/build/api","StatefulSet/db/pg"],"stepAt":"2026-11-27T10:00:00Z","startedAt":"2026-11-27T09:59:00Z"}`
	s, err := ParseNodeState(old)
	if err != nil {
		t.Fatal(err)
	}
	want := []OwnerRef{{Kind: "ReplicaSet", Namespace: "build", Name: "api"}, {Kind: "StatefulSet", Namespace: "db", Name: "pg"}}
	if !reflect.DeepEqual(s.Owners, want) || s.Strategy != "pod-restart" || s.Step != StepActing || !s.CordonedByUs {
		t.Errorf("decoded %+v", s)
	}
	// Written again, it reads back the same.
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"owners":[{"kind":"ReplicaSet","namespace":"build","name":"api"}`) || !strings.Contains(string(raw), `"action":"pod-restart"`) {
		t.Errorf("encoded %s", raw)
	}
	again, err := ParseNodeState(string(raw))
	if err != nil || !reflect.DeepEqual(again, s) {
		t.Errorf("round trip: %+v, %v; want %+v", again, err, s)
	}
}

func TestOwnerRefRejectsMalformed(t *testing.T) {
	for _, v := range []string{`"ReplicaSet"`, `"ReplicaSet/build"`, `"/build/api"`, `42`} {
		var o OwnerRef
		if err := json.Unmarshal([]byte(v), &o); err == nil {
			t.Errorf("%s decoded as %+v", v, o)
		}
	}
}

// Evidence changes with what makes tokens stale (a state, an issuer, a
// pod), not with how many tokens there are.
func TestEvidence(t *testing.T) {
	base := TokenReport{Issuer: "https://new", Tokens: 3, Stale: map[State]int{StateIssuerMismatch: 2},
		Issuers:   []IssuerTokens{{Issuer: "https://new", Tokens: 1}, {Issuer: "https://old", Tokens: 2}},
		StalePods: []PodRef{{Namespace: "a", Name: "p", UID: "u1"}}}
	e := base.Evidence("https://new")
	more := base
	more.Tokens, more.Stale = 40, map[State]int{StateIssuerMismatch: 9}
	more.Issuers = []IssuerTokens{{Issuer: "https://new", Tokens: 31}, {Issuer: "https://old", Tokens: 9}}
	if got := more.Evidence("https://new"); got != e {
		t.Errorf("counts changed the evidence: %s, was %s", got, e)
	}
	for name, r := range map[string]TokenReport{
		"a new pod": func() TokenReport { r := base; r.StalePods = append([]PodRef{{UID: "u2"}}, r.StalePods...); return r }(),
		"a new state": func() TokenReport {
			r := base
			r.Stale = map[State]int{StateIssuerMismatch: 2, StateExpired: 1}
			return r
		}(),
		"no old issuer": func() TokenReport {
			r := base
			r.Issuers = r.Issuers[:1]
			return r
		}(),
	} {
		if r.Evidence("https://new") == e {
			t.Errorf("%s did not change the evidence", name)
		}
	}
	if base.Evidence("https://old") == e {
		t.Error("another current issuer did not change the evidence")
	}
}
