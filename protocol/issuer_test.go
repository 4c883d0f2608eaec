package protocol

import (
	"strings"
	"testing"
	"time"
)

func TestParsePublishedIssuer(t *testing.T) {
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	good := PublishedIssuer{Issuer: "https://kubernetes.default.svc", ObservedAt: at}
	if p, err := ParsePublishedIssuer(good.Data()); err != nil || p != good {
		t.Errorf("round trip: %+v, %v; want %+v", p, err, good)
	}
	for _, c := range []struct {
		name string
		data map[string]string
		want string
	}{
		{"absent", map[string]string{}, "issuer is empty"},
		{"http", map[string]string{IssuerKey: "http://kubernetes.default.svc"}, "not an https URL"},
		{"no host", map[string]string{IssuerKey: "https:///path"}, "not an https URL"},
		{"not a URL", map[string]string{IssuerKey: "kubernetes/serviceaccount"}, "not an https URL"},
		{"query", map[string]string{IssuerKey: "https://a.example?x=1"}, "query"},
		{"fragment", map[string]string{IssuerKey: "https://a.example#f"}, "fragment"},
		{"user", map[string]string{IssuerKey: "https://u:p@a.example"}, "user information"},
		{"space", map[string]string{IssuerKey: "https://a.example/ x"}, "space"},
		{"control", map[string]string{IssuerKey: "https://a.example/\x1b[2J"}, "control"},
		{"long", map[string]string{IssuerKey: "https://a.example/" + strings.Repeat("x", MaxIssuerLen)}, "longer than"},
		{"bad time", map[string]string{IssuerKey: "https://a.example", IssuerObservedAtKey: "yesterday"}, "RFC 3339"},
	} {
		_, err := ParsePublishedIssuer(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
		if err != nil && len(err.Error()) > 2*MaxClaimLen {
			t.Errorf("%s: error of %d bytes, want the value capped", c.name, len(err.Error()))
		}
	}
}
