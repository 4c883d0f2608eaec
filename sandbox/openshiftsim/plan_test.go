package openshiftsim

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/fake"
)

func TestNextRollout(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	old, x, y := "https://old.example", "https://x.example", "https://y.example"
	state := func(signing string, previous ...trustedIssuer) issuerState {
		return issuerState{signing: signing, previous: previous}
	}
	trusted := func(name string, expires time.Time) trustedIssuer { return trustedIssuer{name: name, expires: expires} }
	for _, tc := range []struct {
		name        string
		offset      time.Duration // of the decision's time from now
		cur         issuerState
		want        string
		window      time.Duration
		keepExpired bool
		servers     [][]string
		wantOK      bool
		wantPlan    issuerState
		wantReason  string
	}{
		{
			name: "settled", cur: state(old), want: old, window: day,
			servers: [][]string{{old}, {old}, {old}},
		},
		{
			name: "change with no trust window drops the old issuer", cur: state(old), want: x,
			servers: [][]string{{old}, {old}, {old}},
			wantOK:  true, wantPlan: state(x), wantReason: RolloutIssuerChanged,
		},
		{
			name: "change keeps the old issuer for the window", cur: state(old), want: x, window: day,
			servers: [][]string{{old}, {old}, {old}},
			wantOK:  true, wantPlan: state(x, trusted(old, now.Add(day))), wantReason: RolloutIssuerChanged,
		},
		{
			name: "second change keeps both earlier issuers until their own expiry", cur: state(x, trusted(old, now.Add(time.Hour))), want: y, window: day,
			wantOK: true, wantPlan: state(y, trusted(x, now.Add(day)), trusted(old, now.Add(time.Hour))), wantReason: RolloutIssuerChanged,
		},
		{
			name: "switching back to a trusted issuer does not list it twice", cur: state(x, trusted(old, now.Add(time.Hour))), want: old, window: day,
			wantOK: true, wantPlan: state(old, trusted(x, now.Add(day))), wantReason: RolloutIssuerChanged,
		},
		{
			name: "an expired issuer is not carried into the next revision", cur: state(x, trusted(old, now)), want: y, window: day,
			wantOK: true, wantPlan: state(y, trusted(x, now.Add(day))), wantReason: RolloutIssuerChanged,
		},
		{
			name: "not yet expired", cur: state(x, trusted(old, now.Add(time.Second))), want: x, window: day,
			servers: [][]string{{x, old}, {x, old}},
		},
		{
			name: "expired: roll without it", cur: state(x, trusted(old, now)), want: x, window: day,
			servers: [][]string{{x, old}, {x, old}},
			wantOK:  true, wantPlan: state(x), wantReason: RolloutIssuerExpired,
		},
		{
			name: "expired but kept", cur: state(x, trusted(old, now.Add(-day))), want: x, window: day, keepExpired: true,
			servers: [][]string{{x, old}, {x, old}},
		},
		{
			name: "a server left behind is rolled again", cur: state(x), want: x,
			servers: [][]string{{x}, {old}, {old}},
			wantOK:  true, wantPlan: state(x), wantReason: RolloutServersDiffer,
		},
		{
			name: "a server down is rolled again", cur: state(x), want: x,
			servers: [][]string{{x}, nil},
			wantOK:  true, wantPlan: state(x), wantReason: RolloutServersDiffer,
		},
		{
			name: "expiry is truncated to what the status can hold", offset: 700 * time.Millisecond, cur: state(old), want: x, window: time.Hour,
			wantOK: true, wantPlan: state(x, trusted(old, now.Add(time.Hour))), wantReason: RolloutIssuerChanged,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, ok := nextRollout(tc.cur, tc.want, now.Add(tc.offset), tc.window, tc.keepExpired, tc.servers)
			if ok != tc.wantOK {
				t.Fatalf("rollout due = %v, want %v (plan %+v)", ok, tc.wantOK, plan)
			}
			if !ok {
				return
			}
			if !reflect.DeepEqual(plan.issuers, tc.wantPlan) || plan.reason != tc.wantReason {
				t.Errorf("plan = %+v %s\nwant   %+v %s", plan.issuers, plan.reason, tc.wantPlan, tc.wantReason)
			}
		})
	}
}

type fakeControlPlane struct{ n int }

func (f fakeControlPlane) APIServers() int                                       { return f.n }
func (f fakeControlPlane) Issuers(int) []string                                  { return []string{"https://old.example"} }
func (f fakeControlPlane) RestartAPIServer(context.Context, int, []string) error { return nil }

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New(Config{ControlPlane: fakeControlPlane{n: 3}, NodeNames: []string{"master-0", "master-0"}, TrustWindow: -time.Second, StartRevision: -1})
	if err == nil {
		t.Fatal("New accepted an invalid Config")
	}
	for _, want := range []string{"Config.Client is nil", "has 2 names but the control plane has 3 API servers", `repeats "master-0"`, "Config.TrustWindow", "Config.StartRevision"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}

	_, err = New(Config{})
	for _, want := range []string{"Config.ControlPlane is nil", "Config.Client is nil", "Config.NodeNames is empty"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(Config{}) error does not mention %q: %v", want, err)
		}
	}

	op, err := New(Config{ControlPlane: fakeControlPlane{n: 1}, Client: fake.NewSimpleDynamicClient(runtime.NewScheme()), NodeNames: []string{"master-0"}})
	if err != nil {
		t.Fatal(err)
	}
	if op.cfg.StartRevision != DefaultStartRevision || op.cfg.Clock == nil || op.cfg.Log == nil || op.cfg.RestartTimeout == 0 {
		t.Errorf("defaults not applied: %+v", op.cfg)
	}
}
