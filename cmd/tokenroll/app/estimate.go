package app

import (
	"time"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/protocol"
)

// defaultPerNode is how long one node takes, cordon to uncordon, when no
// rollout recorded in the state measured it: stated, not measured, and
// printed as such. Each is on the long side of what the step waits for.
var defaultPerNode = map[protocol.Strategy]time.Duration{
	// The kubelet rewrites every projected token about a second after it
	// restarts; the agent's next scan (every 30 s) reports them fresh.
	"kubelet-restart": time.Minute,
	// Its first rung, a kubelet restart; the watch of the node's apps
	// that follows overlaps the next nodes, and is paid once
	// (appsWatchOnce).
	"auto": time.Minute,
	// Evictions honour PodDisruptionBudgets, then the owners must report
	// every replica ready again.
	"pod-restart": 5 * time.Minute,
	// A drain, the reboot, and the node Ready again.
	"reboot": 10 * time.Minute,
}

// appsWatchOnce is what a rollout with auto takes after its last node's
// own remediation: the watch of that node's apps, for the coordinator's
// default --app-stale-grace.
var appsWatchOnce = coordinator.AppsWatch(apps.DefaultOptions().Grace)

// fallbackPerNode is the per-node time of a strategy with no default of
// its own: the longest default, so the estimate errs late.
const fallbackPerNode = 10 * time.Minute

// Per-node time sources, as the JSON output names them.
const (
	perNodeMeasured = "measured"
	perNodeDefault  = "default"
	perNodeFlag     = "flag"
)

// nodeSample is one node a recorded rollout finished: its strategy and
// how long it took from its cordon to its verification (with auto, to the
// start of the watch of its apps).
type nodeSample struct {
	Strategy protocol.Strategy
	Took     time.Duration
}

// perNodeTime is the time one node takes with strategy: override when
// positive, else the median of the samples taken with that strategy, else
// the stated default. It returns the source and the samples used.
func perNodeTime(strategy protocol.Strategy, samples []nodeSample, override time.Duration) (time.Duration, string, int) {
	if override > 0 {
		return override, perNodeFlag, 0
	}
	var took []time.Duration
	for _, s := range samples {
		if s.Strategy == strategy && s.Took > 0 {
			took = append(took, s.Took)
		}
	}
	if len(took) > 0 {
		return coordinator.UpperMedian(took), perNodeMeasured, len(took)
	}
	if d, ok := defaultPerNode[strategy]; ok {
		return d, perNodeDefault, 0
	}
	return fallbackPerNode, perNodeDefault, 0
}
