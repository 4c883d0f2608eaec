package actions

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenroll/tokenroll/protocol"
)

// TestHandlerMetricsExposition carries out one kubelet restart (the call
// takes 3 s on the fake clock) and refuses one reboot, and compares the
// handler's exposition with the exact text expected.
func TestHandlerMetricsExposition(t *testing.T) {
	e := newEnv(t)
	e.exec.during = func() { e.clock.Step(3 * time.Second) }
	reg := prometheus.NewRegistry()
	h, err := NewHandler(HandlerConfig{
		NodeName: "node-a", Executor: e.exec, StateDir: filepath.Join(e.dir, "state"), BootIDFile: filepath.Join(e.dir, "boot_id"),
		MaxRequestAge: time.Hour, Reporter: e.node, Clock: e.clock, Registry: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := h.Handle(ctx, request("req-1", protocol.ActionKubeletRestart, "node-a", e.clock.Now()), ""); err != nil {
		t.Fatal(err)
	}
	if err := h.Handle(ctx, request("req-2", protocol.ActionReboot, "node-b", e.clock.Now()), e.node.status); err != nil {
		t.Fatal(err)
	}
	// Steps of the restart: report accepted, record running, report
	// running, call, record done, report done. Of the refusal: one report.
	want := `
# HELP tokenroll_actions_total Requests finished by this agent, by action and result (done, failed, refused).
# TYPE tokenroll_actions_total counter
tokenroll_actions_total{action="kubelet-restart",result="done"} 1
tokenroll_actions_total{action="reboot",result="refused"} 1
tokenroll_actions_total{action="reboot",result="done"} 0
tokenroll_actions_total{action="reboot",result="failed"} 0
tokenroll_actions_total{action="kubelet-restart",result="failed"} 0
tokenroll_actions_total{action="kubelet-restart",result="refused"} 0
# HELP tokenroll_action_step_duration_seconds Time in each step of a request: record (state file), call (the action itself), report (status on the Node).
# TYPE tokenroll_action_step_duration_seconds histogram
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="0.001"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="0.004"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="0.016"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="0.064"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="0.256"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="1.024"} 0
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="4.096"} 1
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="16.384"} 1
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="65.536"} 1
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="262.144"} 1
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="call",le="+Inf"} 1
tokenroll_action_step_duration_seconds_sum{action="kubelet-restart",step="call"} 3
tokenroll_action_step_duration_seconds_count{action="kubelet-restart",step="call"} 1
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="0.001"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="0.004"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="0.016"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="0.064"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="0.256"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="1.024"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="4.096"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="16.384"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="65.536"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="262.144"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="record",le="+Inf"} 2
tokenroll_action_step_duration_seconds_sum{action="kubelet-restart",step="record"} 0
tokenroll_action_step_duration_seconds_count{action="kubelet-restart",step="record"} 2
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="0.001"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="0.004"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="0.016"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="0.064"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="0.256"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="1.024"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="4.096"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="16.384"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="65.536"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="262.144"} 3
tokenroll_action_step_duration_seconds_bucket{action="kubelet-restart",step="report",le="+Inf"} 3
tokenroll_action_step_duration_seconds_sum{action="kubelet-restart",step="report"} 0
tokenroll_action_step_duration_seconds_count{action="kubelet-restart",step="report"} 3
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="0.001"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="0.004"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="0.016"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="0.064"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="0.256"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="1.024"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="4.096"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="16.384"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="65.536"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="262.144"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="report",le="+Inf"} 1
tokenroll_action_step_duration_seconds_sum{action="reboot",step="report"} 0
tokenroll_action_step_duration_seconds_count{action="reboot",step="report"} 1
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="0.001"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="0.004"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="0.016"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="0.064"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="0.256"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="1.024"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="4.096"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="16.384"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="65.536"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="262.144"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="record",le="+Inf"} 0
tokenroll_action_step_duration_seconds_sum{action="reboot",step="record"} 0
tokenroll_action_step_duration_seconds_count{action="reboot",step="record"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="0.001"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="0.004"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="0.016"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="0.064"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="0.256"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="1.024"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="4.096"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="16.384"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="65.536"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="262.144"} 0
tokenroll_action_step_duration_seconds_bucket{action="reboot",step="call",le="+Inf"} 0
tokenroll_action_step_duration_seconds_sum{action="reboot",step="call"} 0
tokenroll_action_step_duration_seconds_count{action="reboot",step="call"} 0
`
	if err := testutil.CollectAndCompare(h.actions, strings.NewReader(want), "tokenroll_actions_total"); err != nil {
		t.Error(err)
	}
	if err := testutil.CollectAndCompare(h.steps, strings.NewReader(want), "tokenroll_action_step_duration_seconds"); err != nil {
		t.Error(err)
	}
	// And nothing else in the handler's registry.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
