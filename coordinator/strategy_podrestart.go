package coordinator

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/internal/plural"
	"github.com/tokenroll/tokenroll/protocol"
)

// PodRestart evicts only the pods whose tokens are stale, through the
// eviction API (PodDisruptionBudgets hold), and asks the agent nothing.
const PodRestart protocol.Strategy = "pod-restart"

// ownerPoll is how often the evicted pods' controllers are read while a
// pod restart is verified: their status is read, not watched.
const ownerPoll = 2 * time.Second

type podRestart struct{}

func (podRestart) name() protocol.Strategy { return PodRestart }

func (podRestart) prepare(ctx context.Context, client kubernetes.Interface, n *corev1.Node, issuer string) (*preparation, string, error) {
	if rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens]); err == nil && rep.Issuer != issuer {
		// The agent still judges by the previous issuer: its list of stale
		// pods is not complete yet. Its next report wakes us.
		return nil, "waiting for the agent to judge by the current issuer before evicting", nil
	}
	pods, owners, err := stalePods(ctx, client, n)
	if err != nil {
		return nil, "", err
	}
	refs := make([]protocol.PodRef, 0, len(pods))
	for _, p := range pods {
		refs = append(refs, protocol.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
	}
	return &preparation{kind: "evict", pods: len(pods), evicted: refs, owners: owners,
		run:       func(ctx context.Context, d Drainer, opts DrainOptions) error { return d.Evict(ctx, pods, opts) },
		doneEvent: "PodsEvicted", doneNote: "evicted " + plural.Count(len(refs), "pod") + " holding stale tokens"}, "", nil
}

func (podRestart) action() protocol.Action { return "" }

// verify: every token fresh and from the current issuer, and the evicted
// pods' controllers report every replica ready.
func (podRestart) verify(ctx context.Context, client kubernetes.Interface, in verifyInput) (verdict, error) {
	if v := tokensVerdict(in); !v.ok {
		v.poll = ownerPoll
		return v, nil
	}
	ok, why, err := ownersReady(ctx, client, in.state.Owners)
	if err != nil {
		return verdict{}, err
	}
	if !ok {
		v := waitFor(why, HaltVerifyTimeout)
		v.poll = ownerPoll
		return v, nil
	}
	return verdict{ok: true}, nil
}

// stalePods are the pods the node's agent reports holding stale tokens; a
// pod no controller would recreate is not evicted: the step fails and says
// which.
func stalePods(ctx context.Context, client kubernetes.Interface, n *corev1.Node) ([]corev1.Pod, []protocol.OwnerRef, error) {
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	if err != nil {
		return nil, nil, fmt.Errorf("pod restart needs the agent's report on node %s: %w", n.Name, err)
	}
	var pods []corev1.Pod
	var unmanaged []string
	owners := map[protocol.OwnerRef]bool{}
	for _, ref := range rep.StalePods {
		p, err := client.CoreV1().Pods(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading pod %s: %w", ref, err)
		}
		if string(p.UID) != ref.UID || p.Spec.NodeName != n.Name || p.DeletionTimestamp != nil {
			continue // already replaced, or on its way out
		}
		ctrl := metav1.GetControllerOf(p)
		if ctrl == nil {
			unmanaged = append(unmanaged, ref.String())
			continue
		}
		owners[protocol.OwnerRef{Kind: ctrl.Kind, Namespace: p.Namespace, Name: ctrl.Name}] = true
		pods = append(pods, *p)
	}
	if len(unmanaged) > 0 {
		return nil, nil, fmt.Errorf("pods %s are not managed by a controller, so an eviction would lose them; restart them yourself, or use --strategy kubelet-restart", strings.Join(unmanaged, ", "))
	}
	out := make([]protocol.OwnerRef, 0, len(owners))
	for o := range owners {
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b protocol.OwnerRef) int { return cmp.Compare(a.String(), b.String()) })
	return pods, out, nil
}

func ptrOr(p *int32, d int32) int32 {
	if p == nil {
		return d
	}
	return *p
}
