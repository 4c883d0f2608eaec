package coordinator

// The fixture for the hermetic controller tests, in the style of
// sample-controller's: a fake clientset, informer stores filled directly (no
// informer goroutines), a fake clock, gate and drainer, and one sync at a
// time. It is the only test file that touches the coordinator's internals
// (its construction, its per-term state, one sync, its stores); the tests
// speak in cluster objects and in the API writes the fake clientset records.
//
// Two gaps of the fake clientset matter to the coordinator and are closed
// here: it never changes an object's resourceVersion (the coordinator's
// read-your-writes cache compares them), and it ignores the resourceVersion
// precondition a merge patch carries (a leader deciding on a stale cache
// must get a conflict). rvTracker emulates both. The fake runs no admission,
// no PodDisruptionBudgets and no field selectors on watches: the tests
// against a real API server (e2e_test.go) cover those.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	restfake "k8s.io/client-go/rest/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
	"github.com/tokenroll/tokenroll/protocol"
)

// t0 is when every test starts.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

const (
	testNS    = "tokenroll"
	oldIssuer = "https://old.tokenroll.test"
	newIssuer = "https://new.tokenroll.test"
	// rolloutID names the rollout the tests preload.
	rolloutID = "r-test"
	// startName names the TokenRollout of a start request the tests make
	// (a State's StartRequest without a Name): the name the CLI would
	// give it at t0.
	startName = "r-20261127-120000-0000"
)

var (
	nodesGVR      = corev1.SchemeGroupVersion.WithResource("nodes")
	recordsGVR    = v1alpha1.SchemeGroupVersion.WithResource("tokenrollouts")
	podsGVR       = corev1.SchemeGroupVersion.WithResource("pods")
	daemonSetsGVR = appsv1.SchemeGroupVersion.WithResource("daemonsets")
)

// fixture is one fake cluster and the coordinator leading it.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc
	fake   *fake.Clientset
	// api is the tokenroll.io clientset: its requests land in fake's
	// action log and tracker, in order with the others.
	api     *apifake.Clientset
	tracker *rvTracker
	// snaps is the rollout record after each TokenRollout write, by its
	// index in the action log.
	snapMu  sync.Mutex
	snaps   map[int]State
	client  kubernetes.Interface
	clock   *clocktesting.FakeClock
	gate    *FakeGate
	drainer *fakeDrainer
	// reg is the current leader's metrics registry.
	reg *prometheus.Registry
	// cfg is what the next leader is built with; tests adjust it before
	// the first sync.
	cfg Config

	issuerMu sync.Mutex
	issuer   string // what OIDC discovery answers ("" : an error)

	// term is the current leader's term (nil: none yet); nodes and records
	// stand for its informers' stores.
	term    *term
	nodes   cache.Store
	records cache.Store
	// kured stands for the informer on kured's DaemonSet (nil: off).
	kured  cache.Store
	events *events.FakeRecorder
	seen   int // actions already returned by writes
}

// newFixture builds a cluster holding objs; the coordinator is built on the
// first sync, so a test may change f.cfg first.
func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fixture{t: t, ctx: ctx, cancel: cancel, fake: fake.NewSimpleClientset(), issuer: newIssuer,
		clock: clocktesting.NewFakeClock(t0), gate: NewFakeGate(GateState{Provider: GateNone, Open: true, Message: "no revision gate"})}
	f.drainer = &fakeDrainer{}
	sch := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{fake.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(sch); err != nil {
			t.Fatal(err)
		}
	}
	f.tracker = &rvTracker{ObjectTracker: clienttesting.NewObjectTracker(sch, serializer.NewCodecFactory(sch).UniversalDecoder())}
	f.fake.PrependReactor("*", "*", clienttesting.ObjectReaction(f.tracker))
	f.fake.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := f.tracker.Watch(a.GetResource(), a.GetNamespace())
		return true, w, err
	})
	f.snaps = map[int]State{}
	f.api = apifake.NewSimpleClientset()
	f.api.PrependReactor("*", "*", f.serveRecords)
	f.api.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := f.tracker.Watch(a.GetResource(), a.GetNamespace())
		return true, w, err
	})
	f.fake.PrependReactor("list", "pods", f.listPodsOnNode)
	rc := &restfake.RESTClient{NegotiatedSerializer: scheme.Codecs.WithoutConversion(), Client: restfake.CreateHTTPClient(f.serveOIDC)}
	f.client = clientWithOIDC{Clientset: f.fake, disc: &oidcDiscovery{FakeDiscovery: &fakediscovery.FakeDiscovery{Fake: &f.fake.Fake}, rest: rc}}
	var seeds []State
	for _, o := range objs {
		if sd, ok := o.(*stateSeed); ok {
			seeds = append(seeds, sd.st)
			continue
		}
		if err := f.tracker.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range seeds {
		f.putState(st)
	}
	f.cfg = Config{Client: f.client, Rollouts: f.api, Namespace: testNS, Gate: f.gate, Strategy: Reboot, MaxUnavailable: intstr.FromInt32(1),
		DrainTimeout: 10 * time.Minute, ActionTimeout: 15 * time.Minute, VerifyTimeout: 5 * time.Minute,
		TrustMargin: time.Hour, IssuerRefresh: 10 * time.Minute, Drainer: f.drainer, Log: zaptest.NewLogger(t), Clock: f.clock}
	t.Cleanup(f.stop)
	return f
}

// lead makes a new coordinator the leader, as leader election would after
// the last one's term ended: nothing carries over but the cluster.
func (f *fixture) lead() {
	f.t.Helper()
	if f.term != nil {
		f.endTerm()
	}
	c := f.newCoordinator()
	// The term Lead starts, on stores the tests fill themselves instead of
	// informers.
	f.nodes = cache.NewStore(cache.MetaNamespaceKeyFunc)
	f.records = cache.NewStore(cache.MetaNamespaceKeyFunc)
	f.term = c.newTerm(klog.Background(), f.nodes, f.records)
	f.kured = nil
	if f.cfg.KuredLock.Name != "" {
		f.kured = cache.NewStore(cache.MetaNamespaceKeyFunc)
		f.term.kured = f.kured
	}
	f.events = events.NewFakeRecorder(100)
	f.term.recorder = f.events
	f.catchUp()
}

// newCoordinator is a new process's coordinator, built with f.cfg and
// metrics of its own.
func (f *fixture) newCoordinator() *Coordinator {
	f.t.Helper()
	f.reg = prometheus.NewRegistry()
	cfg := f.cfg
	cfg.Registry = f.reg
	c, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// runLead builds a leader and runs it as leader election would, with its
// own informers on the fake clientset, until stop; stop returns what Lead
// returned.
func (f *fixture) runLead() (stop func() error) {
	f.t.Helper()
	c := f.newCoordinator()
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Lead(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

// New refuses a config with every problem named at once.
func TestNewChecksConfig(t *testing.T) {
	_, err := New(Config{Strategy: "restart-everything", MaxUnavailable: intstr.FromInt32(0), Settle: -time.Second})
	if err == nil {
		t.Fatal("New accepted an empty config")
	}
	for _, want := range []string{"no API client", "namespace is empty", "no revision gate", `strategy "restart-everything"`,
		`max unavailable "0": must be at least 1`, "drain timeout 0s must be positive", "action timeout 0s must be positive",
		"verify timeout 0s must be positive", "issuer refresh 0s must be positive", "must not be negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New's error does not say %q:\n%v", want, err)
		}
	}
	f := newFixture(t)
	f.cfg.Drainer, f.cfg.Log, f.cfg.Clock, f.cfg.Registry = nil, nil, nil, nil
	c, err := New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.cfg.Drainer.(KubectlDrainer); !ok || c.cfg.Log == nil || c.cfg.Clock == nil || c.cfg.Registry == nil {
		t.Errorf("New left defaults unset: %+v", c.cfg)
	}
}

// endTerm ends the current leader's term as Lead does: its drains are
// cancelled and awaited, its queue shut down.
func (f *fixture) endTerm() {
	f.term.stopPreparations()
	f.term.queue.ShutDown()
	f.term = nil
}

func (f *fixture) stop() {
	if f.term != nil {
		f.endTerm()
	}
	f.cancel()
}

// catchUp fills the informer stores with the cluster as it is now, as the
// informers would once their watches deliver.
func (f *fixture) catchUp() {
	f.t.Helper()
	var nodes, records []any
	for _, n := range f.list(nodesGVR, "") {
		o, _ := trimNode(n)
		nodes = append(nodes, o)
	}
	for _, o := range f.list(recordsGVR, "") {
		records = append(records, o)
	}
	if err := f.nodes.Replace(nodes, ""); err != nil {
		f.t.Fatal(err)
	}
	if err := f.records.Replace(records, ""); err != nil {
		f.t.Fatal(err)
	}
	if f.kured != nil {
		var dss []any
		for _, ds := range f.list(daemonSetsGVR, f.cfg.KuredLock.Namespace) {
			if objectName(ds) == f.cfg.KuredLock.Name {
				o, _ := trimKured(ds)
				dss = append(dss, o)
			}
		}
		if err := f.kured.Replace(dss, ""); err != nil {
			f.t.Fatal(err)
		}
	}
	// What Lead's event handlers tell the read-your-writes caches.
	for _, o := range nodes {
		f.term.nodes.OnAddOrUpdate(o.(runtime.Object))
	}
}

// cacheStale puts nodes into the leader's informer store as they are given, as
// informers that have not delivered the latest writes yet.
func (f *fixture) cacheStale(nodes ...*corev1.Node) {
	f.t.Helper()
	for _, n := range nodes {
		o, _ := trimNode(n.DeepCopy())
		if err := f.nodes.Update(o); err != nil {
			f.t.Fatal(err)
		}
	}
}

func (f *fixture) list(gvr schema.GroupVersionResource, ns string) []runtime.Object {
	f.t.Helper()
	o, err := f.tracker.List(gvr, gvr.GroupVersion().WithKind(kinds[gvr.Resource]), ns)
	if err != nil {
		f.t.Fatal(err)
	}
	items, err := meta.ExtractList(o)
	if err != nil {
		f.t.Fatal(err)
	}
	return items
}

var kinds = map[string]string{"nodes": "Node", "configmaps": "ConfigMap", "pods": "Pod", "events": "Event", "daemonsets": "DaemonSet", "tokenrollouts": "TokenRollout"}

// sync runs one reconciliation on stores that caught up with the cluster
// and returns when the coordinator asks to run again (0: on a change).
func (f *fixture) sync() time.Duration {
	f.t.Helper()
	d, err := f.syncErr()
	if err != nil {
		f.t.Fatalf("sync: %v", err)
	}
	return d
}

// syncErr is sync returning the error.
func (f *fixture) syncErr() (time.Duration, error) {
	f.t.Helper()
	if f.term == nil {
		f.lead()
	}
	f.catchUp()
	return f.term.sync(f.ctx)
}

// syncStale runs one reconciliation on the stores as they are, as a
// leader whose informers have not delivered the latest writes yet.
func (f *fixture) syncStale() (time.Duration, error) {
	f.t.Helper()
	if f.term == nil {
		f.lead()
	}
	return f.term.sync(f.ctx)
}

// awaitDrainEnd waits until the background drain or eviction the last
// sync started has ended and asked for another sync, as it would through
// the work queue.
func (f *fixture) awaitDrainEnd() {
	f.t.Helper()
	got := make(chan struct{})
	q := f.term.queue
	go func() {
		if k, quit := q.Get(); !quit {
			q.Done(k)
		}
		close(got)
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		f.t.Fatal("the drain did not end")
	}
}

// apiWrite is one write the fake API server received, decoded.
type apiWrite struct {
	Verb        string `json:"verb"`
	Resource    string `json:"resource"`
	Subresource string `json:"subresource,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name"`
	// A Node patch: the node-state annotation (StateRemoved: set to null),
	// spec.unschedulable, the request annotation, any other field.
	NodeState     *protocol.NodeState `json:"nodeState,omitempty"`
	StateRemoved  bool                `json:"stateRemoved,omitempty"`
	Unschedulable *bool               `json:"unschedulable,omitempty"`
	Request       *protocol.Request   `json:"request,omitempty"`
	// RequestCleared: the request annotation set to null.
	RequestCleared bool           `json:"requestCleared,omitempty"`
	Other          map[string]any `json:"other,omitempty"`
	// A TokenRollout write: the rollout record after it (a create and
	// the status write after it are one write, "create").
	State *State `json:"state,omitempty"`
}

func (w apiWrite) String() string {
	b, _ := json.Marshal(w)
	return string(b)
}

// writes returns the writes received since the last call. Every Node patch
// must be a JSON merge patch carrying the resourceVersion the decision was
// taken on.
func (f *fixture) writes() []apiWrite {
	f.t.Helper()
	acts := f.fake.Actions()
	var out []apiWrite
	for i, a := range acts[f.seen:] {
		w := apiWrite{Verb: a.GetVerb(), Resource: a.GetResource().Resource, Subresource: a.GetSubresource(), Namespace: a.GetNamespace()}
		if w.Resource == "tokenrollouts" {
			f.snapMu.Lock()
			st, ok := f.snaps[f.seen+i]
			f.snapMu.Unlock()
			if !ok {
				continue // refused
			}
			if w.Verb == "delete" {
				w.Name = a.(clienttesting.DeleteAction).GetName()
				out = append(out, w)
				continue
			}
			w.Name = objectName(a.(clienttesting.CreateAction).GetObject())
			if st.Start != nil && st.Start.Name == startName {
				st.Start.Name = "" // as the tests' states say it
			}
			w.State = &st
			if n := len(out); n > 0 && w.Subresource == "status" && out[n-1].Verb == "create" && out[n-1].Resource == "tokenrollouts" && out[n-1].Name == w.Name {
				out[n-1].State = &st
				continue
			}
			out = append(out, w)
			continue
		}
		switch a := a.(type) {
		case clienttesting.PatchAction:
			w.Name = a.GetName()
			f.decodeNodePatch(&w, a)
		case clienttesting.CreateAction: // and UpdateAction, the same interface
			w.Name = objectName(a.GetObject())
		case clienttesting.DeleteAction:
			w.Name = a.GetName()
		default:
			continue
		}
		out = append(out, w)
	}
	f.seen = len(acts)
	return out
}

func objectName(o runtime.Object) string {
	m, err := meta.Accessor(o)
	if err != nil {
		return ""
	}
	return m.GetName()
}

func (f *fixture) decodeNodePatch(w *apiWrite, a clienttesting.PatchAction) {
	f.t.Helper()
	if a.GetPatchType() != types.MergePatchType {
		f.t.Errorf("patch of %s/%s is a %s, not a JSON merge patch", w.Resource, a.GetName(), a.GetPatchType())
		return
	}
	var p map[string]any
	if err := json.Unmarshal(a.GetPatch(), &p); err != nil {
		f.t.Errorf("patch of %s/%s: %v", w.Resource, a.GetName(), err)
		return
	}
	md, _ := p["metadata"].(map[string]any)
	if rv, _ := md["resourceVersion"].(string); rv == "" {
		f.t.Errorf("patch of %s/%s carries no resourceVersion precondition: %s", w.Resource, a.GetName(), a.GetPatch())
	}
	delete(md, "resourceVersion")
	ann, _ := md["annotations"].(map[string]any)
	if v, ok := ann[protocol.AnnotationNodeState]; ok {
		if v == nil {
			w.StateRemoved = true
		} else if s, err := protocol.ParseNodeState(fmt.Sprint(v)); err != nil {
			f.t.Error(err)
		} else {
			w.NodeState = &s
		}
		delete(ann, protocol.AnnotationNodeState)
	}
	if v, ok := ann[protocol.AnnotationRequest]; ok && v == nil {
		w.RequestCleared = true
		delete(ann, protocol.AnnotationRequest)
	} else if ok {
		r, err := protocol.ParseRequest(fmt.Sprint(v))
		if err != nil {
			f.t.Error(err)
		}
		w.Request = &r
		delete(ann, protocol.AnnotationRequest)
	}
	if len(ann) == 0 {
		delete(md, "annotations")
	}
	if len(md) == 0 {
		delete(p, "metadata")
	}
	if spec, ok := p["spec"].(map[string]any); ok {
		if u, ok := spec["unschedulable"].(bool); ok {
			w.Unschedulable = &u
			delete(spec, "unschedulable")
		}
		if len(spec) == 0 {
			delete(p, "spec")
		}
	}
	if len(p) > 0 {
		w.Other = p
	}
}

// takeEvents returns the Events recorded since the last call, each as
// "Type Reason note".
func (f *fixture) takeEvents() []string {
	if f.events == nil {
		return nil
	}
	var out []string
	for {
		select {
		case e := <-f.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// node reads a Node as the cluster holds it.
func (f *fixture) node(name string) *corev1.Node {
	f.t.Helper()
	o, err := f.tracker.Get(nodesGVR, "", name)
	if err != nil {
		f.t.Fatal(err)
	}
	return o.(*corev1.Node)
}

// updateNode changes a Node as another writer (the agent, the kubelet, an
// administrator) would; the coordinator's action log does not see it.
func (f *fixture) updateNode(name string, change func(*corev1.Node)) {
	f.t.Helper()
	n := f.node(name)
	change(n)
	if err := f.tracker.Update(nodesGVR, n, ""); err != nil {
		f.t.Fatal(err)
	}
}

// watchSees delivers a Node update to the leader's event handler, as its
// informer would: a later sync may see only the newest version.
func (f *fixture) watchSees(oldNode, newNode *corev1.Node) {
	f.t.Helper()
	if f.term == nil {
		f.lead()
	}
	f.term.nodeUpdated(oldNode, newNode)
}

// state reads the rollout record as the cluster holds it.
func (f *fixture) state() State {
	f.t.Helper()
	return StateOf(f.recordObjects())
}

func (f *fixture) recordObjects() []*v1alpha1.TokenRollout {
	var out []*v1alpha1.TokenRollout
	for _, o := range f.list(recordsGVR, "") {
		out = append(out, o.(*v1alpha1.TokenRollout))
	}
	return out
}

// serveRecords is the tokenroll.io API: the request is logged with the
// others and served from the same tracker, with what the real API server
// does to a CRD with a status subresource (a create drops the status and
// sets generation 1; a status write keeps the spec; a spec change bumps
// the generation), and the record after each write is kept for writes.
func (f *fixture) serveRecords(a clienttesting.Action) (bool, runtime.Object, error) {
	if a.GetResource() != recordsGVR {
		return false, nil, nil
	}
	if ca, ok := a.(clienttesting.CreateAction); ok && (a.GetVerb() == "create" || a.GetVerb() == "update") {
		o := ca.GetObject().(*v1alpha1.TokenRollout).DeepCopy()
		cur, err := f.tracker.Get(recordsGVR, "", o.Name)
		switch {
		case a.GetVerb() == "create":
			o.Status, o.Generation, o.CreationTimestamp = v1alpha1.TokenRolloutStatus{}, 1, metav1.Time{Time: f.clock.Now()}
		case err != nil:
		case a.GetSubresource() == "status":
			c := cur.(*v1alpha1.TokenRollout)
			o.Spec, o.Generation, o.Labels, o.Annotations = c.Spec, c.Generation, c.Labels, c.Annotations
		default:
			c := cur.(*v1alpha1.TokenRollout)
			o.Status, o.Generation = c.Status, c.Generation
			if !equality.Semantic.DeepEqual(o.Spec, c.Spec) {
				o.Generation++
			}
		}
		if a.GetVerb() == "create" {
			a = clienttesting.NewRootCreateAction(recordsGVR, o)
		} else {
			a = clienttesting.NewRootUpdateSubresourceAction(recordsGVR, a.GetSubresource(), o)
		}
	}
	obj, err := f.fake.Invokes(a, nil)
	if err == nil && (a.GetVerb() == "create" || a.GetVerb() == "update" || a.GetVerb() == "delete") {
		st := StateOf(f.recordObjects())
		f.snapMu.Lock()
		f.snaps[len(f.fake.Actions())-1] = st
		f.snapMu.Unlock()
	}
	return true, obj, err
}

// badLabelSelector passes the schema and is no valid selector.
var badLabelSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: metav1.LabelSelectorOpIn}}}

// stateSeed stands, among a fixture's objects, for the TokenRollouts
// holding a state (stateConfigMap).
type stateSeed struct {
	metav1.TypeMeta
	st State
}

func (s *stateSeed) DeepCopyObject() runtime.Object { c := *s; return &c }

// stateConfigMap seeds a fixture with the TokenRollouts holding st.
func stateConfigMap(st State) runtime.Object { return &stateSeed{st: st} }

// editState changes the rollout record as a person and the coordinator
// before would have (putState); the action log does not see it.
func (f *fixture) editState(change func(*State)) {
	f.t.Helper()
	st := f.state()
	change(&st)
	f.putState(st)
}

// putState makes the cluster's TokenRollouts hold st: the rollouts' status
// as the coordinator writes it; a start request, steering and retries as
// the CLI writes the spec.
func (f *fixture) putState(st State) {
	f.t.Helper()
	get := func(name string) *v1alpha1.TokenRollout {
		o, err := f.tracker.Get(recordsGVR, "", name)
		if err != nil {
			return nil
		}
		return o.(*v1alpha1.TokenRollout).DeepCopy()
	}
	put := func(o *v1alpha1.TokenRollout) {
		var err error
		if get(o.Name) == nil {
			err = f.tracker.Add(o)
		} else {
			o.ResourceVersion = ""
			err = f.tracker.Update(recordsGVR, o, "")
		}
		if err != nil {
			f.t.Fatal(err)
		}
	}
	var newest string
	for _, r := range []*Rollout{st.Last, st.Rollout} {
		if r == nil {
			continue
		}
		o := get(r.ID)
		if o == nil {
			o = &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: r.ID, Generation: 1, CreationTimestamp: metav1.Time{Time: r.CreatedAt}},
				Spec: v1alpha1.TokenRolloutSpec{State: v1alpha1.StateRunning, DryRun: r.DryRun, PolicyName: r.Policy}}
			o.Status.ObservedGeneration = 1
			switch r.Phase {
			case RolloutPaused:
				o.Spec.State = v1alpha1.StatePaused
			case RolloutCancelled:
				o.Spec.State = v1alpha1.StateCancelled
			}
		}
		setStatus(&o.Status, r, f.clock.Now())
		o.Status.Waiting = nil
		put(o)
		newest = r.ID
	}
	if req := st.Start; req != nil {
		name := cmp.Or(req.Name, startName)
		o := get(name)
		if o == nil {
			o = &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 1, CreationTimestamp: metav1.Time{Time: req.RequestedAt},
				Annotations: map[string]string{AnnotationRequestedBy: req.RequestedBy}},
				Spec: v1alpha1.TokenRolloutSpec{State: v1alpha1.StateRunning, Strategy: v1alpha1.Strategy(req.Strategy), DryRun: req.DryRun, NodeNames: req.Nodes, PolicyName: req.Policy}}
			if req.Selector != "" {
				sel, err := metav1.ParseToLabelSelector(req.Selector)
				if err != nil {
					// What the schema lets through and the coordinator
					// refuses: In with no values.
					sel = badLabelSelector
				}
				o.Spec.NodeSelector = sel
			}
			put(o)
		}
	}
	if req := st.Steer; req != nil {
		o := get(cmp.Or(req.Rollout, newest))
		if o == nil {
			f.t.Fatalf("steering %s: no such TokenRollout", req.Rollout)
		}
		o.Spec.State = map[Verb]v1alpha1.DesiredState{VerbPause: v1alpha1.StatePaused, VerbResume: v1alpha1.StateRunning, VerbCancel: v1alpha1.StateCancelled}[req.Verb]
		if req.Verb == VerbResume {
			o.Spec.ResumeTime = &metav1.Time{Time: f.clock.Now()}
		}
		o.Generation++
		o.Annotations = map[string]string{AnnotationRequestedBy: req.RequestedBy}
		if !req.RequestedAt.IsZero() {
			o.Annotations[AnnotationRequestedAt] = req.RequestedAt.Format(time.RFC3339)
		}
		put(o)
	}
	for _, rq := range st.Retry {
		o := get(cmp.Or(rq.Rollout, newest))
		if o == nil {
			f.t.Fatalf("retry of %s: no TokenRollout to carry it", rq.Node)
		}
		if !slices.ContainsFunc(o.Spec.Retry, func(x v1alpha1.RetryRequest) bool {
			return x.Node == rq.Node && x.RequestTime.Time.Equal(rq.RequestedAt)
		}) {
			o.Spec.Retry = append(o.Spec.Retry, v1alpha1.RetryRequest{Node: rq.Node, RequestTime: metav1.Time{Time: rq.RequestedAt}, RequestedBy: rq.RequestedBy})
			o.Generation++
			put(o)
		}
	}
	if w := st.Waiting; w != nil {
		holder := newest
		if st.Active() == nil && st.Start != nil {
			holder = cmp.Or(st.Start.Name, startName)
		}
		if o := get(holder); o != nil {
			o.Status.Waiting = &v1alpha1.RolloutWait{Reason: w.Reason, Message: w.Message, Since: metav1.Time{Time: w.Since}}
			put(o)
		}
	}
}

// setIssuer changes what OIDC discovery answers ("": it fails).
func (f *fixture) setIssuer(iss string) {
	f.issuerMu.Lock()
	f.issuer = iss
	f.issuerMu.Unlock()
}

func (f *fixture) serveOIDC(req *http.Request) (*http.Response, error) {
	f.issuerMu.Lock()
	iss := f.issuer
	f.issuerMu.Unlock()
	status, body := http.StatusOK, fmt.Sprintf(`{"issuer":%q,"jwks_uri":"https://kubernetes.default.svc/openid/v1/jwks"}`, iss)
	if req.URL.Path != "/.well-known/openid-configuration" {
		status, body = http.StatusNotFound, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`
	} else if iss == "" {
		status, body = http.StatusInternalServerError, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"InternalError","code":500}`
	}
	return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), Request: req}, nil
}

// evictThroughAPI makes the fake API server's eviction subresource delete
// the pod, as the real one does when no PodDisruptionBudget refuses.
func (f *fixture) evictThroughAPI() {
	f.fake.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev, ok := a.(clienttesting.CreateAction).GetObject().(*policyv1.Eviction)
		if !ok {
			return true, nil, apierrors.NewBadRequest("not an Eviction")
		}
		return true, ev, f.tracker.Delete(podsGVR, ev.Namespace, ev.Name)
	})
}

// listPodsOnNode honours the spec.nodeName field selector kubectl's drain
// lists pods with; the fake clientset ignores field selectors.
func (f *fixture) listPodsOnNode(a clienttesting.Action) (bool, runtime.Object, error) {
	la, ok := a.(clienttesting.ListAction)
	if !ok || la.GetListRestrictions().Fields == nil || la.GetListRestrictions().Fields.Empty() {
		return false, nil, nil
	}
	sel := la.GetListRestrictions().Fields
	o, err := f.tracker.List(podsGVR, corev1.SchemeGroupVersion.WithKind("Pod"), a.GetNamespace())
	if err != nil {
		return true, nil, err
	}
	list := o.(*corev1.PodList)
	kept := list.Items[:0]
	for _, p := range list.Items {
		if sel.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName, "metadata.name": p.Name, "metadata.namespace": p.Namespace}) {
			kept = append(kept, p)
		}
	}
	list.Items = kept
	return true, list, nil
}

// rvTracker gives every write a new resourceVersion and refuses a write
// whose object carries a resourceVersion other than the stored one, as the
// API server does.
type rvTracker struct {
	clienttesting.ObjectTracker
	mu sync.Mutex
	rv int
}

// stamp sets a new resourceVersion on obj in place: the fake clientset's
// reactions return the object they handed the tracker.
func (t *rvTracker) stamp(obj runtime.Object) (runtime.Object, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	t.rv++
	m.SetResourceVersion(strconv.Itoa(t.rv))
	return obj, nil
}

// precondition fails with a conflict when obj names a resourceVersion
// that is not the stored object's.
func (t *rvTracker) precondition(gvr schema.GroupVersionResource, obj runtime.Object, ns string) error {
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	if m.GetResourceVersion() == "" {
		return nil
	}
	cur, err := t.Get(gvr, ns, m.GetName())
	if err != nil {
		return err
	}
	cm, _ := meta.Accessor(cur)
	if cm.GetResourceVersion() != m.GetResourceVersion() {
		return apierrors.NewConflict(gvr.GroupResource(), m.GetName(),
			fmt.Errorf("the object has been modified (resourceVersion %s, not %s)", cm.GetResourceVersion(), m.GetResourceVersion()))
	}
	return nil
}

func (t *rvTracker) Add(obj runtime.Object) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	obj, err := t.stamp(obj.DeepCopyObject())
	if err != nil {
		return err
	}
	return t.ObjectTracker.Add(obj)
}

func (t *rvTracker) Create(gvr schema.GroupVersionResource, obj runtime.Object, ns string, opts ...metav1.CreateOptions) error {
	return t.write(gvr, obj, ns, false, func(o runtime.Object) error { return t.ObjectTracker.Create(gvr, o, ns, opts...) })
}

func (t *rvTracker) Update(gvr schema.GroupVersionResource, obj runtime.Object, ns string, opts ...metav1.UpdateOptions) error {
	return t.write(gvr, obj, ns, true, func(o runtime.Object) error { return t.ObjectTracker.Update(gvr, o, ns, opts...) })
}

// Patch receives the patched object: a resourceVersion in the patch has
// replaced the stored one.
func (t *rvTracker) Patch(gvr schema.GroupVersionResource, obj runtime.Object, ns string, opts ...metav1.PatchOptions) error {
	return t.write(gvr, obj, ns, true, func(o runtime.Object) error { return t.ObjectTracker.Patch(gvr, o, ns, opts...) })
}

// write checks obj's resourceVersion precondition (when check), gives it
// a new resourceVersion and stores it.
func (t *rvTracker) write(gvr schema.GroupVersionResource, obj runtime.Object, ns string, check bool, store func(runtime.Object) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if check {
		if err := t.precondition(gvr, obj, ns); err != nil {
			return err
		}
	}
	obj, err := t.stamp(obj)
	if err != nil {
		return err
	}
	return store(obj)
}

// clientWithOIDC is the fake clientset with a discovery client that serves
// the OIDC discovery document (the fake's REST client is nil).
type clientWithOIDC struct {
	*fake.Clientset
	disc *oidcDiscovery
}

func (c clientWithOIDC) Discovery() discovery.DiscoveryInterfaces { return c.disc }

type oidcDiscovery struct {
	*fakediscovery.FakeDiscovery
	rest rest.Interface
}

func (d *oidcDiscovery) RESTClient() rest.Interface { return d.rest }

// FakeGate is a revision gate a test opens and closes; the real providers
// are tested against an API server on their own. It is exported for the
// end-to-end tests (package coordinator_test) too.
type FakeGate struct {
	mu      sync.Mutex
	st      GateState
	changed func()
}

// NewFakeGate is a gate in state st.
func NewFakeGate(st GateState) *FakeGate { return &FakeGate{st: st} }

func (g *FakeGate) Start(_ context.Context, changed func()) error {
	g.mu.Lock()
	g.changed = changed
	g.mu.Unlock()
	return nil
}

func (g *FakeGate) State() GateState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st
}

// Set changes the gate's state and tells the coordinator, as a gate does.
func (g *FakeGate) Set(st GateState) {
	g.mu.Lock()
	g.st = st
	changed := g.changed
	g.mu.Unlock()
	if changed != nil {
		changed()
	}
}

// drainCall is one call of the Drainer.
type drainCall struct {
	Node    string        // Drain
	Pods    []string      // Evict: namespace/name
	Timeout time.Duration // what the coordinator allowed
	// The rest of the options: zero where the flags apply.
	GracePeriodSeconds *int64
	EvictUnmanaged     bool
	ForceDelete        []protocol.PodSelector
}

// fakeDrainer records its calls and ends each with err, at once or, when
// hold is set, once release is called (or the call's context ends).
type fakeDrainer struct {
	mu      sync.Mutex
	calls   []drainCall
	err     error
	hold    bool
	release chan struct{}
}

func (d *fakeDrainer) Drain(ctx context.Context, node string, opts DrainOptions) error {
	return d.call(ctx, drainCall{Node: node, Timeout: opts.Timeout, GracePeriodSeconds: opts.GracePeriodSeconds, EvictUnmanaged: opts.EvictUnmanaged, ForceDelete: opts.ForceDelete})
}

func (d *fakeDrainer) Evict(ctx context.Context, pods []corev1.Pod, opts DrainOptions) error {
	c := drainCall{Timeout: opts.Timeout, GracePeriodSeconds: opts.GracePeriodSeconds, EvictUnmanaged: opts.EvictUnmanaged, ForceDelete: opts.ForceDelete}
	for _, p := range pods {
		c.Pods = append(c.Pods, p.Namespace+"/"+p.Name)
	}
	return d.call(ctx, c)
}

func (d *fakeDrainer) call(ctx context.Context, c drainCall) error {
	d.mu.Lock()
	d.calls = append(d.calls, c)
	hold, release, err := d.hold, d.release, d.err
	d.mu.Unlock()
	if hold {
		select {
		case <-release:
		case <-ctx.Done():
			return fmt.Errorf("drain stopped: %w", ctx.Err())
		}
		d.mu.Lock()
		err = d.err
		d.mu.Unlock()
	}
	return err
}

// holdCalls makes the next calls wait for releaseCalls.
func (d *fakeDrainer) holdCalls() {
	d.mu.Lock()
	d.hold, d.release = true, make(chan struct{})
	d.mu.Unlock()
}

// releaseCalls ends the held calls with err.
func (d *fakeDrainer) releaseCalls(err error) {
	d.mu.Lock()
	d.hold, d.err = false, err
	close(d.release)
	d.mu.Unlock()
}

func (d *fakeDrainer) takeCalls() []drainCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.calls
	d.calls = nil
	return c
}
