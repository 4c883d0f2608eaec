package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/protocol"
)

// tokenReport summarises a scan for the coordinator. It is a pure function
// of the report, and stable while nothing the coordinator acts on changes.
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
			if t.Issuer != expectedIssuer && t.RefreshAt.After(it.LastRefreshAt) {
				it.LastRefreshAt = t.RefreshAt.UTC().Truncate(time.Second)
			}
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
	out.Issuers = protocol.CapIssuers(out.Issuers, expectedIssuer)
	slices.SortFunc(out.StalePods, func(a, b protocol.PodRef) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	return out
}

// writeReport patches the tokens annotation onto this agent's own Node when
// it changed.
func (a *Agent) writeReport(ctx context.Context, rep protocol.TokenReport) {
	value, err := json.Marshal(rep)
	if err != nil {
		return
	}
	a.mu.Lock()
	same := a.appliedReport == string(value)
	a.mu.Unlock()
	if same {
		return
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{protocol.AnnotationTokens: string(value)}}})
	if err != nil {
		return
	}
	if _, err := a.cfg.Client.Patch(ctx, a.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tokenroll-agent"}); err != nil {
		a.metrics.scanErrors.WithLabelValues("node_annotation").Inc()
		a.cfg.Log.Warn("writing the tokens annotation", zap.String("node", a.cfg.NodeName), zap.Error(err))
		return
	}
	a.metrics.reportWrites.Inc()
	a.mu.Lock()
	a.appliedReport = string(value)
	a.mu.Unlock()
}
