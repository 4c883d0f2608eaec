package app

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// Check names: stable, for pipelines reading -o json.
const (
	checkGate           = "gate"
	checkAuditSource    = "audit-source"
	checkAppStale       = "app-stale"
	checkAppFailing     = "app-failing"
	checkNotRefreshed   = "tokens-not-refreshed"
	checkUntrusted      = "untrusted-issuer"
	checkAgents         = "agents"
	checkMaxUnavailable = "max-unavailable"
	checkTrustWindow    = "trust-window"
)

// Estimate scopes: which rollout the estimate is of.
const (
	// scopeRollout: the rollout in progress, its nodes not finished.
	scopeRollout = "rollout"
	// scopeIssuerChanged: an issuer change is under way (another issuer is
	// trusted, or nodes hold its tokens): the plan the coordinator would
	// make now.
	scopeIssuerChanged = "issuer-changed"
	// scopeIssuerChange: nothing is under way: the plan the coordinator
	// would make after a change of the issuer now.
	scopeIssuerChange = "issuer-change"
)

// Agent report problems.
const (
	agentNoReport    = "no-report"
	agentUnreadable  = "unreadable-report"
	agentOtherIssuer = "other-issuer"
)

// appsReportMaxAge: the leader rewrites app detection's status at least
// every 5 minutes while it leads; three times that and no leader is
// reporting.
const appsReportMaxAge = 15 * time.Minute

// nextIssuer stands for the issuer an administrator is about to set: no
// issuer's name (an issuer is a URL), so the current one is "another".
const nextIssuer = "(the next issuer)"

// preflightInput is everything the report is a pure function of.
type preflightInput struct {
	Now    time.Time
	Status *coordinator.StatusReport
	// Nodes are the Nodes the status was built from, for the planner and
	// the coordinator's per-node records.
	Nodes    []*corev1.Node
	Strategy protocol.Strategy
	// MaxUnavailable, MaxKubeletRestarts, Settle, GateSettle and
	// TrustMargin are the coordinator's policy.
	MaxUnavailable, MaxKubeletRestarts intstr.IntOrString
	Settle, GateSettle, Margin         time.Duration
	TrustWindow, PerNodeOverride       time.Duration
}

// preflightReport is what `tokenroll preflight` prints; its JSON field
// names are stable.
type preflightReport struct {
	Now    time.Time             `json:"now"`
	Issuer string                `json:"issuer"`
	Gate   coordinator.GateState `json:"gate"`
	// Breaks is true when a check failed: the exit status is then 1.
	Breaks bool    `json:"breaks"`
	Checks []check `json:"checks"`
	// Apps is app detection's last status (nil: none written).
	Apps *apps.Status `json:"apps,omitempty"`
	// Workloads group the app-stale and app-failing pods app detection
	// listed; PodsOmitted are those it counted but did not list.
	Workloads   []workloadGroup `json:"workloads"`
	PodsOmitted int             `json:"podsOmitted,omitempty"`
	// Tokens are the nodes holding tokens the kubelet is not refreshing or
	// of an issuer the API servers do not trust.
	Tokens []nodeTokens `json:"tokens"`
	// NodesWithoutAgent have no usable report from a tokenroll agent.
	NodesWithoutAgent []nodeWithoutAgent `json:"nodesWithoutAgent"`
	Estimate          estimate           `json:"estimate"`
}

// check is one thing that would break, or does not.
type check struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

// workloadGroup is the app-stale and app-failing pods of one workload.
type workloadGroup struct {
	Namespace string `json:"namespace"`
	// Workload is Kind/name, or Pod/name for a pod no controller owns.
	Workload   string   `json:"workload"`
	AppStale   int      `json:"appStale"`
	AppFailing int      `json:"appFailing"`
	Pods       []string `json:"pods"`
	Nodes      []string `json:"nodes"`
}

// nodeTokens is one node's tokens that would fail.
type nodeTokens struct {
	Node string `json:"node"`
	// Expired and Overdue are tokens the kubelet should have refreshed.
	Expired int `json:"expired"`
	Overdue int `json:"overdue"`
	// Untrusted are tokens of UntrustedIssuers, which the API servers do
	// not accept.
	Untrusted        int      `json:"untrusted"`
	UntrustedIssuers []string `json:"untrustedIssuers,omitempty"`
	// Pods are the pods the agent lists as holding stale tokens;
	// PodsTruncated says it left some out.
	Pods          []string `json:"pods,omitempty"`
	PodsTruncated bool     `json:"podsTruncated,omitempty"`
}

// nodeWithoutAgent is a node whose tokens no agent reports on.
type nodeWithoutAgent struct {
	Node    string `json:"node"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// estimate is how long the rollout would take and whether it fits the
// trust window.
type estimate struct {
	Scope    string            `json:"scope"`
	Strategy protocol.Strategy `json:"strategy"`
	Nodes    int               `json:"nodes"`
	// MaxUnavailable resolved over the cluster's nodes; OutOfService are
	// nodes NotReady or cordoned by others, which count against it;
	// Concurrency is what is left.
	MaxUnavailable int `json:"maxUnavailable"`
	OutOfService   int `json:"outOfService"`
	Concurrency    int `json:"concurrency"`
	// Uncordoned counts the auto nodes whose kubelets restart without a
	// cordon and outside MaxUnavailable, because the old issuer is no
	// longer trusted when they start: one first, then
	// KubeletRestartsAtOnce at a time.
	Uncordoned            int `json:"uncordoned,omitempty"`
	KubeletRestartsAtOnce int `json:"kubeletRestartsAtOnce,omitempty"`
	// PerNode is the time one node takes, for each strategy the nodes get.
	PerNode           []perNode `json:"perNode"`
	SettleSeconds     float64   `json:"settleSeconds"`
	GateSettleSeconds float64   `json:"gateSettleSeconds"`
	// DurationSeconds is from now (or the gate opening, for an issuer
	// change) to the last node done; CompletesAt adds it to now. Both are
	// absent when nothing could start.
	DurationSeconds float64   `json:"durationSeconds"`
	CompletesAt     time.Time `json:"completesAt,omitzero"`
	// TrustDeadline is when the old issuer stops being trusted (zero: no
	// deadline known), from TrustSource (gate or --trust-window).
	TrustDeadline time.Time `json:"trustDeadline,omitzero"`
	TrustIssuer   string    `json:"trustIssuer,omitempty"`
	TrustSource   string    `json:"trustSource,omitempty"`
	// Fits is whether CompletesAt is before TrustDeadline (nil: no
	// deadline, or no estimate).
	Fits *bool `json:"fits,omitempty"`
}

// perNode is the per-node time of one strategy and where it comes from:
// measured (the median of the nodes the recorded rollout Rollout finished
// with it), default (stated, not measured) or flag (--per-node).
type perNode struct {
	Strategy protocol.Strategy `json:"strategy"`
	Nodes    int               `json:"nodes"`
	Seconds  float64           `json:"seconds"`
	Source   string            `json:"source"`
	Rollout  string            `json:"rollout,omitempty"`
	Samples  int               `json:"samples,omitempty"`
	// Why says why the default was used.
	Why string `json:"why,omitempty"`
}

// buildPreflight judges what would break and estimates the rollout.
func buildPreflight(in preflightInput) preflightReport {
	st := in.Status
	rep := preflightReport{Now: in.Now, Issuer: st.Issuer, Gate: st.Gate, Apps: st.Apps,
		Workloads: []workloadGroup{}, Tokens: []nodeTokens{}, NodesWithoutAgent: []nodeWithoutAgent{}}
	add := func(name string, ok bool, format string, args ...any) {
		rep.Checks = append(rep.Checks, check{Name: name, OK: ok, Message: fmt.Sprintf(format, args...)})
	}
	if st.Gate.Open {
		add(checkGate, true, "open (%s): %s", st.Gate.Provider, st.Gate.Message)
	} else {
		add(checkGate, false, "CLOSED (%s): %s; no rollout starts until it opens", st.Gate.Provider, st.Gate.Message)
	}
	a := st.Apps
	switch {
	case a == nil:
		add(checkAuditSource, false, "app detection has written no status (ConfigMap %s): the coordinator runs without --app-detection, or is not running; no app can be judged", apps.ConfigMapName)
	case in.Now.Sub(a.UpdatedAt) > appsReportMaxAge:
		add(checkAuditSource, false, "app detection's status is %s old (a leader rewrites it every 5 minutes): is the coordinator running?", in.Now.Sub(a.UpdatedAt).Round(time.Second))
	case a.AuditEvents == 0:
		add(checkAuditSource, false, "no audit event has reached the coordinator: every pod is unobserved; connect an audit source")
	default:
		add(checkAuditSource, true, "%s; %d of %d pods with a projected token observed (%d unobserved, never counted healthy)",
			plural.Count(a.AuditEvents, "audit event"), a.Followed-a.Unobserved, a.Followed, a.Unobserved)
	}
	rep.Workloads, rep.PodsOmitted = groupWorkloads(a)
	if a != nil {
		add(checkAppStale, a.Stale == 0, "%s (their apps present replaced tokens, and fail once the old issuer is no longer trusted)%s", count(a.Stale, "app-stale pod"), inWorkloads(rep.Workloads, apps.AppStale))
		add(checkAppFailing, a.Failing == 0, "%s (their requests fail authentication now)%s", count(a.Failing, "app-failing pod"), inWorkloads(rep.Workloads, apps.AppFailing))
	} else {
		add(checkAppStale, false, "not known: no app detection status")
		add(checkAppFailing, false, "not known: no app detection status")
	}

	rep.Tokens, rep.NodesWithoutAgent = nodeProblems(st, in.Nodes)
	expired, overdue, untrusted, nr, nu := 0, 0, 0, 0, 0
	for _, t := range rep.Tokens {
		expired, overdue, untrusted = expired+t.Expired, overdue+t.Overdue, untrusted+t.Untrusted
		if t.Expired+t.Overdue > 0 {
			nr++
		}
		if t.Untrusted > 0 {
			nu++
		}
	}
	add(checkNotRefreshed, expired+overdue == 0, "%s the kubelet is not refreshing (%d expired, %d overdue) on %s", count(expired+overdue, "token"), expired, overdue, count(nr, "node"))
	add(checkUntrusted, untrusted == 0, "%s of issuers the API servers do not trust, on %s", count(untrusted, "token"), count(nu, "node"))
	add(checkAgents, len(rep.NodesWithoutAgent) == 0, "%d of %s without a usable report from a tokenroll agent", len(rep.NodesWithoutAgent), count(len(st.Nodes), "node"))

	rep.Estimate = makeEstimate(in)
	e := rep.Estimate
	switch {
	case e.Nodes > 0 && e.Concurrency < 1:
		add(checkMaxUnavailable, false, "%s out of service fill --max-unavailable=%s: no node would start", count(e.OutOfService, "node"), in.MaxUnavailable.String())
	default:
		add(checkMaxUnavailable, true, "%d at a time (max-unavailable %d, %s out of service)", e.Concurrency, e.MaxUnavailable, count(e.OutOfService, "node"))
	}
	switch {
	case e.Fits == nil && e.TrustDeadline.IsZero():
		add(checkTrustWindow, true, "no trust deadline: the gate reports none%s", map[bool]string{true: " and --trust-window is 0", false: ""}[e.Scope == scopeIssuerChange])
	case e.Fits == nil:
		add(checkTrustWindow, false, "trusted until %s, and the rollout cannot start", e.TrustDeadline.UTC().Format(time.RFC3339))
	case *e.Fits:
		add(checkTrustWindow, true, "done by %s, %s before the trust deadline %s", e.CompletesAt.UTC().Format(time.RFC3339),
			e.TrustDeadline.Sub(e.CompletesAt).Round(time.Second), e.TrustDeadline.UTC().Format(time.RFC3339))
	default:
		add(checkTrustWindow, false, "done by %s, %s after the trust deadline %s", e.CompletesAt.UTC().Format(time.RFC3339),
			e.CompletesAt.Sub(e.TrustDeadline).Round(time.Second), e.TrustDeadline.UTC().Format(time.RFC3339))
	}
	for _, c := range rep.Checks {
		rep.Breaks = rep.Breaks || !c.OK
	}
	return rep
}

// groupWorkloads groups the pods app detection lists by namespace and
// workload, in that order.
func groupWorkloads(a *apps.Status) ([]workloadGroup, int) {
	groups := []workloadGroup{}
	if a == nil {
		return groups, 0
	}
	at := map[[2]string]int{}
	for _, p := range a.Pods {
		w := p.Workload
		if w == "" {
			w = "Pod/" + p.Name
		}
		key := [2]string{p.Namespace, w}
		i, ok := at[key]
		if !ok {
			i = len(groups)
			at[key] = i
			groups = append(groups, workloadGroup{Namespace: p.Namespace, Workload: w})
		}
		g := &groups[i]
		if slices.Contains(p.Conditions, string(apps.AppStale)) {
			g.AppStale++
		}
		if slices.Contains(p.Conditions, string(apps.AppFailing)) {
			g.AppFailing++
		}
		g.Pods = append(g.Pods, p.Name)
		if !slices.Contains(g.Nodes, p.Node) {
			g.Nodes = append(g.Nodes, p.Node)
		}
	}
	for i := range groups {
		slices.Sort(groups[i].Pods)
		slices.Sort(groups[i].Nodes)
	}
	slices.SortFunc(groups, func(x, y workloadGroup) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Workload, y.Workload))
	})
	return groups, a.PodsOmitted
}

// inWorkloads says how many workloads in how many namespaces hold pods in
// condition c.
func inWorkloads(groups []workloadGroup, c apps.Condition) string {
	ws, nss := 0, map[string]bool{}
	for _, g := range groups {
		if (c == apps.AppStale && g.AppStale > 0) || (c == apps.AppFailing && g.AppFailing > 0) {
			ws++
			nss[g.Namespace] = true
		}
	}
	if ws == 0 {
		return ""
	}
	return fmt.Sprintf(", in %s in %s", count(ws, "workload"), count(len(nss), "namespace"))
}

// nodeProblems reads each node's agent report: the tokens that would
// fail, and the nodes with no usable report.
func nodeProblems(st *coordinator.StatusReport, nodes []*corev1.Node) ([]nodeTokens, []nodeWithoutAgent) {
	trusted := map[string]bool{st.Issuer: true}
	if st.Gate.TrustKnown {
		for _, t := range st.Gate.Trusted {
			trusted[t.Name] = true
		}
	}
	toks, missing := []nodeTokens{}, []nodeWithoutAgent{}
	for _, n := range nodes {
		raw, ok := n.Annotations[protocol.AnnotationTokens]
		if !ok {
			missing = append(missing, nodeWithoutAgent{Node: n.Name, Reason: agentNoReport,
				Message: "no " + protocol.AnnotationTokens + " annotation: no tokenroll agent runs here, or it has not reported yet"})
			continue
		}
		tr, err := protocol.ParseTokenReport(raw)
		if err != nil {
			missing = append(missing, nodeWithoutAgent{Node: n.Name, Reason: agentUnreadable, Message: err.Error()})
			continue
		}
		if tr.Issuer != st.Issuer {
			what := "could not read the API server's issuer"
			if tr.Issuer != "" {
				what = "judged its tokens against " + tr.Issuer
			}
			missing = append(missing, nodeWithoutAgent{Node: n.Name, Reason: agentOtherIssuer,
				Message: fmt.Sprintf("the agent %s, not %s: its report does not say which tokens fail", what, st.Issuer)})
		}
		nt := nodeTokens{Node: n.Name, Expired: tr.Stale[protocol.StateExpired], Overdue: tr.Stale[protocol.StateOverdue]}
		for _, it := range tr.Issuers {
			if it.Tokens > 0 && !trusted[it.Issuer] {
				nt.Untrusted += it.Tokens
				nt.UntrustedIssuers = append(nt.UntrustedIssuers, it.Issuer)
			}
		}
		if nt.Expired+nt.Overdue+nt.Untrusted == 0 {
			continue
		}
		for _, p := range tr.StalePods {
			nt.Pods = append(nt.Pods, p.String())
		}
		nt.PodsTruncated = tr.StalePodsTruncated
		toks = append(toks, nt)
	}
	return toks, missing
}

// makeEstimate plans the rollout with the coordinator's planner and
// estimates how long it takes.
func makeEstimate(in preflightInput) estimate {
	st := in.Status
	e := estimate{Strategy: in.Strategy, SettleSeconds: in.Settle.Seconds()}
	strategies := map[string]protocol.Strategy{}
	var order []string
	// started are when the nodes in progress in the active rollout were
	// cordoned: like the coordinator, the estimate has them end a node's
	// time after that, not after now.
	started := map[string]time.Time{}
	// noCordon: of those, the ones auto started without a cordon.
	noCordon := map[string]bool{}
	raised := 0
	// gate and issuer are what the API servers trust and sign with when
	// the nodes start; canaryDone: a kubelet restart of the rollout has
	// been verified already, so no node goes first alone. watchEnd: when
	// the watches of apps going on end.
	gate, issuer, canaryDone := st.Gate, st.Issuer, false
	var watchEnd time.Time
	switch r := st.Rollout; {
	case r != nil && r.FinishedAt.IsZero():
		e.Scope, e.Strategy = scopeRollout, r.Strategy
		if r.Raised != nil {
			raised = r.Raised.MaxUnavailable
		}
		phase := map[string]string{}
		for _, n := range st.Nodes {
			phase[n.Name] = n.Phase
		}
		for _, n := range in.Nodes {
			ns, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState])
			if err != nil || ns.Rollout != r.ID {
				continue
			}
			// As the coordinator's uncordonedSlots: a verified kubelet
			// restart.
			canaryDone = canaryDone || (ns.Rung == coordinator.KubeletRestart && !ns.AppsAt.IsZero())
			if ns.Step == protocol.StepApps {
				// Its own work is done; the watch of its apps ends a
				// watch after it began, as the coordinator counts it.
				watchEnd = later(watchEnd, ns.StepAt.Add(appsWatchOnce))
			}
			if ns.Step.InProgress() && !ns.StartedAt.IsZero() {
				started[n.Name] = ns.StartedAt
				noCordon[n.Name] = ns.NoCordon && ns.Step == protocol.StepActing
			}
		}
		for _, pn := range r.Nodes {
			switch protocol.Step(phase[pn.Name]) {
			case protocol.StepDone, protocol.StepUnresolved, protocol.StepExcluded, protocol.StepDryRun, protocol.StepApps:
				continue
			}
			order = append(order, pn.Name)
			strategies[pn.Name] = pn.Strategy
		}
	default:
		pin := coordinator.PlanInput{Now: in.Now, Issuer: st.Issuer, Gate: st.Gate, Strategy: in.Strategy, Margin: in.Margin, Nodes: in.Nodes}
		e.Scope = scopeIssuerChanged
		if !issuerChangeUnderWay(st) {
			// The planner judges the nodes as it would once the issuer
			// changed: every current token is then of another issuer,
			// trusted for --trust-window or not at all.
			e.Scope = scopeIssuerChange
			pin.Issuer = nextIssuer
			pin.Gate.TrustKnown, pin.Gate.Trusted = true, nil
			// The coordinator waits out --gate-settle only while a
			// previous issuer is still trusted: without a window, the old
			// tokens fail already and nodes start as the gate opens.
			if in.TrustWindow > 0 {
				pin.Gate.Trusted = []coordinator.TrustedIssuer{{Name: st.Issuer, Expires: in.Now.Add(in.TrustWindow)}}
				e.GateSettleSeconds = in.GateSettle.Seconds()
			}
		}
		for _, pn := range coordinator.MakePlan(pin).Nodes {
			order = append(order, pn.Name)
			strategies[pn.Name] = pn.Strategy
		}
		gate, issuer = pin.Gate, pin.Issuer
	}
	e.Nodes = len(order)

	limit, err := coordinator.ResolveMaxUnavailable(in.MaxUnavailable, len(st.Nodes))
	if err != nil {
		limit = 1
	}
	// A rollout the coordinator sped up to meet the trust deadline keeps
	// the nodes at once it raised to.
	limit = max(limit, raised)
	e.MaxUnavailable = limit
	for _, n := range st.Nodes {
		ours := protocol.Step(n.Phase).InProgress()
		if !ours && (!n.Ready || n.Unschedulable) {
			e.OutOfService++
		}
	}
	e.Concurrency = max(limit-e.OutOfService, 0)

	samples, measuredIn := samplesOf(st, in.Nodes)
	times := map[protocol.Strategy]time.Duration{}
	counts := map[protocol.Strategy]int{}
	for _, name := range order {
		counts[strategies[name]]++
	}
	for s, c := range counts {
		d, src, k := perNodeTime(s, samples, in.PerNodeOverride)
		times[s] = d
		pn := perNode{Strategy: s, Nodes: c, Seconds: d.Seconds(), Source: src, Samples: k}
		switch {
		case src == perNodeMeasured:
			pn.Rollout = measuredIn
		case src == perNodeDefault && measuredIn == "":
			pn.Why = "the state records no rollout"
		case src == perNodeDefault:
			pn.Why = fmt.Sprintf("rollout %s finished no node with %s", measuredIn, s)
		}
		e.PerNode = append(e.PerNode, pn)
	}
	slices.SortFunc(e.PerNode, func(a, b perNode) int { return cmp.Compare(a.Strategy, b.Strategy) })
	// Once no previous issuer is trusted, auto restarts kubelets without a
	// cordon and outside max-unavailable: one first, then
	// --max-kubelet-restarts at a time. (A node that climbs to a reboot is
	// not foreseen.)
	// Without audit evidence auto evicts instead (as pod-restart, cordoned),
	// and a node asking for a reboot, or cordoned already, is cordoned
	// too: as startNodes decides with auto's first rung.
	a := st.Apps
	evidence := a != nil && in.Now.Sub(a.UpdatedAt) <= appsReportMaxAge && a.AuditEvents > 0
	nodes := map[string]*corev1.Node{}
	for _, n := range in.Nodes {
		nodes[n.Name] = n
	}
	startsUncordoned := func(name string) bool {
		n := nodes[name]
		if n == nil || n.Spec.Unschedulable || strategies[name] != coordinator.Auto || !evidence {
			return false
		}
		rr, _ := protocol.ParseRebootRequired(n.Annotations[protocol.AnnotationRebootRequired])
		return !rr
	}
	trustEnded := coordinator.TrustEnded(gate, issuer, in.Now)
	var busy, ubusy []time.Time
	durations := make([]time.Duration, 0, len(order))
	var uncordoned []time.Duration
	for _, name := range order {
		d := times[strategies[name]]
		if s, ok := started[name]; ok && noCordon[name] {
			ubusy = append(ubusy, later(in.Now, s.Add(d)))
			continue
		} else if ok {
			busy = append(busy, later(in.Now, s.Add(d)))
			continue
		}
		if trustEnded && startsUncordoned(name) {
			uncordoned = append(uncordoned, d)
			continue
		}
		durations = append(durations, d)
	}
	end, ok := coordinator.RolloutEnd(in.Now, busy, durations, e.Concurrency, in.Settle)
	if ok && len(uncordoned)+len(ubusy) > 0 {
		limit := in.MaxKubeletRestarts
		if limit == (intstr.IntOrString{}) {
			limit = coordinator.DefaultMaxKubeletRestarts
		}
		restarts, err := coordinator.ResolveMaxUnavailable(limit, len(st.Nodes))
		if err != nil {
			restarts = 1
		}
		e.Uncordoned, e.KubeletRestartsAtOnce = len(uncordoned)+len(ubusy), restarts
		end = later(end, coordinator.UncordonedEnd(in.Now, ubusy, uncordoned, restarts, !canaryDone))
	}
	if ok && counts[coordinator.Auto] > 0 && in.PerNodeOverride <= 0 {
		end = end.Add(appsWatchOnce)
	}
	if ok {
		end = later(end, watchEnd)
	}
	if ok {
		total := end.Sub(in.Now) + time.Duration(e.GateSettleSeconds*float64(time.Second))
		e.DurationSeconds = total.Seconds()
		e.CompletesAt = in.Now.Add(total)
	}

	if e.Scope == scopeIssuerChange {
		if in.TrustWindow > 0 {
			e.TrustDeadline, e.TrustIssuer, e.TrustSource = in.Now.Add(in.TrustWindow), st.Issuer, "--trust-window"
		}
	} else {
		for _, t := range st.Gate.Trusted {
			if t.Name != st.Issuer && !t.Expires.IsZero() && (e.TrustDeadline.IsZero() || t.Expires.Before(e.TrustDeadline)) {
				e.TrustDeadline, e.TrustIssuer, e.TrustSource = t.Expires, t.Name, "gate"
			}
		}
	}
	if !e.TrustDeadline.IsZero() && ok {
		fits := !e.CompletesAt.After(e.TrustDeadline)
		e.Fits = &fits
	}
	return e
}

// issuerChangeUnderWay: the API servers trust an issuer besides the one
// they sign with, or some node holds tokens of another issuer.
func issuerChangeUnderWay(st *coordinator.StatusReport) bool {
	for _, t := range st.Gate.Trusted {
		if t.Name != st.Issuer {
			return true
		}
	}
	for _, n := range st.Nodes {
		if n.OldIssuer > 0 {
			return true
		}
	}
	return false
}

// samplesOf reads how long each node of the latest rollout the state
// records took, from the coordinator's records on the Nodes (a node done
// keeps its record until another rollout takes it). It returns the
// rollout's ID ("" when the state records none).
func samplesOf(st *coordinator.StatusReport, nodes []*corev1.Node) ([]nodeSample, string) {
	r := st.Rollout
	if r == nil {
		r = st.Last
	}
	if r == nil || r.DryRun {
		return nil, ""
	}
	var out []nodeSample
	for _, n := range nodes {
		raw, ok := n.Annotations[protocol.AnnotationNodeState]
		if !ok {
			continue
		}
		ns, err := protocol.ParseNodeState(raw)
		if err != nil || ns.Rollout != r.ID || ns.Step != protocol.StepDone || ns.StartedAt.IsZero() {
			continue
		}
		took := ns.StepAt.Sub(ns.StartedAt)
		if !ns.AppsAt.IsZero() {
			// The watch of its apps that followed overlapped the next
			// nodes: it is not the node's time.
			took = ns.AppsAt.Sub(ns.StartedAt)
		}
		out = append(out, nodeSample{Strategy: ns.Strategy, Took: took})
	}
	return out, r.ID
}

// joinMax joins at most n items, saying how many more there are.
func joinMax(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ",")
	}
	return strings.Join(items[:n], ",") + fmt.Sprintf(",+%d", len(items)-n)
}

// count is plural.Count, short for this report's many counts.
func count[N int | uint64](n N, noun string) string { return plural.Count(n, noun) }

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
