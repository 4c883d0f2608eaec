package coordinator

import (
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
)

// Without the RolloutPolicy CRD and before any rollout exists, the Warning
// that the policies are not read still goes out, on the coordinator's
// Lease (no TokenRollout can hold it), and only once.
func TestPoliciesNotServedToldWithoutARollout(t *testing.T) {
	f := newFixture(t, testNode("n1"), stateConfigMap(State{}))
	f.cfg.LeaseName = "tokenroll-coordinator"
	policies := apifake.NewSimpleClientset()
	policies.PrependReactor("list", "rolloutpolicies", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(v1alpha1.Resource("rolloutpolicies"), "")
	})
	f.cfg.Policies = policies
	f.lead()
	f.events.Verbose = true
	_, stop, err := f.term.startPolicies(f.ctx, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f.sync()
	if r := f.state().Rollout; r != nil {
		t.Fatalf("rollout %s: the test needs none", r.ID)
	}
	got := f.takeEvents()
	if len(got) != 1 || !strings.HasPrefix(got[0], "Warning "+ReasonPoliciesNotServed+" ReadPolicies the API server does not serve rolloutpolicies.tokenroll.io") ||
		!strings.Contains(got[0], "Lease") {
		t.Fatalf("Events %q; want one Warning %s on the Lease", got, ReasonPoliciesNotServed)
	}
	f.sync()
	if got := f.takeEvents(); len(got) != 0 {
		t.Errorf("Events on the next sync %q; want none: it was told", got)
	}
}
