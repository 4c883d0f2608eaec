package coordinator_test

import (
	"cmp"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/coordinator"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// Two pools with their own strategy and drain settings, against the real
// API server: pool restart gets kubelet restarts; pool reboot gets reboots
// whose drain has the pool's 20 s timeout, and force-deletes its web pod,
// whose eviction a PodDisruptionBudget refuses (at the flags' timeout of a
// minute and without force-deletion the drain would halt the rollout);
// the node no policy covers follows the flags. The TokenRollout says which
// strategy, policy and drain each node got. A TokenRollout asking for a
// strategy of its own then overrides the pools'.
func TestPolicyStrategyAndDrainPerPool(t *testing.T) {
	nodes := []string{"restart-1", "reboot-1", "rest-1"}
	e := startEnv(t, 1, nodes...)
	vc := e.installCRDs()
	e.label("restart-1", map[string]string{"pool": "restart"})
	e.label("reboot-1", map[string]string{"pool": "reboot"})
	e.createPolicy(vc, "restart", map[string]string{"pool": "restart"}, func(s *v1alpha1.RolloutPolicySpec) {
		s.Strategy = v1alpha1.StrategyKubeletRestart
		s.Drain = &v1alpha1.DrainOptions{Timeout: &metav1.Duration{Duration: 7 * time.Minute}}
	})
	e.createPolicy(vc, "reboot", map[string]string{"pool": "reboot"}, func(s *v1alpha1.RolloutPolicySpec) {
		s.Strategy = v1alpha1.StrategyReboot
		s.Drain = &v1alpha1.DrainOptions{Timeout: &metav1.Duration{Duration: 20 * time.Second}, GracePeriodSeconds: ptr.To[int64](0),
			ForceDeletePods: []v1alpha1.PodSelector{{Selector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}}
	})
	e.blockEvictions()
	e.policyCoordinator(vc, func(cfg *coordinator.Config) {
		cfg.Strategy, cfg.DrainTimeout = coordinator.KubeletRestart, time.Minute
		cfg.Drainer = coordinator.KubectlDrainer{Client: e.admin, Force: true}
	})
	st := e.rollOutNewIssuer()
	o, err := vc.TokenrollV1alpha1().TokenRollouts().Get(e.ctx, st.Rollout.ID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range o.Status.Nodes {
		// A node's strategy is kept only where it differs from the
		// rollout's, which keeps the status small on a large fleet.
		got[n.Name] = string(cmp.Or(n.Strategy, o.Status.Strategy)) + " | " + n.Policy + " | " + n.Drain
	}
	for node, want := range map[string]string{
		"restart-1": "kubelet-restart | restart | timeout 7m0s (RolloutPolicy restart; the flags for the rest)",
		"reboot-1":  "reboot | reboot | timeout 20s, grace period 0s, force-delete 1 selector (RolloutPolicy reboot; the flags for the rest)",
		"rest-1":    "kubelet-restart |  | the coordinator's flags",
	} {
		if got[node] != want {
			t.Errorf("TokenRollout %s node %s: %q; want %q", o.Name, node, got[node], want)
		}
	}
	for node, want := range map[string][2]int32{"restart-1": {0, 1}, "reboot-1": {1, 0}, "rest-1": {0, 1}} {
		m := e.fleet.Members[node]
		if r, k := m.Reboots.Load(), m.KubeletRestarts.Load(); r != want[0] || k != want[1] {
			t.Errorf("node %s: %d reboots and %d kubelet restarts; want %d and %d", node, r, k, want[0], want[1])
		}
	}
	if _, err := e.admin.CoreV1().Pods("build").Get(e.ctx, "web-reboot-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("web-reboot-1, whose eviction the PodDisruptionBudget refused: %v; want it force-deleted by the reboot pool's drain", err)
	}
	for _, p := range []string{"web-restart-1", "web-rest-1"} {
		if _, err := e.admin.CoreV1().Pods("build").Get(e.ctx, p, metav1.GetOptions{}); err != nil {
			t.Errorf("%s, on a node that was not drained: %v", p, err)
		}
	}
	e.checkInvariants(3)

	// The rollout's own strategy wins over the pools'.
	e.requestStart(coordinator.KubeletRestart, "pool=reboot")
	st = e.waitState("the kubelet-restart rollout of pool reboot done", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.ID != o.Name && s.Rollout.Phase == coordinator.RolloutDone
	})
	if len(st.Rollout.Nodes) != 1 || st.Rollout.Nodes[0].Name != "reboot-1" || st.Rollout.Nodes[0].Strategy != coordinator.KubeletRestart {
		t.Errorf("override rollout nodes %+v; want reboot-1 with kubelet-restart", st.Rollout.Nodes)
	}
	if m := e.fleet.Members["reboot-1"]; m.Reboots.Load() != 1 || m.KubeletRestarts.Load() != 1 {
		t.Errorf("reboot-1: %d reboots, %d kubelet restarts after the override; want 1 and 1", m.Reboots.Load(), m.KubeletRestarts.Load())
	}
}
