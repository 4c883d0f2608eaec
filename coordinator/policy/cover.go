package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// DefaultTopologyKey is the node label naming a node's zone when a policy
// names none.
const DefaultTopologyKey = "topology.kubernetes.io/zone"

// Policy is a RolloutPolicy compiled for use.
type Policy struct {
	Name string
	// Object is the policy as read; nothing here changes it.
	Object *v1alpha1.RolloutPolicy
	// Selector selects the pool's nodes; nil for the default policy.
	Selector labels.Selector
	Windows  []Window
	Pods     []PodBlocker
	Alerts   *AlertRules
	// Problems say why the policy cannot be used; its nodes do not start
	// while there are any.
	Problems []string
}

// Compile reads a policy, collecting every problem the schema cannot see
// (a time zone, a regular expression, a selector the API server accepted
// but labels cannot use).
func Compile(p *v1alpha1.RolloutPolicy) *Policy {
	c := &Policy{Name: p.Name, Object: p}
	var errs []error
	if p.Spec.NodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodeSelector: %w", err))
			sel = labels.Nothing()
		}
		c.Selector = sel
	}
	var err error
	if c.Windows, err = ParseWindows(p.Spec.Windows); err != nil {
		errs = append(errs, err)
	}
	if b := p.Spec.Blockers; b != nil {
		for i, ps := range b.Pods {
			pb, err := NewPodBlocker(ps)
			if err != nil {
				errs = append(errs, fmt.Errorf("blockers.pods[%d]: %w", i, err))
				continue
			}
			c.Pods = append(c.Pods, pb)
		}
		if b.Alerts != nil {
			if c.Alerts, err = CompileAlertRules(b.Alerts); err != nil {
				errs = append(errs, fmt.Errorf("blockers.alerts: %w", err))
			}
		}
	}
	if _, err := resolve(p.Spec.MaxUnavailable, 1); err != nil {
		errs = append(errs, fmt.Errorf("maxUnavailable: %w", err))
	}
	if _, err := resolve(p.Spec.DeadlineMaxUnavailable, 1); err != nil {
		errs = append(errs, fmt.Errorf("deadlineMaxUnavailable: %w", err))
	}
	for _, e := range errs {
		c.Problems = append(c.Problems, strings.Split(e.Error(), "\n")...)
	}
	return c
}

// Limit is the most nodes of a pool of size nodes out of service at once:
// maxUnavailable as a number, or as a percentage rounded down, and never
// less than one node.
func (p *Policy) Limit(nodes int) int {
	n, err := resolve(p.Object.Spec.MaxUnavailable, nodes)
	if err != nil {
		return 1
	}
	return n
}

// DeadlineLimit is the ceiling a pool of size nodes may be raised to when
// its rollout would end after the previous issuer's trust
// (deadlineMaxUnavailable, resolved as Limit resolves maxUnavailable),
// never below Limit: Limit itself when the policy sets none.
func (p *Policy) DeadlineLimit(nodes int) int {
	base := p.Limit(nodes)
	if p.Object.Spec.DeadlineMaxUnavailable == nil {
		return base
	}
	n, err := resolve(p.Object.Spec.DeadlineMaxUnavailable, nodes)
	if err != nil {
		return base
	}
	return max(n, base)
}

func resolve(v *intstr.IntOrString, nodes int) (int, error) {
	if v == nil {
		return 1, nil
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(v, nodes, false)
	if err != nil {
		return 0, err
	}
	if v.Type == intstr.Int && n < 1 {
		return 0, errors.New("must be at least 1")
	}
	return max(n, 1), nil
}

// ZoneOf is the node's zone as the policy reads it ("" when the policy
// does not order by zone, or the node has no zone label).
func (p *Policy) ZoneOf(n *corev1.Node) string {
	if p == nil || p.Object.Spec.Zones == nil {
		return ""
	}
	z := p.Object.Spec.Zones
	key := z.TopologyKey
	if key == "" {
		key = DefaultTopologyKey
	}
	return n.Labels[key]
}

// Overlap is another policy selecting some of a policy's nodes.
type Overlap struct {
	Policy string
	// Nodes counts the nodes both select; Example is one of them.
	Nodes   int
	Example string
}

// Coverage says which policy covers each node.
type Coverage struct {
	// Of maps a node's name to the policy covering it; a node absent from
	// it is covered by no policy: the coordinator's flags apply.
	Of map[string]*Policy
	// Refused maps the nodes that several policies select to those
	// policies' names, and the nodes a rollout assigns to a policy that
	// does not exist to its name (Assign): tokenroll leaves them alone.
	Refused map[string][]string
	// Nodes counts the nodes each policy covers.
	Nodes map[string]int
	// Default is the default policy (nil: none, the flags).
	Default *Policy
	// Overlaps lists, for each policy, the others selecting its nodes.
	Overlaps map[string][]Overlap
	// SecondDefaults are default policies after the first (the oldest):
	// refused.
	SecondDefaults []string
}

// Cover decides which policy covers each node: the one policy whose
// selector selects it, else the default policy (without a selector; the
// oldest if there are several), else none. A node two policies select is
// refused, whatever else they say.
func Cover(policies []*Policy, nodes []*corev1.Node) Coverage {
	ps := slices.Clone(policies)
	slices.SortFunc(ps, func(a, b *Policy) int {
		if c := a.Object.CreationTimestamp.Compare(b.Object.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	cov := Coverage{Of: map[string]*Policy{}, Refused: map[string][]string{}, Nodes: map[string]int{}, Overlaps: map[string][]Overlap{}}
	var selecting []*Policy
	for _, p := range ps {
		switch {
		case p.Selector != nil:
			selecting = append(selecting, p)
		case cov.Default == nil:
			cov.Default = p
		default:
			cov.SecondDefaults = append(cov.SecondDefaults, p.Name)
		}
	}
	type pair struct{ a, b string }
	overlaps := map[pair]*Overlap{}
	var order []pair
	for _, n := range nodes {
		set := labels.Set(n.Labels)
		var match []*Policy
		for _, p := range selecting {
			if p.Selector.Matches(set) {
				match = append(match, p)
			}
		}
		switch len(match) {
		case 0:
			if cov.Default != nil {
				cov.Of[n.Name] = cov.Default
				cov.Nodes[cov.Default.Name]++
			}
		case 1:
			cov.Of[n.Name] = match[0]
			cov.Nodes[match[0].Name]++
		default:
			for _, p := range match {
				cov.Refused[n.Name] = append(cov.Refused[n.Name], p.Name)
				for _, o := range match {
					if o == p {
						continue
					}
					k := pair{p.Name, o.Name}
					if overlaps[k] == nil {
						overlaps[k] = &Overlap{Policy: o.Name, Example: n.Name}
						order = append(order, k)
					}
					overlaps[k].Nodes++
				}
			}
		}
	}
	for _, k := range order {
		cov.Overlaps[k.a] = append(cov.Overlaps[k.a], *overlaps[k])
	}
	return cov
}

// Assign makes the policy named name cover nodes (the names of Nodes that
// exist), whatever the selectors say: a rollout that names the policy its
// nodes follow (TokenRollout spec.policyName) settles which one,
// overlapping selectors included. p is that policy, nil when none has that
// name: those nodes are then refused until it appears. Overlaps,
// SecondDefaults and Default stay what the selectors make them: they are
// the policies' status.
func (c Coverage) Assign(name string, p *Policy, nodes []string) {
	for _, node := range nodes {
		if old := c.Of[node]; old != nil {
			c.Nodes[old.Name]--
		}
		delete(c.Of, node)
		delete(c.Refused, node)
		if p == nil {
			c.Refused[node] = []string{name}
			continue
		}
		c.Of[node] = p
		c.Nodes[p.Name]++
	}
}

// Condition types and reasons of a policy's status.
const (
	ConditionAccepted = "Accepted"

	ReasonValid           = "Valid"
	ReasonInvalid         = "Invalid"
	ReasonSelectorOverlap = "SelectorOverlap"
	ReasonSecondDefault   = "SecondDefault"
)

// Accepted is the policy's Accepted condition (without its transition
// time, which the writer keeps while the status stays the same).
func Accepted(p *Policy, cov Coverage) metav1.Condition {
	c := metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, ObservedGeneration: p.Object.Generation}
	switch {
	case len(p.Problems) > 0:
		c.Reason = ReasonInvalid
		c.Message = "the policy cannot be used, so its nodes do not start: " + strings.Join(p.Problems, "; ") + "; fix the spec"
	case slices.Contains(cov.SecondDefaults, p.Name):
		c.Reason = ReasonSecondDefault
		c.Message = fmt.Sprintf("policy %s is the default policy already (no nodeSelector, created first); this one selects no node (only a TokenRollout naming it in spec.policyName uses it): give it a nodeSelector or delete it", cov.Default.Name)
	case len(cov.Overlaps[p.Name]) > 0:
		c.Reason = ReasonSelectorOverlap
		var parts []string
		for _, o := range cov.Overlaps[p.Name] {
			parts = append(parts, fmt.Sprintf("policy %s also selects %d of its nodes (%s, for one)", o.Policy, o.Nodes, o.Example))
		}
		c.Message = strings.Join(parts, "; ") + fmt.Sprintf(": tokenroll leaves those nodes alone until one policy alone selects them or a TokenRollout names one (spec.policyName); it alone covers %s. Make the nodeSelectors disjoint", plural.Count(cov.Nodes[p.Name], "other node"))
	default:
		c.Status, c.Reason = metav1.ConditionTrue, ReasonValid
		c.Message = "covers " + plural.Count(cov.Nodes[p.Name], "node")
	}
	return c
}
