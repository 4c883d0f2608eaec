package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator/apps"
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

// volumeFeed gives app detection what each node's agent reports its pods'
// volumes hold (protocol.TokenReport.TokenIDs), once per new report: an
// informer's resync or another annotation's change brings nothing new.
type volumeFeed struct {
	c    *Coordinator
	seed maphash.Seed

	mu sync.Mutex
	// last is a digest of each node's last report fed, not the report:
	// memory stays a word per node.
	last map[string]uint64
	// fedTo is the detector the digests were fed to: a new term's starts
	// empty.
	fedTo *apps.Detector
}

func newVolumeFeed(c *Coordinator) *volumeFeed {
	return &volumeFeed{c: c, seed: maphash.MakeSeed(), last: map[string]uint64{}}
}

func (f *volumeFeed) node(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	d := f.c.detector.Load()
	raw, has := n.Annotations[protocol.AnnotationTokens]
	if d == nil || !has {
		return
	}
	sum := maphash.String(f.seed, raw)
	f.mu.Lock()
	if f.fedTo != d {
		f.fedTo, f.last = d, map[string]uint64{}
	}
	if prev, ok := f.last[n.Name]; ok && prev == sum {
		f.mu.Unlock()
		return
	}
	f.last[n.Name] = sum
	f.mu.Unlock()
	rep, err := protocol.ParseTokenReport(raw)
	if err != nil || len(rep.TokenIDs) == 0 {
		return
	}
	d.SetVolumeTokens(n.Name, rep.TokenIDs)
}
