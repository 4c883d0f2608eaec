package coordinator

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/protocol"
)

// Reboot is the documentation's rolling reboot: drain, reboot, wait for a
// new boot ID and Ready.
const Reboot protocol.Strategy = "reboot"

type reboot struct{}

func (reboot) name() protocol.Strategy { return Reboot }

func (reboot) prepare(_ context.Context, _ kubernetes.Interface, n *corev1.Node, _ string) (*preparation, string, error) {
	node := n.Name
	return &preparation{kind: "drain", requestNote: "drained; ",
		run: func(ctx context.Context, d Drainer, timeout time.Duration) error { return d.Drain(ctx, node, timeout) }}, "", nil
}

func (reboot) action() protocol.Action { return protocol.ActionReboot }

// verify: back with a new boot ID and Ready within --action-timeout, then
// the new agent's report clean. The report may be from before the reboot
// (the agent went down with the node): without waiting for the new one,
// the planner would start another rollout for this node on the stale one.
func (reboot) verify(_ context.Context, _ kubernetes.Interface, in verifyInput) (verdict, error) {
	boot := in.node.Status.NodeInfo.BootID
	if boot == "" || boot == in.state.BootID || !in.ready {
		v := waitFor("the node is not back with a new boot ID and Ready", HaltNodeNotBack)
		v.withinAction = true
		return v, nil
	}
	if tv := tokensVerdict(in.node, in.issuer); !tv.ok {
		return tv, nil
	}
	return verdict{ok: true}, nil
}
