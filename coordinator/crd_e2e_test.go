package coordinator_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// Without the CRDs, the coordinator cannot record a rollout: it says so
// where a person looks (an error in its log, a Warning Event on its Lease,
// tokenroll_rollout_waiting{reason="crd-not-installed"}, and tokenroll
// status's error), naming the CRD and how to install it, and starts its
// work once they are installed.
func TestCoordinatorWithoutTheCRDsSaysSo(t *testing.T) {
	e := startEnv(t, 1, "n-1")
	crds := dynamic.NewForConfigOrDie(e.cp.AdminConfig()).Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, name := range []string{"tokenrollouts.tokenroll.io", "rolloutpolicies.tokenroll.io"} {
		if err := crds.Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting the CRD %s: %v", name, err)
		}
	}
	err := wait.PollUntilContextTimeout(e.ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := coordinator.Store{Client: e.api}.Get(ctx)
		return errors.Is(err, coordinator.ErrRecordsNotServed), nil
	})
	if err != nil {
		t.Fatalf("waiting until the API server no longer serves TokenRollouts: %v", err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	r := e.startCoordinator("c1", nil, func(cfg *coordinator.Config) {
		cfg.LeaseName = leaseName
		cfg.Log = zap.New(zapcore.NewTee(cfg.Log.Core(), core))
	})
	const why = "the API server does not serve tokenrollouts.tokenroll.io (the TokenRollout CRD is not installed)"
	const todo = "kubectl apply -f deploy/kustomize/base/crds/"
	var note string
	err = wait.PollUntilContextTimeout(e.ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		// A failed list is tried again at the next poll.
		list, listErr := e.admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if listErr != nil {
			e.t.Logf("listing Events: %v", listErr)
			return false, nil
		}
		for _, ev := range list.Items {
			if ev.Reason == coordinator.ReasonCRDNotInstalled && ev.Type == "Warning" && ev.Regarding.Kind == "Lease" && ev.Regarding.Name == leaseName {
				note = ev.Note
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil || !strings.Contains(note, why) || !strings.Contains(note, todo) {
		t.Errorf("Warning Event %s on Lease %s/%s: %q (%v); want it to name the CRD and say %q", coordinator.ReasonCRDNotInstalled, ns, leaseName, note, err, todo)
	}
	if got := logs.FilterLevelExact(zapcore.ErrorLevel).FilterMessageSnippet(why).FilterMessageSnippet(todo).Len(); got != 1 {
		t.Errorf("%d error log lines naming the CRD and what to do; want 1: %v", got, logs.All())
	}
	if v := gatherGauge(t, r, "tokenroll_rollout_waiting", "reason", coordinator.WaitCRDNotInstalled); v != 1 {
		t.Errorf("tokenroll_rollout_waiting{reason=%q} %v; want 1", coordinator.WaitCRDNotInstalled, v)
	}
	_, err = coordinator.BuildStatus(e.ctx, e.admin, e.api, ns, "", coordinator.GateState{}, time.Now())
	if err == nil || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), todo) {
		t.Errorf("tokenroll status: %v; want it to name the CRD and say %q", err, todo)
	}

	// Installed, they are used from the coordinator's next look.
	if err := benchkit.InstallCRDs(e.ctx, e.cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(e.ctx, 500*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		return gatherGauge(t, r, "tokenroll_rollout_waiting", "reason", coordinator.WaitCRDNotInstalled) == 0, nil
	})
	if err != nil {
		t.Fatalf("the coordinator still waits for the CRD after it was installed: %v", err)
	}
	st := e.rollOutNewIssuer()
	if len(st.Rollout.Nodes) != 1 {
		t.Errorf("rollout %+v; want node n-1 in it", st.Rollout)
	}
}
