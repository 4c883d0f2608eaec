package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

func reportOf(podsAPI protocol.PodsAPI, tokens ...scan.Token) *scan.Report {
	r := &scan.Report{Node: "n", PodsAPI: podsAPI, Tokens: tokens, Summary: map[protocol.State]int{}}
	for _, t := range tokens {
		r.Summary[t.State]++
	}
	return r
}

// TestForeignTokensAreNoReasonToAct: foreign files reach neither the
// coordinator's report nor the Node condition, however stale they look.
func TestForeignTokensAreNoReasonToAct(t *testing.T) {
	const iss = "https://kubernetes.default.svc"
	fresh := scan.Token{PodUID: "u1", Namespace: "apps", Pod: "web", Issuer: iss, State: protocol.StateFresh}
	foreign := scan.Token{PodUID: "u1", Namespace: "apps", Pod: "web", Issuer: "https://old", State: protocol.StateForeign, Reason: "not a serviceAccountToken projection"}
	withForeign := reportOf(protocol.PodsAPIListed, fresh, foreign, foreign)
	without := reportOf(protocol.PodsAPIListed, fresh)

	rep := tokenReport(withForeign, iss)
	if rep.Tokens != 1 || len(rep.Issuers) != 1 || rep.Issuers[0].Issuer != iss || len(rep.StalePods) != 0 || rep.StaleTotal() != 0 || !rep.Complete() {
		t.Errorf("report counts foreign tokens: %+v", rep)
	}
	if c, want := conditionFor(withForeign), conditionFor(without); c != want || c.Status != corev1.ConditionFalse || strings.Contains(c.Message, "foreign") {
		t.Errorf("condition with foreign tokens %+v, without %+v", c, want)
	}
}

// TestIncompleteScanReport: a scan without the kubelet's pod list says so
// in the report, and a complete one writes nothing extra.
func TestIncompleteScanReport(t *testing.T) {
	tok := scan.Token{PodUID: "u1", Namespace: "apps", Pod: "web", Issuer: "https://i", State: protocol.StateFresh}
	for answer, want := range map[protocol.PodsAPI]protocol.PodsAPI{
		protocol.PodsAPIListed: "", protocol.PodsAPIAbsent: "",
		protocol.PodsAPIEmpty: protocol.PodsAPIEmpty, protocol.PodsAPIInitializing: protocol.PodsAPIInitializing, protocol.PodsAPIUnavailable: protocol.PodsAPIUnavailable,
	} {
		rep := tokenReport(reportOf(answer, tok), "https://i")
		if rep.PodsAPI != want || rep.Complete() != (want == "") {
			t.Errorf("%s: report podsAPI %q, complete %v", answer, rep.PodsAPI, rep.Complete())
		}
	}
	r := reportOf(protocol.PodsAPIListed, tok)
	r.Partial = true
	if rep := tokenReport(r, "https://i"); !rep.PartialScan {
		t.Error("a partial scan is not said in the report")
	}
}

// TestReportCapsIssuers: forged tokens from many issuers fill at most
// protocol.MaxIssuers entries, long issuers are capped, the current
// issuer is kept.
func TestReportCapsIssuers(t *testing.T) {
	long := "https://" + strings.Repeat("x", 400)
	var toks []scan.Token
	for i := range 40 {
		iss := fmt.Sprintf("%s/%02d", long, i)
		toks = append(toks, scan.Token{PodUID: fmt.Sprint(i), Namespace: "a", Pod: fmt.Sprint("p", i), Issuer: protocol.Truncate(iss), State: protocol.StateIssuerMismatch, RefreshAt: time.Unix(int64(i), 0)})
	}
	const current = "https://kubernetes.default.svc"
	toks = append(toks, scan.Token{PodUID: "c", Namespace: "a", Pod: "c", Issuer: current, State: protocol.StateFresh})
	rep := tokenReport(reportOf(protocol.PodsAPIListed, toks...), current)
	if len(rep.Issuers) != protocol.MaxIssuers || rep.Issuers[len(rep.Issuers)-1].Issuer != protocol.IssuerOverflow {
		t.Fatalf("issuers: %d, last %q", len(rep.Issuers), rep.Issuers[len(rep.Issuers)-1].Issuer)
	}
	total := 0
	kept := false
	for _, it := range rep.Issuers {
		total += it.Tokens
		kept = kept || it.Issuer == current
		if len(it.Issuer) > protocol.MaxClaimLen {
			t.Errorf("issuer of %d bytes in the report", len(it.Issuer))
		}
	}
	if total != 41 || !kept {
		t.Errorf("%d tokens counted, current issuer kept %v", total, kept)
	}
}

// TestMetricLabelsCapped: a token at a path longer than
// protocol.MaxClaimLen (a tenant chooses the path of a projection) gives a
// series whose labels are capped.
func TestMetricLabelsCapped(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	root := t.TempDir()
	const uid = "00000000-0000-4000-8000-00000000000a"
	rel := filepath.Join(strings.Repeat("a", 200), strings.Repeat("b", 200), "token")
	file := filepath.Join(root, "pods", uid, "volumes", "kubernetes.io~projected", "v", rel)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(boundToken("https://old", "apps", "web", uid, now.Unix()-7200, 3600)), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := New(Config{
		NodeName: "node-1", KubeletRoot: root, Client: fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}).CoreV1().Nodes(),
		Discovery: oidcDiscovery("https://new"), Interval: time.Minute, Grace: time.Minute, IssuerRefresh: time.Minute, MaxTokenSeries: 10,
		Registry: reg, Clock: clocktesting.NewFakeClock(now),
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := a.ScanOnce(context.Background()); r == nil || r.Summary[protocol.StateExpired] != 1 {
		t.Fatalf("scan: %+v", r)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" {
					series++
				}
				if len(l.GetValue()) > protocol.MaxClaimLen {
					t.Errorf("%s{%s} is %d bytes", f.GetName(), l.GetName(), len(l.GetValue()))
				}
			}
		}
	}
	if series != 1 {
		t.Errorf("%d series with a path label, want the expired token's", series)
	}
}
