package coordinator

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/protocol"
)

// Reboot is the documentation's rolling reboot: drain, reboot, wait for a
// new boot ID and Ready.
const Reboot protocol.Strategy = "reboot"

type reboot struct{}

func (reboot) name() protocol.Strategy { return Reboot }

func (reboot) prepare(ctx context.Context, client kubernetes.Interface, n *corev1.Node, _ string) (*preparation, string, error) {
	node := n.Name
	owners, err := drainedOwners(ctx, client, node)
	if err != nil {
		return nil, "", err
	}
	return &preparation{kind: "drain", requestNote: "drained; ", owners: owners,
		run: func(ctx context.Context, d Drainer, opts DrainOptions) error { return d.Drain(ctx, node, opts) }}, "", nil
}

// drainedOwners are the controllers (ReplicaSets, StatefulSets) of the
// pods a drain of node moves elsewhere; DaemonSet pods stay, and a pod no
// controller recreates is not waited for. Recorded on the node state, they
// let a RolloutPolicy's health gate (evictedPodsReady) hold the pool's
// next node until they report every replica Ready again.
func drainedOwners(ctx context.Context, client kubernetes.Interface, node string) ([]protocol.OwnerRef, error) {
	list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return nil, fmt.Errorf("listing the pods on node %s before its drain (their controllers are what a health gate waits for): %w", node, err)
	}
	var owners []protocol.OwnerRef
	for i := range list.Items {
		p := &list.Items[i]
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if ctrl := metav1.GetControllerOf(p); ctrl != nil && (ctrl.Kind == "ReplicaSet" || ctrl.Kind == "StatefulSet") {
			owners = mergeOwners(owners, []protocol.OwnerRef{{Kind: ctrl.Kind, Namespace: p.Namespace, Name: ctrl.Name}})
		}
	}
	return owners, nil
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
	if tv := tokensVerdict(in); !tv.ok {
		return tv, nil
	}
	return verdict{ok: true}, nil
}
