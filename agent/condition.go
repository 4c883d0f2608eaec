package agent

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

// Condition reasons, one per worst state, and the all-clear.
const (
	ReasonExpired        = "TokensExpired"
	ReasonIssuerMismatch = "TokensIssuerMismatch"
	ReasonOverdue        = "TokensOverdue"
	ReasonFresh          = "TokensFresh"
	ReasonUnknown        = "ScanFailed"
)

// maxMessagePods bounds the pods named in the condition's message.
const maxMessagePods = 5

// condition is the part of the Node condition the agent decides; the
// timestamps are filled in when it is written.
type condition struct {
	Status  corev1.ConditionStatus
	Reason  string
	Message string
}

// conditionFor summarises a report as the ServiceAccountTokensStale
// condition: True with the worst state as reason and the worst pods named
// when any token is expired, from the wrong issuer or overdue. It names only
// alarms (their counts and pods), so it changes when they do and not when
// healthy tokens refresh or their pods come and go.
func conditionFor(r *scan.Report) condition {
	var counts []string
	worst := protocol.State("")
	for _, s := range protocol.States {
		if !s.Alarm() {
			continue
		}
		if n := r.Summary[s]; n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", n, s))
			if worst == "" {
				worst = s
			}
		}
	}
	if worst == "" {
		// No counts: they change with every pod started or deleted, and the
		// message is rewritten only when the alarms change.
		return condition{Status: corev1.ConditionFalse, Reason: ReasonFresh,
			Message: "no projected token is expired, overdue or from another issuer"}
	}
	reason := map[protocol.State]string{protocol.StateExpired: ReasonExpired, protocol.StateIssuerMismatch: ReasonIssuerMismatch, protocol.StateOverdue: ReasonOverdue}[worst]
	// Tokens are sorted worst first: name the first few distinct pods.
	var pods []string
	for _, t := range r.Tokens {
		if !t.State.Alarm() {
			continue
		}
		name := t.Namespace + "/" + t.Pod
		if t.Pod == "" {
			name = "pod " + t.PodUID
		}
		if !slices.Contains(pods, name) {
			pods = append(pods, name)
		}
		if len(pods) == maxMessagePods {
			break
		}
	}
	msg := fmt.Sprintf("%s; worst pods: %s", strings.Join(counts, ", "), strings.Join(pods, ", "))
	if total := countPods(r); total > len(pods) {
		msg += fmt.Sprintf(" and %d more", total-len(pods))
	}
	return condition{Status: corev1.ConditionTrue, Reason: reason, Message: msg}
}

func countPods(r *scan.Report) int {
	seen := map[string]bool{}
	for _, t := range r.Tokens {
		if t.State.Alarm() {
			seen[t.PodUID] = true
		}
	}
	return len(seen)
}
