package coordinator

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/protocol"
)

func TestStrategyRegistry(t *testing.T) {
	want := []protocol.Strategy{Auto, KubeletRestart, PodRestart, Reboot}
	if got := Strategies(); !slices.Equal(got, want) {
		t.Errorf("Strategies() = %v, want %v (auto, then least disruptive first)", got, want)
	}
	if got := StrategyNames(); strings.Join(got, ",") != "auto,kubelet-restart,pod-restart,reboot" {
		t.Errorf("StrategyNames() = %v", got)
	}
	for _, s := range Strategies() {
		got, err := ParseStrategy(string(s))
		if err != nil || got != s {
			t.Errorf("ParseStrategy(%q) = %q, %v", s, got, err)
		}
		impl, ok := remediationFor(s)
		if !ok || impl.name() != s {
			t.Errorf("remediationFor(%q) = %v, %v", s, impl, ok)
			continue
		}
		if a := impl.action(); a != "" && !a.Valid() {
			t.Errorf("%s asks the agent for %q, which no agent performs", s, a)
		}
	}
	if _, err := ParseStrategy("drain"); err == nil || !strings.Contains(err.Error(), "auto, kubelet-restart, pod-restart, reboot") {
		t.Errorf("ParseStrategy(drain) = %v; want an error listing the strategies", err)
	}
	// What each strategy asks the agent for is its own.
	for s, a := range map[protocol.Strategy]protocol.Action{KubeletRestart: protocol.ActionKubeletRestart, PodRestart: "", Reboot: protocol.ActionReboot} {
		if impl, _ := remediationFor(s); impl.action() != a {
			t.Errorf("%s asks for %q, want %q", s, impl.action(), a)
		}
	}
}

func TestSteerTransitions(t *testing.T) {
	phases := []RolloutPhase{RolloutRunning, RolloutPaused, RolloutHalted, RolloutCancelled, RolloutDone}
	// want[verb][phase]: the phase it moves to, or "" when refused.
	want := map[Verb]map[RolloutPhase]RolloutPhase{
		VerbPause:  {RolloutRunning: RolloutPaused},
		VerbResume: {RolloutPaused: RolloutRunning, RolloutHalted: RolloutRunning},
		VerbCancel: {RolloutRunning: RolloutCancelled, RolloutPaused: RolloutCancelled, RolloutHalted: RolloutCancelled},
		"restart":  {},
	}
	for verb, to := range want {
		for _, from := range phases {
			got, err := Steer(verb, from)
			switch w, ok := to[from]; {
			case ok && (err != nil || got != w):
				t.Errorf("%s a %s rollout: %s, %v; want %s", verb, from, got, err, w)
			case !ok && err == nil:
				t.Errorf("%s a %s rollout: moved to %s; want it refused", verb, from, got)
			case !ok && (got != from || !strings.Contains(err.Error(), "cannot "+string(verb)+" a rollout that is "+string(from))):
				t.Errorf("%s a %s rollout refused with %s, %v", verb, from, got, err)
			}
		}
	}
}

func TestMaxUnavailable(t *testing.T) {
	cases := []struct {
		value string
		nodes int
		want  int
		err   string
	}{
		{"1", 10, 1, ""},
		{"3", 2, 3, ""},
		{"10%", 50, 5, ""},
		{"10%", 5, 1, ""}, // rounded down, at least 1
		{"100%", 7, 7, ""},
		{"0", 10, 0, "at least 1"},
		{"0%", 10, 0, "at least 1"},
		{"150%", 10, 0, "at most 100%"},
		{"many", 10, 0, "want a number of nodes"},
		{"", 10, 0, "want a number of nodes"},
	}
	for _, c := range cases {
		v, err := ParseMaxUnavailable(c.value)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseMaxUnavailable(%q) = %v, %v; want %q", c.value, v, err, c.err)
			}
			if _, err := ResolveMaxUnavailable(intstr.Parse(c.value), c.nodes); err == nil {
				t.Errorf("ResolveMaxUnavailable(%q) accepted it", c.value)
			}
			continue
		}
		got, err := ResolveMaxUnavailable(v, c.nodes)
		if err != nil || got != c.want {
			t.Errorf("%q of %d nodes = %d, %v; want %d", c.value, c.nodes, got, err, c.want)
		}
	}
}
