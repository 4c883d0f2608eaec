package coordinator

import (
	"fmt"
	"math"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/coordinator/policy"
	"github.com/tokenroll/tokenroll/protocol"
)

// This file applies a RolloutPolicy's strategy and drain settings to the
// nodes it covers; the coordinator's flags apply wherever a policy leaves
// them out, and to the nodes no policy covers (or every node, while the
// policies are not read).

// poolStrategies gives each planned node the strategy of the RolloutPolicy
// that covers it (spec.strategy), or of the one the rollout names (its
// spec.policyName: named). The caller leaves them as planned when
// the rollout names its own strategy (a TokenRollout's spec.strategy),
// which overrides the policies'; a node that reports a required reboot
// keeps the reboot the planner gave it, the one strategy that meets it.
func (t *term) poolStrategies(w world, named string, nodes []PlannedNode) {
	if t.policyStore() == nil || len(nodes) == 0 {
		return
	}
	cov := t.coverage(t.policies(), &Rollout{Policy: named, Nodes: nodes}, w.nodes)
	for i := range nodes {
		p := cov.Of[nodes[i].Name]
		if p == nil || p.Object.Spec.Strategy == "" {
			continue
		}
		if n := w.byName[nodes[i].Name]; n != nil && nodes[i].Strategy == Reboot {
			if rr, err := protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired]); err == nil && rr {
				continue
			}
		}
		nodes[i].Strategy = protocol.Strategy(p.Object.Spec.Strategy)
	}
}

// drainSettingsOf is what p's spec.drain says beyond the flags, as a
// starting node records it (nil: nothing; the flags apply).
func drainSettingsOf(p *policy.Policy) *protocol.DrainSettings {
	if p == nil || p.Object.Spec.Drain == nil {
		return nil
	}
	d := p.Object.Spec.Drain
	s := &protocol.DrainSettings{GracePeriodSeconds: d.GracePeriodSeconds, EvictUnmanaged: d.EvictUnmanagedPods}
	if d.Timeout != nil && d.Timeout.Duration > 0 {
		s.TimeoutSeconds = int64(math.Ceil(d.Timeout.Seconds()))
	}
	for _, ps := range d.ForceDeletePods {
		// policy.Compile refuses a policy whose selectors labels cannot
		// use, and the nodes of a refused policy do not start.
		pods, err := metav1.LabelSelectorAsSelector(&ps.Selector)
		if err != nil {
			continue
		}
		sel := protocol.PodSelector{Pods: pods.String()}
		if ps.NamespaceSelector != nil {
			nss, err := metav1.LabelSelectorAsSelector(ps.NamespaceSelector)
			if err != nil {
				continue
			}
			sel.Namespaces = nss.String()
		}
		s.ForceDelete = append(s.ForceDelete, sel)
	}
	if s.TimeoutSeconds == 0 && s.GracePeriodSeconds == nil && !s.EvictUnmanaged && len(s.ForceDelete) == 0 {
		return nil
	}
	return s
}

// drainOptions are how a node's pods are drained or evicted: as its
// policy said when it started (recorded on its state), else as the flags
// say. timeout says where the timeout comes from, for messages.
func (t *term) drainOptions(ns *protocol.NodeState) (opts DrainOptions, timeout string) {
	opts = DrainOptions{Timeout: t.c.cfg.DrainTimeout}
	timeout = fmt.Sprintf("--drain-timeout=%s", opts.Timeout)
	d := ns.Drain
	if d == nil {
		return opts, timeout
	}
	if d.TimeoutSeconds > 0 {
		opts.Timeout = time.Duration(d.TimeoutSeconds) * time.Second
		timeout = fmt.Sprintf("%s (spec.drain.timeout of RolloutPolicy %s)", opts.Timeout, ns.Policy)
	}
	opts.GracePeriodSeconds, opts.EvictUnmanaged, opts.ForceDelete = d.GracePeriodSeconds, d.EvictUnmanaged, d.ForceDelete
	return opts, timeout
}

// DescribeDrain says in a few words how a node's pods are drained:
// what its RolloutPolicy set, or that the coordinator's flags apply.
func DescribeDrain(policyName string, d *protocol.DrainSettings) string {
	if d == nil {
		if policyName == "" {
			return "the coordinator's flags"
		}
		return "the coordinator's flags (RolloutPolicy " + policyName + " sets none)"
	}
	out := ""
	add := func(s string) {
		if out != "" {
			out += ", "
		}
		out += s
	}
	if d.TimeoutSeconds > 0 {
		add("timeout " + (time.Duration(d.TimeoutSeconds) * time.Second).String())
	}
	if d.GracePeriodSeconds != nil {
		add(fmt.Sprintf("grace period %ds", *d.GracePeriodSeconds))
	}
	if d.EvictUnmanaged {
		add("unmanaged pods evicted")
	}
	if n := len(d.ForceDelete); n > 0 {
		add(fmt.Sprintf("force-delete %d selector", n))
		if n > 1 {
			out += "s"
		}
	}
	return out + " (RolloutPolicy " + policyName + "; the flags for the rest)"
}
