package coordinator

import (
	"context"
	"errors"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
)

// ErrRecordsNotServed is what reading the rollout record says when the API
// server does not serve TokenRollouts: their CRD is not installed.
var ErrRecordsNotServed = errors.New("the API server does not serve tokenrollouts.tokenroll.io (the TokenRollout CRD is not installed), so no rollout can be recorded or read; " +
	"install the CRDs: kubectl apply -f deploy/kustomize/base/crds/ (or install the Helm chart, which applies its crds/)")

// ReasonCRDNotInstalled is the Warning Event, on the coordinator's Pod (or
// its Lease), while the TokenRollout CRD is not installed.
const ReasonCRDNotInstalled = "TokenRolloutCRDNotInstalled"

// WaitCRDNotInstalled: the TokenRollout CRD is not installed, so the
// leader records no rollout and does nothing (tokenroll_rollout_waiting
// says so; no TokenRollout can).
const WaitCRDNotInstalled = "crd-not-installed"

// recordsServed reports whether the API server serves TokenRollouts: false,
// without an error, when it answers that it does not know the resource.
func recordsServed(ctx context.Context, c *Coordinator) (bool, error) {
	_, err := c.cfg.Rollouts.TokenrollV1alpha1().TokenRollouts().List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

// awaitRecordsServed returns once the API server serves TokenRollouts (or
// fails in a way the informers report and retry). Until then the leader
// can record nothing, so it does nothing else, and says why where a person
// looks: an error in the log, a Warning Event on its own object, the
// rollout_waiting metric, and, to `tokenroll status`, the error reading
// the record gives. It asks again every policyAPIRecheck.
func (c *Coordinator) awaitRecordsServed(ctx context.Context, recorder events.EventRecorder) error {
	served, err := recordsServed(ctx, c)
	if served || err != nil {
		return nil
	}
	msg := ErrRecordsNotServed.Error()
	c.cfg.Log.Error("the coordinator waits: "+msg, zap.Duration("recheckEvery", policyAPIRecheck))
	_ = c.selfEvent(recorder, corev1.EventTypeWarning, ReasonCRDNotInstalled, "ReadRollouts", "the coordinator waits: %s", msg)
	c.m.setWaiting(&Wait{Reason: WaitCRDNotInstalled, Message: msg, Since: c.cfg.Clock.Now()})
	tk := c.cfg.Clock.NewTicker(policyAPIRecheck)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C():
		}
		if served, err := recordsServed(ctx, c); served || err != nil {
			c.cfg.Log.Info("the API server serves TokenRollouts now: the coordinator starts its work")
			c.m.setWaiting(nil)
			return nil
		}
	}
}

// selfEvent records an Event about the coordinator itself, not about a
// rollout or a node: on its Pod when it knows it (--pod-name), else on its
// leader-election Lease. It reports whether it had an object to put it on.
func (c *Coordinator) selfEvent(recorder events.EventRecorder, typ, reason, action, note string, args ...any) bool {
	var ref *corev1.ObjectReference
	switch {
	case c.cfg.PodName != "":
		ref = &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: c.cfg.Namespace, Name: c.cfg.PodName}
	case c.cfg.LeaseName != "":
		ref = &corev1.ObjectReference{Kind: "Lease", APIVersion: coordinationv1.SchemeGroupVersion.String(), Namespace: c.cfg.Namespace, Name: c.cfg.LeaseName}
	default:
		return false
	}
	recorder.Eventf(ref, nil, typ, reason, action, note, args...)
	return true
}
