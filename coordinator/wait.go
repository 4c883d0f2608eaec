package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tokenroll/tokenroll/coordinator/policy"
)

// Wait is what the coordinator is waiting for while nothing of its own is
// in progress: a rollout that cannot start its next node, or a plan or a
// start request that cannot be made yet. It is recorded in the rollout
// state (tokenroll status), exported as metrics and logged, from one
// place (term.wait), so the three always agree.
type Wait struct {
	// Reason is one of WaitReasons.
	Reason string `json:"reason"`
	// Message says what is waited for, naming the nodes.
	Message string `json:"message"`
	// Since is when the wait for Reason began.
	Since time.Time `json:"since"`
}

// Wait reasons (bounded: they label a metric).
const (
	// WaitGateClosed: the revision gate is closed.
	WaitGateClosed = "gate-closed"
	// WaitIssuerUnknown: the API servers' signing issuer has not been read.
	WaitIssuerUnknown = "issuer-unknown"
	// WaitAgentReports: agents have not judged their tokens against the
	// current issuer yet.
	WaitAgentReports = "agent-reports"
	// WaitMaxUnavailable: nodes out of service (NotReady, or cordoned by
	// someone else) fill --max-unavailable.
	WaitMaxUnavailable = "max-unavailable"
	// WaitNodeNotReady: the nodes left to do are NotReady.
	WaitNodeNotReady = "node-not-ready"
	// WaitMachineConfig: the Machine Config daemon is updating the nodes
	// left to do.
	WaitMachineConfig = "machine-config"
	// WaitKuredLock: the nodes left to do hold kured's reboot lock, or
	// who holds it cannot be read.
	WaitKuredLock = "kured-lock"
)

// Wait reasons of the RolloutPolicies (rolloutpolicy.go); a pool's own
// maxUnavailable is WaitMaxUnavailable.
const (
	// WaitWindow: the pools left to do are outside their maintenance
	// windows; the status names the next one.
	WaitWindow = policy.ReasonWindow
	// WaitZone: the nodes left to do wait for their zone's turn or fill
	// its limit per zone.
	WaitZone = policy.ReasonZone
	// WaitBlockingPod: the nodes left to do run pods their policy says
	// block them.
	WaitBlockingPod = policy.ReasonBlockingPod
	// WaitBlockingAlert: alerts their policy names are firing (or cannot
	// be read).
	WaitBlockingAlert = policy.ReasonBlockingAlert
	// WaitHealthGate: the cluster has not recovered from the last node
	// (pods evicted not Ready again, nodes NotReady).
	WaitHealthGate = policy.ReasonHealthGate
	// WaitPolicyRefused: the nodes left to do are covered by a policy that
	// cannot be used, or selected by several, or the rollout names a policy
	// (spec.policyName) that does not exist or cannot be used.
	WaitPolicyRefused = policy.ReasonPolicyRefused
)

// WaitReasons lists every wait reason.
var WaitReasons = []string{WaitCRDNotInstalled, WaitGateClosed, WaitIssuerUnknown, WaitAgentReports, WaitMaxUnavailable, WaitNodeNotReady, WaitMachineConfig, WaitKuredLock,
	WaitWindow, WaitZone, WaitBlockingPod, WaitBlockingAlert, WaitHealthGate, WaitPolicyRefused}

// logOnChange logs msg at info level when it differs from the last one
// logged this way, so a wait is logged when it begins, not on every sync.
func (t *term) logOnChange(msg string, fields ...zap.Field) {
	key := msg + fmt.Sprint(fields)
	t.mu.Lock()
	same := t.lastLogged == key
	t.lastLogged = key
	t.mu.Unlock()
	if !same {
		t.c.cfg.Log.Info(msg, fields...)
	}
}

// wait logs a wait as logOnChange does and records it as what this sync
// waits for (the first one recorded wins); publishWait then shows it.
func (t *term) wait(reason, msg string, fields ...zap.Field) {
	t.logOnChange(msg, fields...)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.syncWait == nil {
		t.syncWait = &Wait{Reason: reason, Message: msg + describeFields(fields)}
	}
}

// describeFields renders log fields for people: " (key=value, ...)".
func describeFields(fields []zap.Field) string {
	if len(fields) == 0 {
		return ""
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	parts := make([]string, 0, len(enc.Fields))
	for _, f := range fields {
		v := enc.Fields[f.Key]
		if l, ok := v.([]any); ok {
			s := make([]string, len(l))
			for i, e := range l {
				s[i] = fmt.Sprint(e)
			}
			v = strings.Join(s, ",")
		}
		parts = append(parts, fmt.Sprintf("%s=%v", f.Key, v))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// publishWait records what this sync waited for in the rollout record and
// the metrics, writing the state only when it changed; a wait keeps its
// Since while its reason stays the same.
func (t *term) publishWait(ctx context.Context, now time.Time) error {
	t.mu.Lock()
	cur := t.syncWait
	t.syncWait = nil
	t.mu.Unlock()
	st := StateOf(t.recordList())
	recorded := st.Active() != nil || st.Start != nil
	prev := st.Waiting
	if !recorded {
		t.c.mu.Lock()
		prev = t.c.unrecordedWait
		t.c.mu.Unlock()
	}
	switch {
	case cur == nil && prev == nil:
	case cur != nil && prev != nil && cur.Reason == prev.Reason && cur.Message == prev.Message:
		cur = prev
	default:
		if cur != nil {
			cur.Since = now
			if prev != nil && prev.Reason == cur.Reason {
				cur.Since = prev.Since
			}
		}
		if recorded {
			if _, err := t.updateState(ctx, func(st *State) error {
				st.Waiting = cur
				return nil
			}); err != nil {
				return err
			}
		}
	}
	t.c.mu.Lock()
	t.c.unrecordedWait = nil
	if !recorded {
		t.c.unrecordedWait = cur
	}
	t.c.mu.Unlock()
	t.c.m.setWaiting(cur)
	return nil
}

// namesOf lists at most a few names, saying how many more there are.
func namesOf(names []string) string {
	const show = 5
	slices.Sort(names)
	if len(names) <= show {
		return strings.Join(names, ",")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:show], ","), len(names)-show)
}
