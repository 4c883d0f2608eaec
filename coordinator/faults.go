package coordinator

import (
	"context"
	"maps"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	"github.com/tokenroll/tokenroll/internal/nodeutil"
)

// This file is how the coordinator rides out the API server's transient
// faults and a flapping revision gate: its single writes are retried
// (cfg.WriteRetry) before anything halts, and new nodes start only once
// the gate has stayed open for cfg.GateSettle (at once when no previous
// issuer is trusted).

// conflictRetry bounds the re-reads after conflicts. They do not wait: the
// read of the newer Node is the wait.
var conflictRetry = wait.Backoff{Steps: 5}

// patchNode applies the merge patch build makes on a resourceVersion,
// first on that of decided, the Node as the decision saw it. Transient
// faults are retried as cfg.WriteRetry says. A conflict reads the Node
// again, and then:
//   - it already holds what the patch writes: an earlier attempt landed and
//     its answer was lost (a timeout); that Node is the result;
//   - nothing the node protocol decides on changed (the kubelet's status
//     did): the patch is applied again on the newer resourceVersion;
//   - else the conflict is returned, and the next sync decides again.
func (t *term) patchNode(ctx context.Context, decided *corev1.Node, build func(resourceVersion string) ([]byte, error), landed func(*corev1.Node) bool) (*corev1.Node, error) {
	nodes := t.c.cfg.Client.CoreV1().Nodes()
	policy := t.c.cfg.WriteRetry
	rv := decided.ResourceVersion
	var out *corev1.Node
	reapply := false
	err := retry.OnError(conflictRetry, func(err error) bool { return reapply && apierrors.IsConflict(err) }, func() error {
		reapply = false
		body, err := build(rv)
		if err != nil {
			return err
		}
		err = policy.Do(ctx, func(ctx context.Context) error {
			var err error
			out, err = nodes.Patch(ctx, decided.Name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: fieldManager})
			return err
		})
		if !apierrors.IsConflict(err) {
			return err
		}
		var fresh *corev1.Node
		if gerr := policy.Do(ctx, func(ctx context.Context) error {
			var err error
			fresh, err = nodes.Get(ctx, decided.Name, metav1.GetOptions{})
			return err
		}); gerr != nil {
			return err // the conflict: decide again on what the informer brings
		}
		if landed(fresh) {
			out = fresh
			return nil
		}
		if sameDecisionInputs(decided, fresh) {
			t.c.cfg.Log.Info("node changed only in what no decision reads; writing again", zap.String("node", decided.Name),
				zap.String("resourceVersion", fresh.ResourceVersion))
			rv, reapply = fresh.ResourceVersion, true
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// fieldManager names the coordinator's writes.
const fieldManager = "tokenroll-coordinator"

// sameDecisionInputs tells whether two versions of a Node agree on all the
// node protocol reads: the spec (unschedulable, taints), labels,
// annotations (ours, the agent's report and request status, the Machine
// Config daemon's), readiness, boot ID and deletion. The kubelet's
// heartbeats, its other conditions, images and addresses are not read.
func sameDecisionInputs(a, b *corev1.Node) bool {
	return equality.Semantic.DeepEqual(a.Spec, b.Spec) && maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations) &&
		nodeutil.Ready(a) == nodeutil.Ready(b) && a.Status.NodeInfo.BootID == b.Status.NodeInfo.BootID &&
		(a.DeletionTimestamp == nil) == (b.DeletionTimestamp == nil)
}

// holdsWrite tells whether n already holds a write of annotations (a nil
// value: removed) and, when set, spec.unschedulable.
func holdsWrite(n *corev1.Node, annotations map[string]any, unschedulable *bool) bool {
	if unschedulable != nil && n.Spec.Unschedulable != *unschedulable {
		return false
	}
	for k, v := range annotations {
		got, ok := n.Annotations[k]
		if s, set := v.(string); set != ok || got != s {
			return false
		}
	}
	return true
}

// gateSettled returns when the revision gate, open now, will have stayed
// open for cfg.GateSettle; new nodes start only then, unless no previous
// issuer is trusted any more (TrustEnded): then its tokens already fail,
// and nodes start at once. A term that finds the gate open cannot tell
// since when, and counts from its start.
func (t *term) gateSettled() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c.cfg.GateSettle <= 0 {
		return time.Time{}
	}
	return t.gateOpenSince.Add(t.c.cfg.GateSettle)
}
