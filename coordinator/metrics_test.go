package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The coordinator's whole exposition for a known rollout: one node
// rebooted (drained in 30 s, back 90 s later), the next cordoned after the
// 5 s settle, one pending, behind an open OpenShift gate. The rollout is
// expected to end when the node in progress has taken the 120 s the first
// took, and the pending one 5 s and 120 s after that: at t0+370s.
func TestMetricsExposition(t *testing.T) {
	f := newFixture(t, testNode("n1"), testNode("n2"), testNode("n3"), rolloutConfigMap(rollout(Reboot, "n1", "n2", "n3")))
	f.cfg.Settle = 5 * time.Second
	f.gate.Set(GateState{Provider: GateOpenShift, Open: true, Message: "3 nodes at revision 12", LatestRevision: 12, CurrentMinRevision: 11,
		CurrentMaxRevision: 12, TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}, {Name: oldIssuer, Expires: t0.Add(24 * time.Hour)}}})

	f.sync() // n1 cordoned
	f.sync() // n1 draining
	f.awaitDrainEnd()
	f.clock.Step(30 * time.Second)
	f.sync() // reboot requested
	f.updateNode("n1", bootID("boot-2"))
	f.clock.Step(90 * time.Second)
	if d := f.sync(); d != 5*time.Second { // n1 verified
		t.Errorf("after a verified node the next look is in %s; want the settle time, 5s", d)
	}
	f.expectDrains(drainCall{Node: "n1", Timeout: 10 * time.Minute})
	f.clock.Step(5 * time.Second)
	f.sync() // n2 cordoned
	f.drainer.holdCalls()
	f.sync() // n2 draining

	const want = `
# HELP tokenroll_coordinator_leader 1 while this replica holds the coordinator Lease.
# TYPE tokenroll_coordinator_leader gauge
tokenroll_coordinator_leader 0
# HELP tokenroll_coordinator_overhead_seconds Time from one node verified to the next node cordoned: the coordinator's own overhead.
# TYPE tokenroll_coordinator_overhead_seconds histogram
tokenroll_coordinator_overhead_seconds_bucket{le="0.01"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="0.05"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="0.1"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="0.25"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="0.5"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="1"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="2.5"} 0
tokenroll_coordinator_overhead_seconds_bucket{le="5"} 1
tokenroll_coordinator_overhead_seconds_bucket{le="10"} 1
tokenroll_coordinator_overhead_seconds_bucket{le="+Inf"} 1
tokenroll_coordinator_overhead_seconds_sum 5
tokenroll_coordinator_overhead_seconds_count 1
# HELP tokenroll_gate_last_transition_timestamp_seconds When the revision gate last opened or closed (Unix time).
# TYPE tokenroll_gate_last_transition_timestamp_seconds gauge
tokenroll_gate_last_transition_timestamp_seconds 1.7957808e+09
# HELP tokenroll_gate_open 1 when the revision gate is open (disruptive steps may start), 0 while the kube-apiserver configuration rolls out.
# TYPE tokenroll_gate_open gauge
tokenroll_gate_open{provider="openshift"} 1
# HELP tokenroll_gate_revision kube-apiserver revisions the gate saw (openshift): latest available, lowest and highest current.
# TYPE tokenroll_gate_revision gauge
tokenroll_gate_revision{kind="current_max"} 12
tokenroll_gate_revision{kind="current_min"} 11
tokenroll_gate_revision{kind="latest"} 12
# HELP tokenroll_issuer_trust_expiry_timestamp_seconds When the earliest trust window of a previous issuer closes (Unix time); 0 when none is known.
# TYPE tokenroll_issuer_trust_expiry_timestamp_seconds gauge
tokenroll_issuer_trust_expiry_timestamp_seconds 1.7958672e+09
# HELP tokenroll_node_step_duration_seconds Duration of each step of the per-node protocol.
# TYPE tokenroll_node_step_duration_seconds histogram
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="120"} 1
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="300"} 1
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="600"} 1
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="1800"} 1
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="reboot",le="+Inf"} 1
tokenroll_node_step_duration_seconds_sum{step="action",strategy="reboot"} 90
tokenroll_node_step_duration_seconds_count{step="action",strategy="reboot"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="30"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="60"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="120"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="300"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="600"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="1800"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="reboot",le="+Inf"} 1
tokenroll_node_step_duration_seconds_sum{step="drain",strategy="reboot"} 30
tokenroll_node_step_duration_seconds_count{step="drain",strategy="reboot"} 1
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="120"} 1
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="300"} 1
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="600"} 1
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="1800"} 1
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="reboot",le="+Inf"} 1
tokenroll_node_step_duration_seconds_sum{step="total",strategy="reboot"} 120
tokenroll_node_step_duration_seconds_count{step="total",strategy="reboot"} 1
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="auto",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="drain",strategy="auto"} 0
tokenroll_node_step_duration_seconds_count{step="drain",strategy="auto"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="auto",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="action",strategy="auto"} 0
tokenroll_node_step_duration_seconds_count{step="action",strategy="auto"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="auto",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="apps",strategy="auto"} 0
tokenroll_node_step_duration_seconds_count{step="apps",strategy="auto"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="auto",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="total",strategy="auto"} 0
tokenroll_node_step_duration_seconds_count{step="total",strategy="auto"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="kubelet-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="drain",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_count{step="drain",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="kubelet-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="action",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_count{step="action",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="kubelet-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="apps",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_count{step="apps",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="kubelet-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="total",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_count{step="total",strategy="kubelet-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="drain",strategy="pod-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="drain",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_count{step="drain",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="action",strategy="pod-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="action",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_count{step="action",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="pod-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="apps",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_count{step="apps",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="total",strategy="pod-restart",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="total",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_count{step="total",strategy="pod-restart"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="0.1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="0.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="1"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="2.5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="5"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="10"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="30"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="60"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="120"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="300"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="600"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="1800"} 0
tokenroll_node_step_duration_seconds_bucket{step="apps",strategy="reboot",le="+Inf"} 0
tokenroll_node_step_duration_seconds_sum{step="apps",strategy="reboot"} 0
tokenroll_node_step_duration_seconds_count{step="apps",strategy="reboot"} 0
# HELP tokenroll_nodes_excluded Nodes a person excluded from tokenroll (annotation tokenroll.io/exclude).
# TYPE tokenroll_nodes_excluded gauge
tokenroll_nodes_excluded 0
# HELP tokenroll_nodes_needing_work Nodes the planner finds needing work now (stale or old-issuer tokens, a required reboot).
# TYPE tokenroll_nodes_needing_work gauge
tokenroll_nodes_needing_work 0
# HELP tokenroll_nodes_unresolved Nodes whose tokens were still stale after their remediation was verified: left alone until their stale tokens change or a person asks for a retry.
# TYPE tokenroll_nodes_unresolved gauge
tokenroll_nodes_unresolved 0
# HELP tokenroll_plan_sync_duration_seconds Time one sync of the leader takes: reading the cached Nodes and the rollout state, planning, and the writes it decides on.
# TYPE tokenroll_plan_sync_duration_seconds histogram
tokenroll_plan_sync_duration_seconds_bucket{le="0.0005"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.001"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.0025"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.005"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.01"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.025"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.05"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.1"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.25"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="0.5"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="1"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="2.5"} 6
tokenroll_plan_sync_duration_seconds_bucket{le="+Inf"} 6
tokenroll_plan_sync_duration_seconds_sum 0
tokenroll_plan_sync_duration_seconds_count 6
# HELP tokenroll_rollout_estimated_completion_timestamp_seconds When the running rollout is expected to end (Unix time), from the median time its finished nodes took, the nodes left and the nodes it may disrupt at once; 0 when there is no estimate (no rollout running, none of its nodes finished yet, or the revision gate closed).
# TYPE tokenroll_rollout_estimated_completion_timestamp_seconds gauge
tokenroll_rollout_estimated_completion_timestamp_seconds 1.79578117e+09
# HELP tokenroll_rollout_halts_total Rollouts halted, by reason.
# TYPE tokenroll_rollout_halts_total counter
tokenroll_rollout_halts_total{reason="ActionFailed"} 0
tokenroll_rollout_halts_total{reason="ActionTimeout"} 0
tokenroll_rollout_halts_total{reason="CordonFailed"} 0
tokenroll_rollout_halts_total{reason="DrainFailed"} 0
tokenroll_rollout_halts_total{reason="DrainTimeout"} 0
tokenroll_rollout_halts_total{reason="NodeNotBack"} 0
tokenroll_rollout_halts_total{reason="Uncordoned"} 0
tokenroll_rollout_halts_total{reason="VerifyTimeout"} 0
# HELP tokenroll_rollout_max_unavailable_nodes Nodes the running rollout may disrupt at once: --max-unavailable, or more when raised to meet the previous issuer's trust deadline (never above --deadline-max-unavailable); 0 when no rollout runs.
# TYPE tokenroll_rollout_max_unavailable_nodes gauge
tokenroll_rollout_max_unavailable_nodes 1
# HELP tokenroll_rollout_nodes Nodes of the current rollout by state.
# TYPE tokenroll_rollout_nodes gauge
tokenroll_rollout_nodes{state="done"} 1
tokenroll_rollout_nodes{state="dry_run"} 0
tokenroll_rollout_nodes{state="excluded"} 0
tokenroll_rollout_nodes{state="halted"} 0
tokenroll_rollout_nodes{state="in_progress"} 1
tokenroll_rollout_nodes{state="pending"} 1
tokenroll_rollout_nodes{state="skipped"} 0
tokenroll_rollout_nodes{state="unresolved"} 0
# HELP tokenroll_rollout_phase 1 for the current rollout's phase (none when there is no rollout), 0 for the others.
# TYPE tokenroll_rollout_phase gauge
tokenroll_rollout_phase{phase="cancelled"} 0
tokenroll_rollout_phase{phase="done"} 0
tokenroll_rollout_phase{phase="halted"} 0
tokenroll_rollout_phase{phase="none"} 0
tokenroll_rollout_phase{phase="paused"} 0
tokenroll_rollout_phase{phase="running"} 1
# HELP tokenroll_rollout_waiting 1 for what the coordinator waits for while none of its nodes is in progress (crd-not-installed, gate-closed, issuer-unknown, agent-reports, max-unavailable, node-not-ready, machine-config, kured-lock, window, zone, blocking-pod, blocking-alert, health-gate, policy-refused), 0 for the others.
# TYPE tokenroll_rollout_waiting gauge
tokenroll_rollout_waiting{reason="agent-reports"} 0
tokenroll_rollout_waiting{reason="blocking-alert"} 0
tokenroll_rollout_waiting{reason="blocking-pod"} 0
tokenroll_rollout_waiting{reason="crd-not-installed"} 0
tokenroll_rollout_waiting{reason="gate-closed"} 0
tokenroll_rollout_waiting{reason="health-gate"} 0
tokenroll_rollout_waiting{reason="issuer-unknown"} 0
tokenroll_rollout_waiting{reason="kured-lock"} 0
tokenroll_rollout_waiting{reason="machine-config"} 0
tokenroll_rollout_waiting{reason="max-unavailable"} 0
tokenroll_rollout_waiting{reason="node-not-ready"} 0
tokenroll_rollout_waiting{reason="policy-refused"} 0
tokenroll_rollout_waiting{reason="window"} 0
tokenroll_rollout_waiting{reason="zone"} 0
# HELP tokenroll_rollout_waiting_since_timestamp_seconds Since when the coordinator waits for the reason tokenroll_rollout_waiting names (Unix time); 0 when it is not waiting.
# TYPE tokenroll_rollout_waiting_since_timestamp_seconds gauge
tokenroll_rollout_waiting_since_timestamp_seconds 0
`
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
