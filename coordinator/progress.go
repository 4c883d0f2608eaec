package coordinator

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/protocol"
)

// fillProgress sets each node's step of a TokenRollout about to be written
// from the node's record on the Node, and the summary from the steps. It
// rides on the writes the rollout takes anyway (a phase change, an
// estimate, a wait), so following the nodes costs no write of its own.
func (t *term) fillProgress(o *v1alpha1.TokenRollout) {
	var sum v1alpha1.NodeSummary
	for i := range o.Status.Nodes {
		n := &o.Status.Nodes[i]
		if o.Spec.DryRun || o.Status.DryRunBy != "" {
			n.Step = v1alpha1.NodeStep(protocol.StepDryRun)
		} else if node := t.node(n.Name); node != nil {
			setNodeResult(t.parsed, n, node, o.Name)
		}
		countStep(&sum, n.Step)
	}
	sum.Total = int32(len(o.Status.Nodes))
	o.Status.Summary = sum
	compactNodes(&o.Status)
}

// setNodeResult sets n from node's record for rollout id, parsed through
// parsed.
func setNodeResult(parsed *parsedNodes, n *v1alpha1.NodeResult, node *corev1.Node, id string) {
	s := parsed.readNodeState(node, id)
	n.Policy, n.Drain = "", ""
	switch {
	case s == nil && excludedBy(node) != "":
		n.Step, n.Reason, n.Action = v1alpha1.NodeStep(protocol.StepExcluded), "Excluded", "remove the annotation "+AnnotationExclude+" to include it"
	case s == nil:
		n.Step, n.Reason, n.Action = "pending", "", ""
	default:
		n.LastTransitionTime = &metav1.Time{Time: s.StepAt}
		step := s.Step
		if step == protocol.StepApps {
			// Waiting for the node's apps is part of acting on it.
			step = protocol.StepActing
		}
		n.Step, n.Reason, n.Action = v1alpha1.NodeStep(step), s.Reason, ""
		n.Policy = s.Policy
		if s.Step != protocol.StepDryRun && s.Step != protocol.StepExcluded {
			n.Drain = cut(DescribeDrain(s.Policy, s.Drain), 256)
		}
		switch s.Step {
		case protocol.StepHalted:
			n.Action = "fix the cause, then tokenroll rollout resume (the node is tried again) or cancel"
		case protocol.StepUnresolved:
			n.Action = fmt.Sprintf("tokenroll rollout retry %s, once the cause is fixed", node.Name)
		}
		if len(n.Reason) > 64 {
			n.Reason = n.Reason[:64]
		}
	}
}

func countStep(sum *v1alpha1.NodeSummary, s v1alpha1.NodeStep) {
	switch protocol.Step(s) {
	case protocol.StepDone:
		sum.Done++
	case protocol.StepHalted:
		sum.Halted++
	case protocol.StepUnresolved:
		sum.Unresolved++
	case protocol.StepExcluded:
		sum.Excluded++
	case protocol.StepDryRun:
		sum.DryRun++
	case "", "pending":
		sum.Pending++
	default:
		sum.InProgress++
	}
}
