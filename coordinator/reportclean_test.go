package coordinator

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

// TestReportCleanNeedsACompleteScan: a report from a scan without the
// kubelet's pod list (a kubelet just restarted) never verifies an action,
// however clean it looks.
func TestReportCleanNeedsACompleteScan(t *testing.T) {
	const iss = "https://new.example"
	node := func(rep protocol.TokenReport) *corev1.Node {
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{protocol.AnnotationTokens: string(b)}}}
	}
	clean := protocol.TokenReport{Issuer: iss, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: iss, Tokens: 3}}}
	for _, c := range []struct {
		podsAPI protocol.PodsAPI
		want    bool
	}{
		{"", true},
		{protocol.PodsAPIEmpty, false},
		{protocol.PodsAPIInitializing, false},
		{protocol.PodsAPIUnavailable, false},
	} {
		rep := clean
		rep.PodsAPI = c.podsAPI
		ok, why := reportClean(nil, node(rep), iss)
		if ok != c.want || !ok && !strings.Contains(why, string(c.podsAPI)) {
			t.Errorf("podsAPI %q: clean %v (%s), want %v", c.podsAPI, ok, why, c.want)
		}
	}
}

// TestReportCleanNeedsEveryIssuer: a report that left issuers out to keep
// within its size budget never verifies an action.
func TestReportCleanNeedsEveryIssuer(t *testing.T) {
	const iss = "https://new.example"
	rep := protocol.TokenReport{Issuer: iss, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: iss, Tokens: 3}}, IssuersTruncated: true}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{protocol.AnnotationTokens: string(b)}}}
	if ok, why := reportClean(nil, n, iss); ok || !strings.Contains(why, "left issuers out") {
		t.Errorf("clean %v (%s), want not clean: issuers were left out", ok, why)
	}
}
