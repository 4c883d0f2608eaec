package coordinator

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// The coordinator alone changes a rollout's phase: it applies a person's
// request, or refuses it saying why, and clears it either way.
func TestApplySteer(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		phase     RolloutPhase
		verb      Verb
		rollout   string // the rollout the request names
		want      RolloutPhase
		steered   string
		haltClear bool
	}{
		{"pause a running rollout", RolloutRunning, VerbPause, "r-1", RolloutPaused, "pause requested by alice at 2026-11-27T11:59:00Z: paused, was running", false},
		{"resume a halted rollout", RolloutHalted, VerbResume, "r-1", RolloutRunning, "resume requested by alice", true},
		{"cancel a paused rollout", RolloutPaused, VerbCancel, "r-1", RolloutCancelled, "cancel requested by alice", false},
		{"resume a running rollout", RolloutRunning, VerbResume, "r-1", RolloutRunning, "resume requested by alice refused: cannot resume a rollout that is running", false},
		{"pause another rollout", RolloutRunning, VerbPause, "r-0", RolloutRunning, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := State{Rollout: &Rollout{ID: "r-1", Phase: c.phase, HaltReason: HaltDrainTimeout, HaltNode: "n", Message: "stuck"},
				Steer: &SteerRequest{Verb: c.verb, Rollout: c.rollout, RequestedBy: "alice", RequestedAt: now.Add(-time.Minute)}}
			raw, _ := json.Marshal(st)
			client := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "tokenroll", Name: ConfigMapName, ResourceVersion: "1"},
				Data: map[string]string{StateKey: string(raw)}})
			c0, err := New(Config{Client: client, Namespace: "tokenroll", Gate: noneGate{}, Strategy: KubeletRestart, MaxUnavailable: intstr.FromInt32(1),
				DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute, IssuerRefresh: time.Minute, Log: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			tm := &term{c: c0, cm: cache.NewIntegerResourceVersionMutationCache(klog.Background(), cache.NewStore(cache.MetaNamespaceKeyFunc), nil, time.Minute, true)}
			got, err := tm.applySteer(context.Background(), world{now: now, state: st})
			if err != nil {
				t.Fatal(err)
			}
			stored, err := c0.store.Get(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []State{got, stored} {
				r := s.Rollout
				if s.Steer != nil || r.Phase != c.want || !strings.Contains(r.Steered, c.steered) || (c.steered == "" && r.Steered != "") {
					t.Errorf("steer %+v, phase %s, steered %q; want cleared, %s, %q", s.Steer, r.Phase, r.Steered, c.want, c.steered)
				}
				if cleared := r.HaltReason == "" && r.HaltNode == ""; cleared != c.haltClear {
					t.Errorf("halt reason %q node %q; want cleared %v", r.HaltReason, r.HaltNode, c.haltClear)
				}
				if c.haltClear && r.Message != "resumed by alice; was DrainTimeout stuck" {
					t.Errorf("message %q", r.Message)
				}
			}
			// Read your writes: the term's cache has the state it wrote.
			if cm := tm.configMap(); cm == nil || !strings.Contains(cm.Data[StateKey], string(c.want)) {
				t.Errorf("the term's cache does not hold the write: %v", cm)
			}
		})
	}
}
