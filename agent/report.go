package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

// tokenReport summarises a scan for the coordinator. It is a pure function
// of the report, and stable while nothing the coordinator acts on changes,
// but for the token IDs, which a refresh changes and sameAlarms ignores.
func tokenReport(r *scan.Report, expectedIssuer string) protocol.TokenReport {
	expectedIssuer = protocol.Truncate(expectedIssuer) // as the tokens' issuers are
	out := protocol.TokenReport{Issuer: expectedIssuer, PartialScan: r.Partial}
	if !r.Complete() {
		out.PodsAPI = r.PodsAPI
	}
	issuers := map[string]*protocol.IssuerTokens{}
	seen := map[string]bool{}
	for _, t := range r.Tokens {
		if t.State == protocol.StateOrphaned || t.State == protocol.StateForeign {
			continue
		}
		out.Tokens++
		if t.State.NeedsWork() {
			if out.Stale == nil {
				out.Stale = map[protocol.State]int{}
			}
			out.Stale[t.State]++
		}
		if t.Issuer != "" {
			it := issuers[t.Issuer]
			if it == nil {
				it = &protocol.IssuerTokens{Issuer: t.Issuer}
				issuers[t.Issuer] = it
			}
			it.Tokens++
			if at := ceilMinute(t.RefreshAt); t.Issuer != expectedIssuer && at.After(it.LastRefreshAt) {
				it.LastRefreshAt = at
			}
		}
		if t.ID != "" && t.PodUID != "" && !t.IssuedAt.IsZero() && len(out.TokenIDs[t.PodUID]) < protocol.MaxTokenIDsPerPod {
			if out.TokenIDs == nil {
				out.TokenIDs = map[string][]string{}
			}
			out.TokenIDs[t.PodUID] = append(out.TokenIDs[t.PodUID], protocol.TokenIDEntry(t.ID, t.IssuedAt))
		}
		if t.State.Alarm() && !seen[t.PodUID] {
			seen[t.PodUID] = true
			if len(out.StalePods) == protocol.MaxStalePods {
				out.StalePodsTruncated = true
				continue
			}
			out.StalePods = append(out.StalePods, protocol.PodRef{Namespace: t.Namespace, Name: t.Pod, UID: t.PodUID})
		}
	}
	for _, it := range issuers {
		out.Issuers = append(out.Issuers, *it)
	}
	for _, ids := range out.TokenIDs {
		slices.Sort(ids)
	}
	out.Issuers = protocol.CapIssuers(out.Issuers, expectedIssuer)
	slices.SortFunc(out.StalePods, func(a, b protocol.PodRef) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	return out
}

// ceilMinute rounds t up to the minute: the coordinator compares it with
// trust deadlines an hour or more away, and a later time is the safe side.
// The rounding spares a rewrite when the last old token's refresh time moves
// by seconds (the kubelet's jitter).
func ceilMinute(t time.Time) time.Time {
	t = t.UTC()
	c := t.Truncate(time.Minute)
	if c.Before(t) {
		c = c.Add(time.Minute)
	}
	return c
}

// reportRefresh is how often, at most, the tokens annotation is rewritten
// when only the counts of healthy tokens changed: on a node whose pods come
// and go those change on every scan, and a write of them fans out to every
// watcher of Nodes. In the agent's first reportSettle (a node that boots, or
// one just remediated, whose pods are starting) the counts follow within
// settleRefresh instead, so the report does not show an empty node for an
// hour.
const (
	reportRefresh = time.Hour
	reportSettle  = 10 * time.Minute
	settleRefresh = time.Minute
)

// sameAlarms reports whether two reports agree on everything the
// coordinator acts on: they differ at most in the counts of the expected
// issuer's tokens, which routine refreshes and pods coming and going change.
func sameAlarms(a, b protocol.TokenReport) bool {
	return reflect.DeepEqual(alarmView(a), alarmView(b))
}

func alarmView(r protocol.TokenReport) protocol.TokenReport {
	r.Tokens = 0
	// Token IDs change with every refresh: they wait for another write.
	r.TokenIDs = nil
	r.Issuers = slices.Clone(r.Issuers)
	for i := range r.Issuers {
		if r.Issuers[i].Issuer == r.Issuer {
			r.Issuers[i].Tokens = 0
		}
	}
	if len(r.Stale) == 0 {
		r.Stale = nil
	}
	return r
}

// keptIssuers is how many issuers a report cut to its byte budget keeps at
// least, when the stale pods are already gone.
const keptIssuers = 4

// fitReport encodes rep within max bytes, leaving detail out until it fits:
// the token IDs first, then the stale pods (the counts stay), then all but the keptIssuers
// issuers with the most tokens, then those too. What is left (the expected
// issuer, the counts) does not depend on what the volumes hold.
func fitReport(rep protocol.TokenReport, max int) (protocol.TokenReport, []byte, error) {
	enc := func(r protocol.TokenReport) ([]byte, bool, error) {
		b, err := json.Marshal(r)
		return b, len(b) <= max, err
	}
	if b, ok, err := enc(rep); ok || err != nil {
		return rep, b, err
	}
	// The token IDs go first: only app detection reads them, and only
	// where the audit events lack the bound pod.
	rep.TokenIDs = nil
	if b, ok, err := enc(rep); ok || err != nil {
		return rep, b, err
	}
	pods := rep.StalePods
	rep.StalePodsTruncated = true
	// The largest prefix of the pods that fits; sizes grow with the prefix.
	k := sort.Search(len(pods)+1, func(k int) bool {
		r := rep
		r.StalePods = pods[:k]
		_, ok, _ := enc(r)
		return !ok
	}) - 1
	if k >= 0 {
		rep.StalePods = pods[:k]
		if k == 0 {
			rep.StalePods = nil
		}
		if b, ok, err := enc(rep); ok || err != nil {
			return rep, b, err
		}
	}
	rep.StalePods = nil
	byTokens := slices.Clone(rep.Issuers)
	slices.SortStableFunc(byTokens, func(a, b protocol.IssuerTokens) int { return cmp.Compare(b.Tokens, a.Tokens) })
	keep := func(n int) protocol.TokenReport {
		r := rep
		r.Issuers = slices.Clone(byTokens[:n])
		slices.SortFunc(r.Issuers, func(a, b protocol.IssuerTokens) int { return cmp.Compare(a.Issuer, b.Issuer) })
		if len(r.Issuers) == 0 {
			r.Issuers = nil
		}
		r.IssuersTruncated = n < len(byTokens)
		return r
	}
	n := min(len(byTokens), keptIssuers)
	for ; n > 0; n-- {
		if b, ok, err := enc(keep(n)); ok || err != nil {
			return keep(n), b, err
		}
	}
	r := keep(0)
	b, _, err := enc(r)
	return r, b, err
}

// writeReport patches the tokens annotation onto this agent's own Node: at
// once when what the coordinator acts on changed, and when only the healthy
// tokens' counts did, once reportRefresh (settleRefresh while the agent
// settles) has passed since the last write.
func (a *Agent) writeReport(ctx context.Context, rep protocol.TokenReport) {
	rep, raw, err := fitReport(rep, protocol.MaxTokenReportBytes)
	if err != nil {
		return
	}
	value := string(raw)
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	applied, lastWrite := a.appliedReport, a.reportWrittenAt
	a.mu.Unlock()
	if applied == value {
		return
	}
	wait := reportRefresh
	if now.Sub(a.started) < reportSettle {
		wait = settleRefresh
	}
	if prev, err := protocol.ParseTokenReport(applied); applied != "" && err == nil && sameAlarms(prev, rep) && now.Sub(lastWrite) < wait {
		return
	}
	if rep.StalePodsTruncated || rep.IssuersTruncated {
		a.cfg.Log.Debug("the tokens annotation leaves detail out to stay within its byte budget", zap.Int("bytes", len(value)),
			zap.Int("stalePods", len(rep.StalePods)), zap.Bool("issuersTruncated", rep.IssuersTruncated))
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{protocol.AnnotationTokens: value}}})
	if err != nil {
		return
	}
	written, err := a.cfg.Client.Patch(ctx, a.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tokenroll-agent"})
	if err != nil {
		a.metrics.scanErrors.WithLabelValues("node_annotation").Inc()
		a.cfg.Log.Warn("writing the tokens annotation", zap.String("node", a.cfg.NodeName), zap.Error(err))
		return
	}
	a.metrics.reportWrites.Inc()
	a.mu.Lock()
	a.appliedReport, a.reportWrittenAt = value, now
	a.noteWritten(written)
	a.mu.Unlock()
}
