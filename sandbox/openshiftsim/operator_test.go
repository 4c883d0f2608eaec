package openshiftsim

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/internal/openshift"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

const (
	oldIssuer = "https://old.example"
	issuer1   = "https://one.example"
	issuer2   = "https://two.example"
	issuer3   = "https://three.example"
)

var masters = []string{"master-0", "master-1", "master-2"}

// stepTimeout bounds the wait for one observed step; a step may include an
// API server restart on a loaded two-core machine.
const stepTimeout = 4 * time.Minute

// recorder keeps the operator's events. check, when set, runs on the
// operator's goroutine at each step, while the operator waits for it.
type recorder struct {
	mu     sync.Mutex
	events []Event
	more   chan struct{}
	check  func(Event)
}

func newRecorder() *recorder { return &recorder{more: make(chan struct{})} }

func (r *recorder) observe(e Event) {
	r.mu.Lock()
	check := r.check
	r.mu.Unlock()
	if check != nil {
		check(e)
	}
	r.mu.Lock()
	r.events = append(r.events, e)
	close(r.more)
	r.more = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) setCheck(f func(Event)) {
	r.mu.Lock()
	r.check = f
	r.mu.Unlock()
}

func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// since returns the events after mark.
func (r *recorder) since(mark int) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events[mark:])
}

// wait blocks until an event after from matches, and returns it.
func (r *recorder) wait(t *testing.T, from int, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(stepTimeout)
	for i := from; ; {
		r.mu.Lock()
		for ; i < len(r.events); i++ {
			if match(r.events[i]) {
				e := r.events[i]
				r.mu.Unlock()
				return e
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s; events so far: %s", stepTimeout, what, r.summary())
		}
	}
}

func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, eventName(e))
	}
	return fmt.Sprint(out)
}

func eventName(e Event) string {
	switch e.Kind {
	case EventNodeInstalling, EventNodeInstalled:
		return fmt.Sprintf("%s/%d@%d", e.Kind, e.Index, e.Revision)
	}
	return fmt.Sprintf("%s@%d", e.Kind, e.Revision)
}

func is(kind EventKind, revision int32) func(Event) bool {
	return func(e Event) bool { return e.Kind == kind && e.Revision == revision }
}

// startOperator runs an operator until the returned stop is called (or the
// test ends) and waits until it has settled.
func startOperator(t *testing.T, cfg Config) (stop func()) {
	t.Helper()
	op, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Operator.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-op.Ready():
	case err := <-done:
		t.Fatalf("Operator.Run returned before settling: %v", err)
	case <-time.After(stepTimeout):
		t.Fatal("the operator did not settle")
	}
	return stop
}

// discoveryIssuer reads the signing issuer from OIDC discovery on API server i.
func discoveryIssuer(ctx context.Context, cp *controlplane.ControlPlane, i int) (string, error) {
	cfg := cp.AdminConfig()
	cfg.Host = cp.APIServerURL(i)
	if cfg.Host == "" {
		return "", fmt.Errorf("kube-apiserver %d is down", i)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	body, err := client.Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("OIDC discovery on kube-apiserver %d: %w", i, err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", err
	}
	return doc.Issuer, nil
}

// nodesAtWord is "1 node is" or "n nodes are".
func nodesAtWord(n int) string {
	if n == 1 {
		return "1 node is"
	}
	return fmt.Sprintf("%d nodes are", n)
}

// wantMessage is NodeInstallerProgressing's message when done of total
// nodes have moved from revision from to to.
func wantMessage(done, total int, from, to int32) string {
	switch done {
	case 0:
		return fmt.Sprintf("%s at revision %d; 0 nodes have achieved new revision %d", nodesAtWord(total), from, to)
	case total:
		return fmt.Sprintf("%s at revision %d", nodesAtWord(total), to)
	}
	return fmt.Sprintf("%s at revision %d; %s at revision %d", nodesAtWord(total-done), from, nodesAtWord(done), to)
}

// rolloutCheck asserts, at every step of the rollout from revision from to
// from+1, what KubeAPIServer/cluster says and what each API server runs:
// servers already done run newFlags and sign with newFlags[0], the others
// still run oldFlags.
type rolloutCheck struct {
	t          *testing.T
	ctx        context.Context
	cp         *controlplane.ControlPlane
	dyn        dynamic.Interface
	from       int32
	oldFlags   []string
	newFlags   []string
	wantStatus []openshift.ServiceAccountIssuerStatus
	// after, when set, runs after the checks of each step.
	after func(Event)
}

func (c rolloutCheck) check(e Event) {
	t := c.t
	to := c.from + 1
	if e.Revision != to {
		return
	}
	name := eventName(e)
	done := 0
	switch e.Kind {
	case EventNodeInstalling:
		done = e.Index
	case EventNodeInstalled:
		done = e.Index + 1
	case EventRolloutDone:
		done = len(masters)
	}

	// The step was written, through the status subresource: a write to
	// the main resource would have left the status as it was.
	stored, err := GetKubeAPIServerStatus(c.ctx, c.dyn)
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	if !reflect.DeepEqual(stored, e.Status) {
		t.Errorf("%s: stored status differs from the step's\nstored %+v\nevent  %+v", name, stored, e.Status)
	}
	s := e.Status
	if s.LatestAvailableRevision != to {
		t.Errorf("%s: latestAvailableRevision %d, want %d", name, s.LatestAvailableRevision, to)
	}
	var targets []string
	for i, n := range s.NodeStatuses {
		if n.NodeName != masters[i] {
			t.Errorf("%s: nodeStatuses[%d] is %q, want %q", name, i, n.NodeName, masters[i])
		}
		if n.TargetRevision != 0 {
			targets = append(targets, n.NodeName)
			if n.TargetRevision != to {
				t.Errorf("%s: %s targetRevision %d, want %d", name, n.NodeName, n.TargetRevision, to)
			}
		}
		want := c.from
		if i < done {
			want = to
		}
		if n.CurrentRevision != want {
			t.Errorf("%s: %s currentRevision %d, want %d", name, n.NodeName, n.CurrentRevision, want)
		}
	}
	if e.Kind == EventNodeInstalling {
		if len(targets) != 1 || targets[0] != e.Node {
			t.Errorf("%s: nodes with a targetRevision: %v, want exactly [%s]", name, targets, e.Node)
		}
	} else if len(targets) != 0 {
		t.Errorf("%s: nodes with a targetRevision: %v, want none between node installs", name, targets)
	}

	cond, ok := s.Condition(openshift.ConditionNodeInstallerProgressing)
	wantStatus, wantReason := "True", openshift.ReasonNodeInstaller
	if done == len(masters) {
		wantStatus, wantReason = "False", openshift.ReasonAllNodesAtLatestRevision
	}
	if want := wantMessage(done, len(masters), c.from, to); !ok || cond.Status != wantStatus || cond.Reason != wantReason || cond.Message != want {
		t.Errorf("%s: %s = %s/%s %q, want %s/%s %q", name, openshift.ConditionNodeInstallerProgressing, cond.Status, cond.Reason, cond.Message, wantStatus, wantReason, want)
	}
	if !sameIssuers(s.ServiceAccountIssuers, c.wantStatus) {
		t.Errorf("%s: serviceAccountIssuers %s, want %s", name, issuersString(s.ServiceAccountIssuers), issuersString(c.wantStatus))
	}
	if !slices.Equal(e.Issuers, c.newFlags) {
		t.Errorf("%s: event issuers %v, want %v", name, e.Issuers, c.newFlags)
	}

	// Each API server as the rollout has left it so far.
	for i := range masters {
		wantFlags := c.oldFlags
		if i < done {
			wantFlags = c.newFlags
		}
		if got := c.cp.Issuers(i); !slices.Equal(got, wantFlags) {
			t.Errorf("%s: kube-apiserver %d runs with issuers %v, want %v", name, i, got, wantFlags)
		}
		got, err := discoveryIssuer(c.ctx, c.cp, i)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if got != wantFlags[0] {
			t.Errorf("%s: kube-apiserver %d signs as %q, want %q", name, i, got, wantFlags[0])
		}
	}
	if c.after != nil {
		c.after(e)
	}
}

// sameIssuers compares issuer lists, expiration times by instant.
func sameIssuers(a, b []openshift.ServiceAccountIssuerStatus) bool {
	return slices.EqualFunc(a, b, func(x, y openshift.ServiceAccountIssuerStatus) bool {
		if x.Name != y.Name || (x.ExpirationTime == nil) != (y.ExpirationTime == nil) {
			return false
		}
		return x.ExpirationTime == nil || x.ExpirationTime.Equal(y.ExpirationTime)
	})
}

func issuersString(list []openshift.ServiceAccountIssuerStatus) string {
	var out []string
	for _, s := range list {
		if s.ExpirationTime != nil {
			out = append(out, s.Name+" until "+s.ExpirationTime.UTC().Format(time.RFC3339))
		} else {
			out = append(out, s.Name)
		}
	}
	return fmt.Sprint(out)
}

// wantSettled asserts KubeAPIServer/cluster at rest at revision rev, the
// API servers all running flags.
func wantSettled(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, dyn dynamic.Interface, rev int32, flags []string, issuers []openshift.ServiceAccountIssuerStatus) {
	t.Helper()
	s, err := GetKubeAPIServerStatus(ctx, dyn)
	if err != nil {
		t.Fatal(err)
	}
	if s.LatestAvailableRevision != rev {
		t.Errorf("latestAvailableRevision %d, want %d", s.LatestAvailableRevision, rev)
	}
	var want []openshift.NodeStatus
	for _, m := range masters {
		want = append(want, openshift.NodeStatus{NodeName: m, CurrentRevision: rev})
	}
	if !reflect.DeepEqual(s.NodeStatuses, want) {
		t.Errorf("nodeStatuses %+v, want %+v", s.NodeStatuses, want)
	}
	c, ok := s.Condition(openshift.ConditionNodeInstallerProgressing)
	if wantMsg := fmt.Sprintf("3 nodes are at revision %d", rev); !ok || c.Status != "False" || c.Reason != openshift.ReasonAllNodesAtLatestRevision || c.Message != wantMsg {
		t.Errorf("%s = %+v, want False/%s %q", openshift.ConditionNodeInstallerProgressing, c, openshift.ReasonAllNodesAtLatestRevision, wantMsg)
	}
	if c.LastTransitionTime.IsZero() {
		t.Errorf("%s has no lastTransitionTime", openshift.ConditionNodeInstallerProgressing)
	}
	if !sameIssuers(s.ServiceAccountIssuers, issuers) {
		t.Errorf("serviceAccountIssuers %s, want %s", issuersString(s.ServiceAccountIssuers), issuersString(issuers))
	}
	for i := range masters {
		if got := cp.Issuers(i); !slices.Equal(got, flags) {
			t.Errorf("kube-apiserver %d runs with issuers %v, want %v", i, got, flags)
		}
		if got, err := discoveryIssuer(ctx, cp, i); err != nil || got != flags[0] {
			t.Errorf("kube-apiserver %d signs as %q (%v), want %q", i, got, err, flags[0])
		}
	}
}

// wantSequence asserts the events of one rollout, in order.
func wantSequence(t *testing.T, events []Event, rev int32) {
	t.Helper()
	want := []string{eventName(Event{Kind: EventRevisionStarted, Revision: rev})}
	for i := range masters {
		want = append(want,
			eventName(Event{Kind: EventNodeInstalling, Index: i, Revision: rev}),
			eventName(Event{Kind: EventNodeInstalled, Index: i, Revision: rev}))
	}
	want = append(want, eventName(Event{Kind: EventRolloutDone, Revision: rev}))
	var got []string
	for _, e := range events {
		if e.Revision == rev {
			got = append(got, eventName(e))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("revision %d steps:\n got %v\nwant %v", rev, got, want)
	}
}

// TestOperator runs the operator on one control plane of three API servers
// through its life: CRDs, settling, an issuer change rolled one server at a
// time, a change arriving mid-rollout, adoption by a new operator, and the
// trust window. The subtests build on each other.
func TestOperator(t *testing.T) {
	cp := controlplane.StartForTest(t, controlplane.Config{APIServers: 3, Issuers: []string{oldIssuer}})
	ctx := t.Context()
	dyn := dynamic.NewForConfigOrDie(cp.AdminConfig())

	if !t.Run("InstallCRDsTwice", func(t *testing.T) {
		for i := range 2 {
			if err := InstallCRDs(ctx, cp.AdminConfig()); err != nil {
				t.Fatalf("InstallCRDs, call %d: %v", i+1, err)
			}
		}
	}) {
		return
	}

	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	recA := newRecorder()
	stopA := startOperator(t, Config{
		ControlPlane: cp, Client: dyn, NodeNames: masters,
		Clock: clocktesting.NewFakeClock(t0), Log: zaptest.NewLogger(t).Named("operatorA"), Observer: recA.observe,
	})

	if !t.Run("Settled", func(t *testing.T) {
		recA.wait(t, 0, "Settled", is(EventSettled, 11))
		wantSettled(t, ctx, cp, dyn, 11, []string{oldIssuer}, []openshift.ServiceAccountIssuerStatus{{Name: oldIssuer}})
		auth, err := dyn.Resource(openshift.AuthenticationResource).Get(ctx, openshift.ClusterName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if iss, found, _ := unstructured.NestedString(auth.Object, "spec", "serviceAccountIssuer"); !found || iss != "" {
			t.Errorf("Authentication/cluster spec.serviceAccountIssuer = %q (set: %v), want \"\" (the default)", iss, found)
		}
	}) {
		return
	}

	if !t.Run("IssuerChangeRollsOneServerAtATime", func(t *testing.T) {
		mark := recA.mark()
		to12 := rolloutCheck{
			t: t, ctx: ctx, cp: cp, dyn: dyn, from: 11,
			oldFlags: []string{oldIssuer}, newFlags: []string{issuer1},
			wantStatus: []openshift.ServiceAccountIssuerStatus{{Name: issuer1}},
			after: func(e Event) {
				// The administrator changes their mind while master-1 and
				// master-2 still run revision 11.
				if e.Kind == EventNodeInstalled && e.Index == 0 {
					if err := SetIssuer(ctx, dyn, issuer2); err != nil {
						t.Errorf("changing the issuer mid-rollout: %v", err)
					}
				}
			},
		}
		to13 := rolloutCheck{
			t: t, ctx: ctx, cp: cp, dyn: dyn, from: 12,
			oldFlags: []string{issuer1}, newFlags: []string{issuer2},
			wantStatus: []openshift.ServiceAccountIssuerStatus{{Name: issuer2}},
		}
		recA.setCheck(func(e Event) { to12.check(e); to13.check(e) })
		if err := SetIssuer(ctx, dyn, issuer1); err != nil {
			t.Fatal(err)
		}
		recA.wait(t, mark, "revision 12 rolled out", is(EventRolloutDone, 12))
		recA.wait(t, mark, "revision 13 rolled out", is(EventRolloutDone, 13))
		recA.setCheck(nil)

		events := recA.since(mark)
		wantSequence(t, events, 12)
		wantSequence(t, events, 13)
		// The change that came mid-rollout waited for the next revision.
		if i12 := slices.IndexFunc(events, is(EventRolloutDone, 12)); i12 < 0 || !is(EventRevisionStarted, 13)(events[i12+1]) {
			t.Errorf("revision 13 did not start right after revision 12 finished: %s", recA.summary())
		}
		for _, e := range events {
			if e.Kind == EventRevisionStarted && e.Reason != RolloutIssuerChanged {
				t.Errorf("%s: reason %q, want %q", eventName(e), e.Reason, RolloutIssuerChanged)
			}
		}
	}) {
		return
	}

	if !t.Run("FinalStatus", func(t *testing.T) {
		wantSettled(t, ctx, cp, dyn, 13, []string{issuer2}, []openshift.ServiceAccountIssuerStatus{{Name: issuer2}})
	}) {
		return
	}
	stopA()

	t.Run("CRDRefusesTwoNodesInstalling", func(t *testing.T) {
		obj, err := dyn.Resource(openshift.KubeAPIServerResource).Get(ctx, openshift.ClusterName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodes, _, _ := unstructured.NestedSlice(obj.Object, "status", "nodeStatuses")
		for _, n := range nodes[:2] {
			n.(map[string]any)["targetRevision"] = int64(14)
		}
		if err := unstructured.SetNestedSlice(obj.Object, nodes, "status", "nodeStatuses"); err != nil {
			t.Fatal(err)
		}
		_, err = dyn.Resource(openshift.KubeAPIServerResource).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if !apierrors.IsInvalid(err) {
			t.Errorf("writing two nodes with a targetRevision: got %v, want Invalid (OpenShift's CRD allows one)", err)
		}
	})

	// A new operator, as after a restart, now trusting the previous issuer
	// for a day.
	clock := clocktesting.NewFakeClock(t0)
	recB := newRecorder()
	startOperator(t, Config{
		ControlPlane: cp, Client: dyn, NodeNames: masters, TrustWindow: 24 * time.Hour,
		Clock: clock, Log: zaptest.NewLogger(t).Named("operatorB"), Observer: recB.observe,
	})

	if !t.Run("AdoptsExistingRevision", func(t *testing.T) {
		e := recB.wait(t, 0, "Settled", func(e Event) bool { return e.Kind == EventSettled })
		if e.Revision != 13 {
			t.Errorf("settled at revision %d, want the existing 13", e.Revision)
		}
		wantSettled(t, ctx, cp, dyn, 13, []string{issuer2}, []openshift.ServiceAccountIssuerStatus{{Name: issuer2}})
	}) {
		return
	}

	expires := metav1.NewTime(t0.Add(24 * time.Hour))
	if !t.Run("TrustWindowKeepsPreviousIssuer", func(t *testing.T) {
		mark := recB.mark()
		recB.setCheck(rolloutCheck{
			t: t, ctx: ctx, cp: cp, dyn: dyn, from: 13,
			oldFlags: []string{issuer2}, newFlags: []string{issuer3, issuer2},
			wantStatus: []openshift.ServiceAccountIssuerStatus{{Name: issuer3}, {Name: issuer2, ExpirationTime: &expires}},
		}.check)
		if err := SetIssuer(ctx, dyn, issuer3); err != nil {
			t.Fatal(err)
		}
		recB.wait(t, mark, "revision 14 rolled out", is(EventRolloutDone, 14))
		recB.setCheck(nil)
		wantSequence(t, recB.since(mark), 14)
		wantSettled(t, ctx, cp, dyn, 14, []string{issuer3, issuer2},
			[]openshift.ServiceAccountIssuerStatus{{Name: issuer3}, {Name: issuer2, ExpirationTime: &expires}})
	}) {
		return
	}

	t.Run("ExpiredIssuerIsDropped", func(t *testing.T) {
		mark := recB.mark()
		recB.setCheck(rolloutCheck{
			t: t, ctx: ctx, cp: cp, dyn: dyn, from: 14,
			oldFlags: []string{issuer3, issuer2}, newFlags: []string{issuer3},
			wantStatus: []openshift.ServiceAccountIssuerStatus{{Name: issuer3}},
		}.check)
		clock.Step(24 * time.Hour)
		e := recB.wait(t, mark, "revision 15 rolled out", is(EventRolloutDone, 15))
		recB.setCheck(nil)
		if e.Reason != RolloutIssuerExpired {
			t.Errorf("revision 15 reason %q, want %q", e.Reason, RolloutIssuerExpired)
		}
		wantSequence(t, recB.since(mark), 15)
		wantSettled(t, ctx, cp, dyn, 15, []string{issuer3}, []openshift.ServiceAccountIssuerStatus{{Name: issuer3}})
	})
}
