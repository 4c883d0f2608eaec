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
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
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
)

var (
	nodesGVR      = corev1.SchemeGroupVersion.WithResource("nodes")
	configMapsGVR = corev1.SchemeGroupVersion.WithResource("configmaps")
	podsGVR       = corev1.SchemeGroupVersion.WithResource("pods")
	daemonSetsGVR = appsv1.SchemeGroupVersion.WithResource("daemonsets")
)

// fixture is one fake cluster and the coordinator leading it.
type fixture struct {
	t       *testing.T
	ctx     context.Context
	cancel  context.CancelFunc
	fake    *fake.Clientset
	tracker *rvTracker
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

	// term is the current leader's term (nil: none yet); nodes and cms
	// stand for its informers' stores.
	term  *term
	nodes cache.Store
	cms   cache.Store
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
	f.tracker = &rvTracker{ObjectTracker: f.fake.Tracker()}
	f.fake.PrependReactor("*", "*", clienttesting.ObjectReaction(f.tracker))
	f.fake.PrependReactor("list", "pods", f.listPodsOnNode)
	rc := &restfake.RESTClient{NegotiatedSerializer: scheme.Codecs.WithoutConversion(), Client: restfake.CreateHTTPClient(f.serveOIDC)}
	f.client = clientWithOIDC{Clientset: f.fake, disc: &oidcDiscovery{FakeDiscovery: &fakediscovery.FakeDiscovery{Fake: &f.fake.Fake}, rest: rc}}
	for _, o := range objs {
		if err := f.tracker.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	f.cfg = Config{Client: f.client, Namespace: testNS, Gate: f.gate, Strategy: Reboot, MaxUnavailable: intstr.FromInt32(1),
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
	f.cms = cache.NewStore(cache.MetaNamespaceKeyFunc)
	f.term = c.newTerm(klog.Background(), f.nodes, f.cms)
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
	var nodes, cms []any
	for _, n := range f.list(nodesGVR, "") {
		o, _ := trimNode(n)
		nodes = append(nodes, o)
	}
	for _, cm := range f.list(configMapsGVR, testNS) {
		cms = append(cms, cm)
	}
	if err := f.nodes.Replace(nodes, ""); err != nil {
		f.t.Fatal(err)
	}
	if err := f.cms.Replace(cms, ""); err != nil {
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
	for _, o := range cms {
		f.term.cm.OnAddOrUpdate(o.(runtime.Object))
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

var kinds = map[string]string{"nodes": "Node", "configmaps": "ConfigMap", "pods": "Pod", "events": "Event", "daemonsets": "DaemonSet"}

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
	// A ConfigMap write: the rollout state.
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
	for _, a := range acts[f.seen:] {
		w := apiWrite{Verb: a.GetVerb(), Resource: a.GetResource().Resource, Subresource: a.GetSubresource(), Namespace: a.GetNamespace()}
		switch a := a.(type) {
		case clienttesting.PatchAction:
			w.Name = a.GetName()
			f.decodeNodePatch(&w, a)
		case clienttesting.CreateAction: // and UpdateAction, the same interface
			w.Name = objectName(a.GetObject())
			w.State = decodeCM(f.t, a.GetObject())
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

func decodeCM(t *testing.T, o runtime.Object) *State {
	cm, ok := o.(*corev1.ConfigMap)
	if !ok {
		return nil
	}
	st, err := DecodeState(cm)
	if err != nil {
		t.Errorf("ConfigMap %s written with state that does not decode: %v", cm.Name, err)
	}
	return &st
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

// state reads the rollout state as the cluster holds it.
func (f *fixture) state() State {
	f.t.Helper()
	o, err := f.tracker.Get(configMapsGVR, testNS, ConfigMapName)
	if apierrors.IsNotFound(err) {
		return State{}
	}
	if err != nil {
		f.t.Fatal(err)
	}
	st, err := DecodeState(o.(*corev1.ConfigMap))
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// editState changes the rollout state as `tokenroll rollout` does (a
// read-modify-write of the ConfigMap); the action log does not see it.
func (f *fixture) editState(change func(*State)) {
	f.t.Helper()
	st := f.state()
	change(&st)
	cm := stateConfigMap(st)
	o, err := f.tracker.Get(configMapsGVR, testNS, ConfigMapName)
	if err == nil {
		cm.ResourceVersion = o.(*corev1.ConfigMap).ResourceVersion
		err = f.tracker.Update(configMapsGVR, cm, testNS)
	} else if apierrors.IsNotFound(err) {
		err = f.tracker.Add(cm)
	}
	if err != nil {
		f.t.Fatal(err)
	}
}

// stateConfigMap is the ConfigMap holding st.
func stateConfigMap(st State) *corev1.ConfigMap {
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		panic(err)
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: testNS}, Data: map[string]string{StateKey: string(raw)}}
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

func (d *fakeDrainer) Drain(ctx context.Context, node string, timeout time.Duration) error {
	return d.call(ctx, drainCall{Node: node, Timeout: timeout})
}

func (d *fakeDrainer) Evict(ctx context.Context, pods []corev1.Pod, timeout time.Duration) error {
	c := drainCall{Timeout: timeout}
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
