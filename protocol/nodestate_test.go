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
