package coordinator

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// remediation is one strategy: what a node gets between its cordon and its
// uncordon. The node protocol (node.go) runs every strategy the same way —
// prepare in the background under --drain-timeout, ask the agent for the
// action, verify — and never names one: a new strategy is a new
// implementation added to strategies, nothing else.
type remediation interface {
	name() protocol.Strategy
	// prepare is the work before the agent's action: nil when there is
	// none. A non-empty wait says why it cannot be planned yet; a Node
	// change wakes the coordinator to ask again. An error halts the
	// rollout (DrainFailed).
	prepare(ctx context.Context, client kubernetes.Interface, n *corev1.Node, issuer string) (prep *preparation, wait string, err error)
	// action is what the agent is asked to do once prepared; "" for
	// nothing.
	action() protocol.Action
	// verify judges an acting node; an error is retried.
	verify(ctx context.Context, client kubernetes.Interface, in verifyInput) (verdict, error)
}

// strategies is the registry: auto, which climbs the others from
// evidence, then the others least disruptive first. Flags, validation,
// help and the node protocol all read it.
var strategies = []remediation{auto{}, kubeletRestart{}, podRestart{}, reboot{}}

// Strategies lists the strategies' names, least disruptive first.
func Strategies() []protocol.Strategy {
	out := make([]protocol.Strategy, len(strategies))
	for i, s := range strategies {
		out[i] = s.name()
	}
	return out
}

// StrategyNames lists the strategies' names as strings, for flags' help
// and validation.
func StrategyNames() []string {
	out := make([]string, len(strategies))
	for i, s := range strategies {
		out[i] = string(s.name())
	}
	return out
}

// ParseStrategy checks a strategy name.
func ParseStrategy(s string) (protocol.Strategy, error) {
	if _, ok := remediationFor(protocol.Strategy(s)); ok {
		return protocol.Strategy(s), nil
	}
	return "", fmt.Errorf("strategy %q is not one of %s", s, strings.Join(StrategyNames(), ", "))
}

func remediationFor(s protocol.Strategy) (remediation, bool) {
	for _, r := range strategies {
		if r.name() == s {
			return r, true
		}
	}
	return nil, false
}

// preparation is a strategy's work before the agent's action, run in the
// background.
type preparation struct {
	// kind names the work in logs: drain or evict.
	kind string
	// pods is how many pods it evicts, when it knows (logs).
	pods int
	run  func(ctx context.Context, d Drainer, opts DrainOptions) error
	// evicted and owners are recorded on the node state, for verify.
	evicted []protocol.PodRef
	owners  []protocol.OwnerRef
	// doneEvent and doneNote, when set, are an Event sent when the work is
	// done; requestNote begins the ActionRequested Event's note.
	doneEvent, doneNote, requestNote string
	// rung, for a ladder of strategies (auto), is the strategy it prepared
	// the node for: its action is asked, and it is recorded on the node
	// state. A preparation without run has nothing to run first.
	rung protocol.Strategy
}

// appsAware is a strategy whose preparation of a node depends on what app
// detection can tell of the node's apps (auto); the node protocol calls
// prepareWith instead of prepare.
type appsAware interface {
	prepareWith(ctx context.Context, client kubernetes.Interface, n *corev1.Node, issuer string, ev appEvidence) (prep *preparation, wait string, err error)
}

// prepareNode runs impl's preparation with what it needs to know.
func (t *term) prepareNode(ctx context.Context, impl remediation, n *corev1.Node, issuer string, now time.Time) (*preparation, string, error) {
	if a, ok := impl.(appsAware); ok {
		return a.prepareWith(ctx, t.c.cfg.Client, n, issuer, t.appEvidence(now))
	}
	return impl.prepare(ctx, t.c.cfg.Client, n, issuer)
}

// actionFor is what the agent is asked once p is done: the rung's action
// when a ladder chose one.
func actionFor(impl remediation, p *preparation) protocol.Action {
	if p == nil || p.rung == "" {
		return impl.action()
	}
	if r, ok := remediationFor(p.rung); ok {
		return r.action()
	}
	return ""
}

// verifyInput is an acting node as verify sees it.
type verifyInput struct {
	node  *corev1.Node
	state *protocol.NodeState
	// status is the agent's report on this node's request (nil: none yet,
	// or no request).
	status *protocol.Status
	// issuer is the API servers' signing issuer.
	issuer string
	ready  bool
	// parsed caches the node's annotations parsed (nil: parsed anew).
	parsed *parsedNodes
}

// verdict is verify's answer: ok, or what it waits for and the halt reason
// if the wait outlasts its deadline.
type verdict struct {
	ok              bool
	waiting, reason string
	// withinAction: the wait is bounded by --action-timeout alone, not
	// --action-timeout plus --verify-timeout.
	withinAction bool
	// poll, when positive, is how soon to look again: what is waited for
	// is read, not watched.
	poll time.Duration
	// stale: what is waited for is the agent reporting the tokens clean.
	// When that wait runs out the action ran and did not help: the node is
	// unresolved, and the rollout goes on without it.
	stale bool
	// climb, for a ladder (auto), is the strategy the node gets next when
	// a stale wait runs out, instead of being unresolved; climbNow: at
	// once (the node asks for it).
	climb    protocol.Strategy
	climbNow bool
	// watchApps, with ok: the node is released from the disruption budget
	// and its apps watched before it is done (StepApps).
	watchApps bool
}

// tokensVerdict is the wait for a clean report after the action (ok when
// it is clean). Without a report at all nothing says the tokens are
// stale: that wait halts, as any other.
func tokensVerdict(in verifyInput) verdict {
	clean, why := reportClean(in.parsed, in.node, in.issuer)
	if clean {
		return verdict{ok: true}
	}
	_, err := in.parsed.tokenReport(in.node)
	return verdict{waiting: why, reason: HaltVerifyTimeout, stale: err == nil}
}

func waitFor(waiting, reason string) verdict { return verdict{waiting: waiting, reason: reason} }

// reportClean: the agent reports no token the kubelet failed to refresh,
// and every token from the current issuer, from a scan that saw every pod
// (a kubelet just restarted lists none, or refuses to answer). The report
// is parsed through parsed (nil: anew).
func reportClean(parsed *parsedNodes, n *corev1.Node, iss string) (bool, string) {
	rep, err := parsed.tokenReport(n)
	if err != nil {
		return false, "no token report from the agent"
	}
	if !rep.Complete() {
		return false, fmt.Sprintf("the agent's last scan had no complete list of pods from the kubelet Pods API (%s)", rep.PodsAPI)
	}
	if k := rep.Count(protocol.State.NotRefreshed); k > 0 {
		return false, "the agent reports " + plural.Count(k, "token") + " expired or overdue"
	}
	if rep.IssuersTruncated {
		return false, "the agent left issuers out of its report to keep it within its size budget"
	}
	for _, it := range rep.Issuers {
		if it.Issuer != iss && it.Tokens > 0 {
			return false, fmt.Sprintf("the agent reports %s from %s, not %s", plural.Count(it.Tokens, "token"), it.Issuer, iss)
		}
	}
	return true, ""
}
