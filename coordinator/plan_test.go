package coordinator

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

var planNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func reportNode(name string, rep *protocol.TokenReport, extra map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
	if rep != nil {
		raw, _ := json.Marshal(rep)
		n.Annotations[protocol.AnnotationTokens] = string(raw)
	}
	for k, v := range extra {
		n.Annotations[k] = v
	}
	return n
}

func TestMakePlan(t *testing.T) {
	const cur, old = "https://new", "https://old"
	oldTokens := func(agentIssuer string, lastRefresh time.Duration) *protocol.TokenReport {
		it := protocol.IssuerTokens{Issuer: old, Tokens: 2}
		if lastRefresh != 0 {
			it.LastRefreshAt = planNow.Add(lastRefresh)
		}
		return &protocol.TokenReport{Issuer: agentIssuer, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 1}, it}}
	}
	trustedFor := func(d time.Duration) GateState {
		return GateState{Open: true, TrustKnown: true, Trusted: []TrustedIssuer{{Name: cur}, {Name: old, Expires: planNow.Add(d)}}}
	}
	cases := []struct {
		name    string
		gate    GateState
		wait    bool
		node    *corev1.Node
		want    string // action planned, "skip", "wait" or "" (not mentioned)
		why     string
		deadine time.Duration
	}{
		{"reboot required wins", GateState{}, false, reportNode("n", &protocol.TokenReport{Issuer: cur}, map[string]string{protocol.AnnotationRebootRequired: "true"}), "reboot", "required reboot", 0},
		{"no agent", GateState{}, false, reportNode("n", nil, nil), "skip", "no report", 0},
		{"fresh", GateState{}, false, reportNode("n", &protocol.TokenReport{Issuer: cur, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 3}}}, nil), "", "", 0},
		{"overdue", GateState{}, false, reportNode("n", &protocol.TokenReport{Issuer: cur, Stale: map[protocol.State]int{protocol.StateOverdue: 2}}, nil), "kubelet-restart", "2 tokens expired or overdue", 0},
		{"old issuer not trusted", GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: cur}}}, false, reportNode("n", oldTokens(cur, time.Hour), nil), "kubelet-restart", "no longer trust", 0},
		{"trust unknown counts as not trusted", GateState{}, false, reportNode("n", oldTokens(cur, time.Hour), nil), "kubelet-restart", "no longer trust", 0},
		{"heals before the deadline", trustedFor(24 * time.Hour), false, reportNode("n", oldTokens(cur, 2*time.Hour), nil), "skip", "before its trust ends", 0},
		{"within the margin of the deadline", trustedFor(24 * time.Hour), false, reportNode("n", oldTokens(cur, 23*time.Hour+30*time.Minute), nil), "kubelet-restart", "trusted until", 24 * time.Hour},
		{"issuers left out of the report cannot be judged", GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: cur}}}, false, reportNode("n", &protocol.TokenReport{Issuer: cur, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 3}}, IssuersTruncated: true}, nil), "kubelet-restart", "left issuers out", 0},
		{"trusted with no end", GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: cur}, {Name: old}}}, false, reportNode("n", oldTokens(cur, time.Hour), nil), "skip", "still trusted", 0},
		{"agent behind: wait", trustedFor(24 * time.Hour), true, reportNode("n", oldTokens(old, 0), nil), "wait", "", 0},
		{"agent behind after the wait", trustedFor(24 * time.Hour), false, reportNode("n", oldTokens(old, 0), nil), "kubelet-restart", "not known", 24 * time.Hour},
		{"bad report", GateState{}, false, reportNode("n", nil, map[string]string{protocol.AnnotationTokens: "{"}), "skip", "not a JSON token report", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := MakePlan(PlanInput{Now: planNow, Issuer: cur, Gate: c.gate, Strategy: KubeletRestart, Margin: time.Hour, WaitForReports: c.wait, Nodes: []*corev1.Node{c.node}})
			got, why := "", ""
			var deadline time.Time
			switch {
			case len(p.Nodes) == 1:
				got, why, deadline = string(p.Nodes[0].Strategy), p.Nodes[0].Reason, p.Nodes[0].Deadline
			case len(p.Skipped) == 1:
				got, why = "skip", p.Skipped[0].Reason
			case len(p.Waiting) == 1:
				got = "wait"
			}
			if got != c.want || !strings.Contains(why, c.why) {
				t.Errorf("got %q (%q), want %q (containing %q); plan %+v", got, why, c.want, c.why, p)
			}
			if c.deadine != 0 && !deadline.Equal(planNow.Add(c.deadine)) {
				t.Errorf("deadline %s, want %s", deadline, planNow.Add(c.deadine))
			}
		})
	}
}

func TestPlanOrder(t *testing.T) {
	gate := GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: "https://new"}, {Name: "https://a", Expires: planNow.Add(3 * time.Hour)}, {Name: "https://b", Expires: planNow.Add(2 * time.Hour)}}}
	rep := func(iss string) *protocol.TokenReport {
		return &protocol.TokenReport{Issuer: "https://new", Issuers: []protocol.IssuerTokens{{Issuer: iss, Tokens: 1, LastRefreshAt: planNow.Add(5 * time.Hour)}}}
	}
	p := MakePlan(PlanInput{Now: planNow, Issuer: "https://new", Gate: gate, Strategy: Reboot, Margin: time.Hour, Nodes: []*corev1.Node{
		reportNode("z-later", rep("https://a"), nil), reportNode("y-sooner", rep("https://b"), nil),
		reportNode("x-broken", &protocol.TokenReport{Stale: map[protocol.State]int{protocol.StateExpired: 1}}, nil),
	}})
	var order []string
	for _, n := range p.Nodes {
		order = append(order, n.Name)
	}
	if strings.Join(order, ",") != "x-broken,y-sooner,z-later" {
		t.Errorf("order %v: want the broken node first, then by deadline", order)
	}
	if p.Triggers[TriggerIssuer] != 2 || p.Triggers[TriggerStaleTokens] != 1 {
		t.Errorf("triggers %v", p.Triggers)
	}
}

// A node running app-stale pods is planned with trigger app-stale even
// with every file fresh; a node that needs work for its tokens keeps that
// trigger; an excluded node stays skipped.
func TestMakePlanAppStale(t *testing.T) {
	const cur, old = "https://new", "https://old"
	fresh := &protocol.TokenReport{Issuer: cur, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 3}}}
	oldTokens := &protocol.TokenReport{Issuer: cur, Tokens: 3, Issuers: []protocol.IssuerTokens{{Issuer: cur, Tokens: 1}, {Issuer: old, Tokens: 2}}}
	p := MakePlan(PlanInput{Now: planNow, Issuer: cur, Strategy: Auto, Gate: GateState{TrustKnown: true, Trusted: []TrustedIssuer{{Name: cur}}},
		AppStale: map[string]int{"stale": 2, "both": 1, "excluded": 1},
		Nodes: []*corev1.Node{reportNode("stale", fresh, nil), reportNode("both", oldTokens, nil), reportNode("fine", fresh, nil),
			reportNode("excluded", fresh, map[string]string{AnnotationExclude: "maintenance"})}})
	got := map[string]string{}
	for _, n := range p.Nodes {
		got[n.Name] = string(n.Strategy) + ": " + n.Reason
	}
	want := map[string]string{"stale": "auto: 2 pods whose apps present a token the kubelet replaced (app-stale)",
		"both": "auto: 2 tokens from https://old, which the API servers no longer trust"}
	if mustJSON(got) != mustJSON(want) {
		t.Errorf("planned %v; want %v", got, want)
	}
	if p.Triggers[TriggerAppStale] != 1 || p.Triggers[TriggerIssuer] != 1 || len(p.Skipped) != 1 || p.Skipped[0].Name != "excluded" {
		t.Errorf("triggers %v, skipped %v", p.Triggers, p.Skipped)
	}
}
