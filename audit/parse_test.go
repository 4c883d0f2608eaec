package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenroll/tokenroll/protocol"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(data)
}

// edit decodes an event, lets f change it, and encodes it again.
func edit(t testing.TB, data []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func parseOne(t *testing.T, data []byte) Event {
	t.Helper()
	evs, err := Parse(data, nil)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(evs) != 1 {
		t.Fatalf("Parse gave %d events, want 1", len(evs))
	}
	return evs[0]
}

func TestParsePresented(t *testing.T) {
	ev := parseOne(t, fixture(t, "presented.json"))
	want := Event{
		Kind: Presented, AuditID: "7e0cbccf-2c1e-4a5e-9a53-6a3cf1a0a001",
		Time: time.Date(2026, 12, 1, 3, 0, 0, 2300000, time.UTC),
		User: "system:serviceaccount:team:robot", SourceIP: netip.MustParseAddr("10.244.1.17"), Code: 200,
		Pod: PodRef{Namespace: "team", Name: "app-1", UID: "a1b2c3d4-e5f6-4711-8899-aabbccddeeff", Node: "node-a"},
		JTI: "6b7c2f0e-1d2a-4f3b-9e8d-aa11bb22cc33",
	}
	if fmt.Sprint(ev) != fmt.Sprint(want) || !ev.Time.Equal(want.Time) {
		t.Errorf("got  %+v\nwant %+v", ev, want)
	}
}

func TestParseIssued(t *testing.T) {
	ev := parseOne(t, fixture(t, "issued.json"))
	if ev.Kind != Issued || ev.User != "system:node:node-a" || ev.Code != 201 ||
		ev.JTI != "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a" ||
		ev.Pod != (PodRef{Namespace: "team", Name: "app-1", UID: "a1b2c3d4-e5f6-4711-8899-aabbccddeeff"}) ||
		len(ev.Audiences) != 1 || ev.Audiences[0] != "https://kubernetes.default.svc" {
		t.Errorf("got %+v", ev)
	}

	// At Metadata level (OpenShift's default) the body is not there: the
	// token is known, its pod is not.
	meta := edit(t, fixture(t, "issued.json"), func(m map[string]any) { delete(m, "requestObject"); m["level"] = "Metadata" })
	ev = parseOne(t, meta)
	if ev.Kind != Issued || ev.JTI != "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a" || ev.Pod != (PodRef{Namespace: "team"}) || ev.Audiences != nil {
		t.Errorf("at Metadata level got %+v", ev)
	}

	// A TokenRequest bound to a Secret names no pod.
	secret := edit(t, fixture(t, "issued.json"), func(m map[string]any) {
		m["requestObject"].(map[string]any)["spec"].(map[string]any)["boundObjectRef"].(map[string]any)["kind"] = "Secret"
	})
	if ev = parseOne(t, secret); ev.Pod.Name != "" || ev.Pod.UID != "" {
		t.Errorf("bound to a Secret got pod %+v", ev.Pod)
	}
}

func TestParseAuthFailedTakesTheConnectionsAddress(t *testing.T) {
	ev := parseOne(t, fixture(t, "authfailed.json"))
	// 203.0.113.9 came from an X-Forwarded-For header the client wrote.
	if ev.Kind != AuthFailed || ev.Code != 401 || ev.SourceIP != netip.MustParseAddr("10.244.2.31") || ev.User != "" {
		t.Errorf("got %+v", ev)
	}
	// The same at ResponseComplete (a 401 from further in) counts too.
	rc := edit(t, fixture(t, "authfailed.json"), func(m map[string]any) { m["stage"] = "ResponseComplete" })
	if ev := parseOne(t, rc); ev.Kind != AuthFailed {
		t.Errorf("401 at ResponseComplete: got %+v", ev)
	}
}

func TestParsePodPresentingItsTokenForATokenRequest(t *testing.T) {
	both := edit(t, fixture(t, "issued.json"), func(m map[string]any) {
		var p map[string]any
		_ = json.Unmarshal(fixture(t, "presented.json"), &p)
		m["user"] = p["user"]
	})
	evs, err := Parse(both, nil)
	if err != nil || len(evs) != 2 || evs[0].Kind != Presented || evs[1].Kind != Issued ||
		evs[0].JTI == evs[1].JTI {
		t.Fatalf("got %+v, %v; want Presented then Issued", evs, err)
	}
}

func TestParseSkips(t *testing.T) {
	presented := fixture(t, "presented.json")
	set := func(path string, v any) []byte {
		return edit(t, presented, func(m map[string]any) {
			keys := strings.Split(path, ".")
			cur := m
			for _, k := range keys[:len(keys)-1] {
				cur = cur[k].(map[string]any)
			}
			if v == nil {
				delete(cur, keys[len(keys)-1])
			} else {
				cur[keys[len(keys)-1]] = v
			}
		})
	}
	huge := edit(t, presented, func(m map[string]any) { m["userAgent"] = strings.Repeat("x", MaxEventBytes) })
	for _, tc := range []struct {
		name string
		data []byte
		want SkipReason
	}{
		{"not JSON", []byte("{\"kind\":\"Event\",\"apiVer"), SkipMalformed},
		{"garbage", []byte("\x00\xff binary"), SkipMalformed},
		{"user is a string", set("user", "alice"), SkipMalformed},
		{"extra values are not lists", set("user.extra", map[string]any{ExtraPodName: "app-1"}), SkipMalformed},
		{"code is a string", set("responseStatus.code", "200"), SkipMalformed},
		{"JSON null", []byte("null"), SkipUnsupported},
		{"too large", huge, SkipTooLarge},
		{"v1beta1", set("apiVersion", "audit.k8s.io/v1beta1"), SkipUnsupported},
		{"another kind", set("kind", "EventList"), SkipUnsupported},
		{"no kind (only a list's items may omit it)", set("kind", nil), SkipUnsupported},
		{"legacy text format", []byte(`2026-12-01T03:00:00Z AUDIT: id="x" stage="ResponseComplete" ip="10.0.0.1"`), SkipMalformed},
		{"RequestReceived", set("stage", "RequestReceived"), SkipStage},
		{"a watch's ResponseStarted", set("stage", "ResponseStarted"), SkipStage},
		{"no auditID", set("auditID", nil), SkipInvalid},
		{"no timestamp", set("stageTimestamp", nil), SkipInvalid},
		{"credential ID of a certificate", set("user.extra", map[string]any{ExtraPodName: []string{"p"}, ExtraPodUID: []string{"u"}, ExtraCredentialID: []string{"X509SHA256=ab"}}), SkipInvalid},
		{"pod without UID", set("user.extra", map[string]any{ExtraPodName: []string{"p"}, ExtraCredentialID: []string{"JTI=j"}}), SkipInvalid},
		{"pod extra on a user who is no service account", set("user.username", "alice"), SkipInvalid},
		{"a legacy token (no pod)", set("user.extra", nil), SkipIrrelevant},
		{"a node's list", set("user", map[string]any{"username": "system:node:node-a"}), SkipIrrelevant},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := Parse(tc.data, nil)
			if err == nil || len(evs) != 0 {
				t.Fatalf("Parse = %+v, %v; want a skip", evs, err)
			}
			if got := ReasonOf(err); got != tc.want {
				t.Errorf("reason %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}

// secret stands for a token: it must appear in no Event and no error.
const secret = "eyJhbGciOiJFUzI1NiJ9.SECRET-TOKEN-BODY.c2lnbmF0dXJl"

func TestParseKeepsNoTokenAndCapsEverything(t *testing.T) {
	long := strings.Repeat("é", 300)
	auds := make([]string, 20)
	for i := range auds {
		auds[i] = fmt.Sprintf("aud-%d-%s", i, strings.Repeat("a", 280))
	}
	data := edit(t, fixture(t, "issued.json"), func(m map[string]any) {
		ro := m["requestObject"].(map[string]any)
		ro["status"] = map[string]any{"token": secret}
		spec := ro["spec"].(map[string]any)
		spec["audiences"] = auds
		spec["boundObjectRef"].(map[string]any)["name"] = long
		m["responseObject"] = map[string]any{"status": map[string]any{"token": secret}}
		m["user"] = map[string]any{"username": "system:node:" + long}
		m["auditID"] = long
		m["annotations"].(map[string]any)[AnnotationIssuedCredentialID] = "JTI=" + long
	})
	ev := parseOne(t, data)
	if strings.Contains(fmt.Sprintf("%#v", ev), "SECRET-TOKEN") {
		t.Error("the Event holds the token")
	}
	if len(ev.Audiences) != MaxAudiences {
		t.Errorf("kept %d audiences, want %d", len(ev.Audiences), MaxAudiences)
	}
	for _, s := range append([]string{string(ev.AuditID), ev.User, ev.JTI, ev.Pod.Name}, ev.Audiences...) {
		if len(s) > protocol.MaxClaimLen {
			t.Errorf("a string of %d bytes kept, more than %d", len(s), protocol.MaxClaimLen)
		}
	}

	// Errors say where, never what.
	bad := edit(t, fixture(t, "issued.json"), func(m map[string]any) {
		m["requestObject"].(map[string]any)["spec"] = map[string]any{"audiences": secret}
	})
	if _, err := Parse(bad, nil); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error %v: want one that does not quote the body", err)
	}
	if _, err := Parse([]byte(`{"kind":`+secret), nil); err == nil || strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "eyJ") {
		t.Errorf("error %v: want one that does not quote the input", err)
	}
}

func TestParseList(t *testing.T) {
	var items []json.RawMessage
	for _, name := range []string{"presented.json", "issued.json", "authfailed.json"} {
		// The webhook's items carry no apiVersion and kind of their own.
		items = append(items, edit(t, fixture(t, name), func(m map[string]any) { delete(m, "kind"); delete(m, "apiVersion") }))
	}
	items = append(items, json.RawMessage(`{"stage":1}`), json.RawMessage(`"x"`))
	list, _ := json.Marshal(map[string]any{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": map[string]any{}, "items": items})
	var got []Kind
	var skipped []SkipReason
	if err := ParseList(list, func(ev Event) { got = append(got, ev.Kind) }, func(err error) { skipped = append(skipped, ReasonOf(err)) }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint([]Kind{Presented, Issued, AuthFailed}) || fmt.Sprint(skipped) != "[malformed malformed]" {
		t.Errorf("got %v, skipped %v", got, skipped)
	}
	for _, bad := range []string{`{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}`, `[]`, `{"items":{}}`, `nope`} {
		if err := ParseList([]byte(bad), func(Event) {}, func(error) {}); err == nil {
			t.Errorf("ParseList(%s) accepted it", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"presented.json", "issued.json", "authfailed.json"} {
		f.Add(fixture(f, name))
	}
	f.Add([]byte(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","stage":"ResponseComplete","auditID":"a","stageTimestamp":"2026-12-01T03:00:00Z","verb":"create","objectRef":{"resource":"serviceaccounts","subresource":"token"},"annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=x"},"requestObject":{"spec":{"audiences":null,"boundObjectRef":{"kind":"Pod"}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		evs, err := Parse(data, nil)
		if err != nil && len(evs) != 0 {
			t.Fatalf("an error and %d events", len(evs))
		}
		var s *SkipError
		if err != nil && !errors.As(err, &s) {
			t.Fatalf("error %v is not a SkipError", err)
		}
		for _, ev := range evs {
			if ev.Kind < Presented || ev.Kind > AuthFailed || len(ev.Audiences) > MaxAudiences {
				t.Fatalf("event %+v", ev)
			}
			for _, str := range append([]string{string(ev.AuditID), ev.User, ev.JTI, ev.Pod.Name, ev.Pod.Namespace, string(ev.Pod.UID), ev.Pod.Node}, ev.Audiences...) {
				if len(str) > protocol.MaxClaimLen {
					t.Fatalf("a string of %d bytes", len(str))
				}
			}
		}
	})
}

// BenchmarkParse parses a mix like a busy cluster's audit log: most events
// from pods' tokens, some from other clients, a few TokenRequests and
// failed authentications.
func BenchmarkParse(b *testing.B) {
	presented, issued, failed := fixture(b, "presented.json"), fixture(b, "issued.json"), fixture(b, "authfailed.json")
	other := edit(b, presented, func(m map[string]any) {
		m["user"] = map[string]any{"username": "system:kube-controller-manager", "groups": []string{"system:authenticated"}}
	})
	mix := [][]byte{presented, presented, presented, presented, presented, other, other, other, issued, failed}
	var size int
	for _, m := range mix {
		size += len(m)
	}
	b.SetBytes(int64(size / len(mix)))
	b.ReportAllocs()
	out := make([]Event, 0, 2)
	n := 0
	cpu0 := cpuTime(b)
	for b.Loop() {
		out, _ = Parse(mix[n%len(mix)], out[:0])
		n++
	}
	// On a shared machine wall time counts other processes' turns: the
	// process's CPU time (GC included) is what one core spends.
	cpu := cpuTime(b) - cpu0
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(n)/cpu.Seconds(), "events/cpu-s")
}

func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestWireExtraTags(t *testing.T) {
	data, _ := json.Marshal(wireExtra{PodName: []string{"a"}, PodUID: []string{"b"}, NodeName: []string{"c"}, CredentialID: []string{"d"}})
	var m map[string][]string
	_ = json.Unmarshal(data, &m)
	for key, want := range map[string]string{ExtraPodName: "a", ExtraPodUID: "b", ExtraNodeName: "c", ExtraCredentialID: "d"} {
		if got := first(m[key]); got != want {
			t.Errorf("user.extra %s decodes to %q, want %q: the wireExtra tag differs from the constant", key, got, want)
		}
	}
	data, _ = json.Marshal(map[string]string{AnnotationIssuedCredentialID: "JTI=x"})
	var w wireEvent
	if err := json.Unmarshal([]byte(`{"annotations":`+string(data)+`}`), &w); err != nil || w.Annotations.IssuedCredentialID == nil {
		t.Errorf("annotation %s is not decoded: the tag differs from the constant", AnnotationIssuedCredentialID)
	}
}
