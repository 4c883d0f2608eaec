package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/protocol"
)

// LabelAuditReceiver marks the Pod of the replica whose app detection keeps
// audit events: the leader's, while its detector runs. The audit webhook's
// Service selects it, so the API servers' batches reach the one replica
// that keeps them.
//
// Why a label, and not standby replicas forwarding to the leader: a label
// is one patch per leadership change, needs no address of the leader (the
// Lease names an identity, not a pod IP), no connection between replicas
// to authenticate, and keeps the API server's client certificate checked
// by the replica that reads the batch. What it costs: the coordinator may
// patch Pods in its own namespace (a Role; a Pod's name is not known
// before it exists, so the rule cannot name it), and for the moment a
// leadership change takes to reach the Service's endpoints, batches may
// reach a replica that does not lead, which answers 503 so that the API
// server sends them again (audit.Standby).
const LabelAuditReceiver = protocol.Prefix + "audit-receiver"

// MarkAuditReceiver sets (on) or removes LabelAuditReceiver on the Pod
// namespace/pod with one merge patch; removing an absent label is a no-op.
func MarkAuditReceiver(ctx context.Context, client kubernetes.Interface, namespace, pod string, on bool) error {
	var value any
	if on {
		value = "true"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{LabelAuditReceiver: value}}})
	if err != nil {
		return err
	}
	if _, err := client.CoreV1().Pods(namespace).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		what := "removing"
		if on {
			what = "setting"
		}
		return fmt.Errorf("%s label %s on this replica's Pod %s/%s (--pod-name), which routes the audit webhook's Service to the leader: %w; grant the coordinator patch on pods in its namespace", what, LabelAuditReceiver, namespace, pod, err)
	}
	return nil
}

// receiverPatchTimeout bounds the label's patch at the end of a term, whose
// context is over.
const receiverPatchTimeout = 5 * time.Second

// markReceiver labels this replica's Pod as it starts (on) or stops keeping
// audit events; without a Pod name (outside a cluster) it does nothing. A
// failure is logged: app detection goes on from the other sources.
func (c *Coordinator) markReceiver(ctx context.Context, on bool) {
	if c.cfg.PodName == "" {
		return
	}
	if !on {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), receiverPatchTimeout)
		defer cancel()
	}
	if err := MarkAuditReceiver(ctx, c.cfg.Client, c.cfg.Namespace, c.cfg.PodName, on); err != nil {
		c.cfg.Log.Error("the audit webhook's Service may not reach the leader", zap.Error(err))
	}
}

// Accepting says whether audit events delivered now are kept: this replica
// leads and its detector runs (audit.Standby).
func (c *Coordinator) Accepting() bool { return c.detector.Load() != nil }
