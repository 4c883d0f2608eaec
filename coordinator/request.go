package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
)

// What `tokenroll rollout` asks of the coordinator, written as TokenRollout
// spec: the coordinator reads it from there and answers in the status.

// StartSpec is what `tokenroll rollout start` asks for.
type StartSpec struct {
	Strategy protocol.Strategy
	// Nodes is a label selector; empty means every node.
	Nodes string
	// Policy names the RolloutPolicy every node of the rollout follows
	// (TokenRollout spec.policyName); empty means each node's by selector.
	Policy string
	DryRun bool
	// By is who asks, recorded in an annotation.
	By string
}

// RequestStart creates a TokenRollout asking for the rollout spec
// describes, and returns its name. It refuses while another rollout is
// active or asked for, and when spec names a RolloutPolicy that does not
// exist (the coordinator would start no node of it).
func RequestStart(ctx context.Context, client versioned.Interface, spec StartSpec, now time.Time) (string, error) {
	st, err := Store{Client: client}.Get(ctx)
	if err != nil {
		return "", err
	}
	if r := st.Active(); r != nil {
		return "", fmt.Errorf("rollout %s is %s; cancel it first (tokenroll rollout cancel)", r.ID, r.Phase)
	}
	if st.Start != nil {
		return "", fmt.Errorf("rollout %s requested by %s at %s is still waiting for the coordinator; is it running? (tokenroll status)",
			st.Start.Name, orUnknown(st.Start.RequestedBy), st.Start.RequestedAt.Format(time.RFC3339))
	}
	if spec.Policy != "" {
		if _, err := client.TokenrollV1alpha1().RolloutPolicies().Get(ctx, spec.Policy, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return "", fmt.Errorf("RolloutPolicy %q not found (kubectl get rolloutpolicies); create it, or leave out the policy to give each node the one its selector picks", spec.Policy)
		} else if err != nil {
			return "", fmt.Errorf("reading RolloutPolicy %q: %w", spec.Policy, err)
		}
	}
	o := &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: NewRolloutName(now),
		Annotations: map[string]string{AnnotationRequestedBy: spec.By, AnnotationRequestedAt: now.UTC().Format(time.RFC3339)}},
		Spec: v1alpha1.TokenRolloutSpec{State: v1alpha1.StateRunning, Strategy: v1alpha1.Strategy(spec.Strategy), DryRun: spec.DryRun, PolicyName: spec.Policy}}
	if spec.Nodes != "" {
		sel, err := metav1.ParseToLabelSelector(spec.Nodes)
		if err != nil {
			return "", fmt.Errorf("node selector %q: %w", spec.Nodes, err)
		}
		o.Spec.NodeSelector = sel
	}
	if _, err := client.TokenrollV1alpha1().TokenRollouts().Create(ctx, o, metav1.CreateOptions{FieldManager: "tokenroll-cli"}); err != nil {
		return "", fmt.Errorf("creating TokenRollout %s: %w", o.Name, err)
	}
	return o.Name, nil
}

// RequestSteer sets the current rollout's spec.state for verb (a resume
// also sets spec.resumeTime, so a halted rollout resumes), after checking
// with Steer that the rollout can take it. It returns the rollout and the
// phase it was in.
func RequestSteer(ctx context.Context, client versioned.Interface, verb Verb, who string, now time.Time) (string, RolloutPhase, error) {
	var id string
	var from RolloutPhase
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		st, err := Store{Client: client}.Get(ctx)
		if err != nil {
			return err
		}
		r := st.Active()
		if r == nil {
			return errNoRollout
		}
		id, from = r.ID, r.Phase
		if _, err := Steer(verb, r.Phase); err != nil {
			return fmt.Errorf("rollout %s: %w", r.ID, err)
		}
		api := client.TokenrollV1alpha1().TokenRollouts()
		o, err := api.Get(ctx, r.ID, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading TokenRollout %s: %w", r.ID, err)
		}
		o.Spec.State = map[Verb]v1alpha1.DesiredState{VerbPause: v1alpha1.StatePaused, VerbResume: v1alpha1.StateRunning, VerbCancel: v1alpha1.StateCancelled}[verb]
		if verb == VerbResume {
			o.Spec.ResumeTime = &metav1.Time{Time: now}
		}
		if o.Annotations == nil {
			o.Annotations = map[string]string{}
		}
		o.Annotations[AnnotationRequestedBy], o.Annotations[AnnotationRequestedAt] = who, now.UTC().Format(time.RFC3339)
		_, err = api.Update(ctx, o, metav1.UpdateOptions{FieldManager: "tokenroll-cli"})
		return err
	})
	if err != nil && !errors.Is(err, errNoRollout) && id != "" {
		err = fmt.Errorf("steering TokenRollout %s: %w", id, err)
	}
	return id, from, err
}

// RequestRetry adds retry requests for nodes to the newest TokenRollout's
// spec.retry.
func RequestRetry(ctx context.Context, client versioned.Interface, nodes []string, who string, now time.Time) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		items, err := Store{Client: client}.List(ctx)
		if err != nil {
			return err
		}
		if len(items) == 0 {
			return errors.New("no TokenRollout to carry the request: tokenroll has run no rollout, so it holds no record of any node")
		}
		sortRecords(items)
		o := items[len(items)-1].DeepCopy()
		for _, n := range nodes {
			if !slices.ContainsFunc(o.Spec.Retry, func(r v1alpha1.RetryRequest) bool {
				return r.Node == n && !r.RequestTime.Before(&metav1.Time{Time: now})
			}) {
				o.Spec.Retry = append(o.Spec.Retry, v1alpha1.RetryRequest{Node: n, RequestTime: metav1.Time{Time: now}, RequestedBy: who})
			}
		}
		// The oldest requests make room: the coordinator applied them long ago.
		if extra := len(o.Spec.Retry) - 256; extra > 0 {
			o.Spec.Retry = o.Spec.Retry[extra:]
		}
		_, err = client.TokenrollV1alpha1().TokenRollouts().Update(ctx, o, metav1.UpdateOptions{FieldManager: "tokenroll-cli"})
		return err
	})
}
