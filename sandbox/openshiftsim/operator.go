package openshiftsim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/openshift"
)

// ControlPlane is what the operator needs of a control plane: its API
// servers, the --service-account-issuer list each runs with (nil while one is
// down), and a way to restart one with a new list.
// *controlplane.ControlPlane implements it.
type ControlPlane interface {
	APIServers() int
	Issuers(i int) []string
	RestartAPIServer(ctx context.Context, i int, issuers []string) error
}

// Config says what the simulated operator manages and how.
type Config struct {
	// ControlPlane runs the API servers the operator rolls (required).
	ControlPlane ControlPlane
	// Client reads Authentication/cluster and writes KubeAPIServer/cluster
	// (required). The CRDs must be installed; see InstallCRDs.
	Client dynamic.Interface
	// NodeNames are the control-plane node names shown in nodeStatuses, one
	// per API server and in the same order, e.g. master-0, master-1, master-2
	// (required).
	NodeNames []string
	// StartRevision is the revision a new KubeAPIServer/cluster settles at
	// (default DefaultStartRevision, 11). An existing one keeps its own
	// revision when that is higher.
	StartRevision int32
	// DefaultIssuer is what an empty .spec.serviceAccountIssuer means
	// (default: the issuer API server 0 signs with when Run starts).
	DefaultIssuer string
	// TrustWindow is how long the previous issuer stays trusted after a
	// change (OpenShift: 24h). 0 drops it in the same rollout.
	TrustWindow time.Duration
	// KeepExpiredIssuers turns off pruning. By default, once a previous
	// issuer's expirationTime passes (on Clock), the operator rolls a new
	// revision that no longer trusts it, as OpenShift does; with
	// KeepExpiredIssuers it stays trusted, and listed, until the next change.
	KeepExpiredIssuers bool
	// RestartTimeout bounds one API server's restart (default
	// DefaultRestartTimeout). A restart that has begun is finished even
	// when Run's context ends, so that no server is left stopped.
	RestartTimeout time.Duration
	// Clock decides when trusted issuers expire and stamps
	// lastTransitionTime (default: the real clock).
	Clock clock.Clock
	// Log receives the operator's log (default: none).
	Log *zap.Logger
	// Observer, when set, is told of every step. It is called on the
	// operator's goroutine, which waits for it: a test can look at the
	// cluster at each step while nothing moves. It must not block on the
	// operator.
	Observer func(Event)
}

// EventKind names a step of the operator.
type EventKind string

const (
	// EventSettled: KubeAPIServer/cluster shows every node at the current
	// revision; the operator now follows Authentication/cluster.
	EventSettled EventKind = "Settled"
	// EventRevisionStarted: latestAvailableRevision and
	// serviceAccountIssuers name the new revision; no node runs it yet.
	EventRevisionStarted EventKind = "RevisionStarted"
	// EventNodeInstalling: the node's targetRevision is set; its API server
	// is about to restart.
	EventNodeInstalling EventKind = "NodeInstalling"
	// EventNodeInstalled: the API server restarted with the revision's
	// issuers and is ready; the node's currentRevision is the revision.
	EventNodeInstalled EventKind = "NodeInstalled"
	// EventRolloutDone: every node runs the revision.
	EventRolloutDone EventKind = "RolloutDone"
)

// Reasons a rollout starts, in Event.Reason and the log.
const (
	RolloutIssuerChanged = "IssuerChanged"
	RolloutIssuerExpired = "PreviousIssuerExpired"
	RolloutServersDiffer = "APIServerIssuersDiffer"
)

// DefaultRestartTimeout bounds one API server's restart unless
// Config.RestartTimeout says otherwise: stopping it (up to 20 s) and starting
// it again until its /readyz answers ok.
const DefaultRestartTimeout = 3 * time.Minute

// Event is one step of the operator.
type Event struct {
	Kind     EventKind
	Revision int32
	// Reason says why the revision was rolled (RevisionStarted and later).
	Reason string
	// Node and Index name the node and its API server (node events only).
	Node  string
	Index int
	// Issuers is the --service-account-issuer list the revision installs.
	Issuers []string
	// Status is KubeAPIServer/cluster's status as this step wrote it.
	Status openshift.KubeAPIServerStatus
}

// Operator is the simulated kube-apiserver operator.
type Operator struct {
	cfg     Config
	cp      ControlPlane
	log     *zap.Logger
	clock   clock.Clock
	kas     dynamic.ResourceInterface
	auth    dynamic.ResourceInterface
	changed chan struct{}
	ready   chan struct{}
	started atomic.Bool

	// Owned by Run's goroutine.
	authStore cache.Store
	revision  int32
	current   []int32
	target    []int32
	issuers   issuerState
}

// New checks cfg and returns an operator; Run starts it.
func New(cfg Config) (*Operator, error) {
	var errs []error
	if cfg.ControlPlane == nil {
		errs = append(errs, errors.New("Config.ControlPlane is nil; pass the *controlplane.ControlPlane whose API servers the operator rolls"))
	}
	if cfg.Client == nil {
		errs = append(errs, errors.New("Config.Client is nil; pass a dynamic client, e.g. dynamic.NewForConfig(cp.AdminConfig())"))
	}
	if len(cfg.NodeNames) == 0 {
		errs = append(errs, errors.New("Config.NodeNames is empty; name one control-plane node per API server, e.g. master-0"))
	} else if cfg.ControlPlane != nil && len(cfg.NodeNames) != cfg.ControlPlane.APIServers() {
		errs = append(errs, fmt.Errorf("Config.NodeNames has %d names but the control plane has %d API servers; give one name per API server", len(cfg.NodeNames), cfg.ControlPlane.APIServers()))
	}
	seen := map[string]bool{}
	for i, n := range cfg.NodeNames {
		switch {
		case n == "":
			errs = append(errs, fmt.Errorf("Config.NodeNames[%d] is empty", i))
		case seen[n]:
			errs = append(errs, fmt.Errorf("Config.NodeNames[%d] repeats %q; node names must be unique", i, n))
		}
		seen[n] = true
	}
	if cfg.StartRevision < 0 {
		errs = append(errs, fmt.Errorf("Config.StartRevision is %d; it must be positive (0 means %d)", cfg.StartRevision, DefaultStartRevision))
	}
	if cfg.TrustWindow < 0 {
		errs = append(errs, fmt.Errorf("Config.TrustWindow is %s; it must be 0 (drop the previous issuer at once) or positive", cfg.TrustWindow))
	}
	if cfg.RestartTimeout < 0 {
		errs = append(errs, fmt.Errorf("Config.RestartTimeout is %s; it must be positive (0 means %s)", cfg.RestartTimeout, DefaultRestartTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("openshiftsim: invalid Config: %w", err)
	}
	if cfg.StartRevision == 0 {
		cfg.StartRevision = DefaultStartRevision
	}
	if cfg.RestartTimeout == 0 {
		cfg.RestartTimeout = DefaultRestartTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	cfg.NodeNames = slices.Clone(cfg.NodeNames)
	return &Operator{
		cfg:     cfg,
		cp:      cfg.ControlPlane,
		log:     cfg.Log,
		clock:   cfg.Clock,
		kas:     cfg.Client.Resource(openshift.KubeAPIServerResource),
		auth:    cfg.Client.Resource(openshift.AuthenticationResource),
		changed: make(chan struct{}, 1),
		ready:   make(chan struct{}),
		current: make([]int32, len(cfg.NodeNames)),
		target:  make([]int32, len(cfg.NodeNames)),
	}, nil
}

// Ready is closed once KubeAPIServer/cluster has settled and the operator
// follows Authentication/cluster.
func (o *Operator) Ready() <-chan struct{} { return o.ready }

// Run creates or adopts Authentication/cluster and KubeAPIServer/cluster,
// settles the latter, then rolls a new revision whenever the issuer changes
// or a previous issuer expires. It returns nil when ctx ends, and an error
// when the objects cannot be written or an API server cannot be restarted.
// Run may be called once.
func (o *Operator) Run(ctx context.Context) error {
	if !o.started.CompareAndSwap(false, true) {
		return errors.New("openshiftsim: Operator.Run called twice; make a new Operator with New")
	}
	if err := o.ensureAuthentication(ctx); err != nil {
		return ignoreCancel(ctx, err)
	}
	kas, err := o.ensureKubeAPIServer(ctx)
	if err != nil {
		return ignoreCancel(ctx, err)
	}

	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(o.cfg.Client, 0, metav1.NamespaceAll, func(lo *metav1.ListOptions) {
		lo.FieldSelector = "metadata.name=" + openshift.ClusterName
	})
	informer := factory.ForResource(openshift.AuthenticationResource).Informer()
	poke := func(any) {
		select {
		case o.changed <- struct{}{}:
		default:
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { poke(obj) },
		DeleteFunc: poke,
	}); err != nil {
		return err
	}
	informerCtx, stopInformers := context.WithCancel(ctx)
	factory.Start(informerCtx.Done())
	defer factory.Shutdown()
	defer stopInformers()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil
	}
	o.authStore = informer.GetStore()

	if err := o.settle(ctx, kas); err != nil {
		return ignoreCancel(ctx, err)
	}
	close(o.ready)
	return ignoreCancel(ctx, o.loop(ctx))
}

// ignoreCancel drops a failure that came after ctx ended: Run was told to
// stop, and stopping is not an error.
func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	return nil
}

func (o *Operator) ensureAuthentication(ctx context.Context) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": openshift.AuthenticationResource.GroupVersion().String(),
		"kind":       "Authentication",
		"metadata":   map[string]any{"name": openshift.ClusterName},
		"spec":       map[string]any{"serviceAccountIssuer": ""},
	}}
	err := o.retry(ctx, func() error {
		_, err := o.auth.Create(ctx, obj, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil // adopt it as it is
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("creating Authentication/%s: %w (are the CRDs installed? see InstallCRDs)", openshift.ClusterName, err)
	}
	return nil
}

func (o *Operator) ensureKubeAPIServer(ctx context.Context) (*unstructured.Unstructured, error) {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": openshift.KubeAPIServerResource.GroupVersion().String(),
		"kind":       "KubeAPIServer",
		"metadata":   map[string]any{"name": openshift.ClusterName},
		"spec": map[string]any{
			"managementState":  "Managed",
			"logLevel":         "Normal",
			"operatorLogLevel": "Normal",
		},
	}}
	var out *unstructured.Unstructured
	err := o.retry(ctx, func() error {
		created, err := o.kas.Create(ctx, obj, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			created, err = o.kas.Get(ctx, openshift.ClusterName, metav1.GetOptions{})
		}
		out = created
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating KubeAPIServer/%s: %w (are the CRDs installed? see InstallCRDs)", openshift.ClusterName, err)
	}
	return out, nil
}

// settle writes KubeAPIServer/cluster as OpenShift shows it at rest: every
// node at one revision, which trusts what the API servers trust now. An
// existing status keeps its revision (revisions only increase) and the
// expiration times of issuers it lists.
func (o *Operator) settle(ctx context.Context, kas *unstructured.Unstructured) error {
	existing, err := openshift.ParseKubeAPIServerStatus(kas)
	if err != nil {
		return err
	}
	running := o.cp.Issuers(0)
	if len(running) == 0 {
		return errors.New("kube-apiserver 0 is down, so the operator cannot tell which issuer the cluster uses; start the operator on a running control plane")
	}
	if o.cfg.DefaultIssuer == "" {
		o.cfg.DefaultIssuer = running[0]
	}
	now := o.clock.Now()
	o.issuers = issuerState{signing: running[0]}
	for _, name := range running[1:] {
		expires := now.Add(o.cfg.TrustWindow)
		for _, s := range existing.ServiceAccountIssuers {
			if s.Name == name && s.ExpirationTime != nil {
				expires = s.ExpirationTime.Time
			}
		}
		o.issuers.previous = append(o.issuers.previous, trustedIssuer{name: name, expires: truncate(expires)})
	}

	rev := max(o.cfg.StartRevision, existing.LatestAvailableRevision)
	known := map[string]openshift.NodeStatus{}
	for _, n := range existing.NodeStatuses {
		known[n.NodeName] = n
		rev = max(rev, n.CurrentRevision)
	}
	o.revision = rev
	missing := false
	for i, name := range o.cfg.NodeNames {
		n, ok := known[name]
		missing = missing || !ok
		o.current[i], o.target[i] = n.CurrentRevision, 0
	}
	if missing {
		// A nodeStatus may not be created with a revision: add the nodes
		// first, as OpenShift's node controller does.
		if _, err := o.writeStatus(ctx); err != nil {
			return err
		}
	}
	for i := range o.current {
		o.current[i] = rev
	}
	status, err := o.writeStatus(ctx)
	if err != nil {
		return err
	}
	o.log.Info("KubeAPIServer settled", zap.Int32("revision", rev), zap.Strings("issuers", o.issuers.flags()))
	o.emit(Event{Kind: EventSettled, Revision: rev, Issuers: o.issuers.flags(), Status: status})
	return nil
}

func (o *Operator) loop(ctx context.Context) error {
	for ctx.Err() == nil {
		now := o.clock.Now()
		servers := make([][]string, len(o.cfg.NodeNames))
		for i := range servers {
			servers[i] = o.cp.Issuers(i)
		}
		if plan, ok := nextRollout(o.issuers, o.desiredIssuer(), now, o.cfg.TrustWindow, o.cfg.KeepExpiredIssuers, servers); ok {
			if err := o.rollout(ctx, plan); err != nil {
				return err
			}
			continue
		}
		var timer clock.Timer
		var expired <-chan time.Time
		if at, ok := o.issuers.nextExpiry(); ok && !o.cfg.KeepExpiredIssuers {
			timer = o.clock.NewTimer(at.Sub(now))
			expired = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-o.changed:
		case <-expired:
		}
		if timer != nil {
			timer.Stop()
		}
	}
	return nil
}

// desiredIssuer is Authentication/cluster's .spec.serviceAccountIssuer, or
// the default when it is empty or the object is gone.
func (o *Operator) desiredIssuer() string {
	obj, ok, err := o.authStore.GetByKey(openshift.ClusterName)
	if err == nil && ok {
		if u, isU := obj.(*unstructured.Unstructured); isU {
			if iss, _, _ := unstructured.NestedString(u.Object, "spec", "serviceAccountIssuer"); iss != "" {
				return iss
			}
		}
	}
	return o.cfg.DefaultIssuer
}

// rollout installs a new revision on one node at a time, in node order, as
// OpenShift's installer controller does.
func (o *Operator) rollout(ctx context.Context, plan rolloutPlan) error {
	rev := o.revision + 1
	flags := plan.issuers.flags()
	o.revision, o.issuers = rev, plan.issuers
	log := o.log.With(zap.Int32("revision", rev))
	log.Info("revision rollout started", zap.String("reason", plan.reason), zap.Strings("issuers", flags))
	status, err := o.writeStatus(ctx)
	if err != nil {
		return err
	}
	o.emit(Event{Kind: EventRevisionStarted, Revision: rev, Reason: plan.reason, Issuers: flags, Status: status})

	for i, node := range o.cfg.NodeNames {
		o.target[i] = rev
		if status, err = o.writeStatus(ctx); err != nil {
			return err
		}
		log.Info("installing revision on node", zap.String("node", node), zap.Int("apiServer", i))
		o.emit(Event{Kind: EventNodeInstalling, Revision: rev, Reason: plan.reason, Node: node, Index: i, Issuers: flags, Status: status})

		// Once begun, a node's install is finished even if ctx ends: a
		// half-done restart would leave the API server stopped.
		installCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.cfg.RestartTimeout)
		start := time.Now() // wall time: Clock may be a test's fake one
		if err := o.cp.RestartAPIServer(installCtx, i, flags); err != nil {
			cancel()
			return fmt.Errorf("installing revision %d on node %s: restarting kube-apiserver %d with issuers %v: %w; the control plane has lost that server, restart the sandbox", rev, node, i, flags, err)
		}
		o.current[i], o.target[i] = rev, 0
		status, err = o.writeStatus(installCtx)
		cancel()
		if err != nil {
			return err
		}
		log.Info("node at revision", zap.String("node", node), zap.Int("apiServer", i), zap.Duration("restartTook", time.Since(start)))
		o.emit(Event{Kind: EventNodeInstalled, Revision: rev, Reason: plan.reason, Node: node, Index: i, Issuers: flags, Status: status})
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	log.Info("revision rollout done", zap.Strings("issuers", flags))
	o.emit(Event{Kind: EventRolloutDone, Revision: rev, Reason: plan.reason, Issuers: flags, Status: status})
	return nil
}

func (o *Operator) emit(e Event) {
	if o.cfg.Observer != nil {
		o.cfg.Observer(e)
	}
}

// writeStatus writes the operator's view into KubeAPIServer/cluster through
// the status subresource, keeping whatever else the status holds.
func (o *Operator) writeStatus(ctx context.Context) (openshift.KubeAPIServerStatus, error) {
	var out openshift.KubeAPIServerStatus
	err := o.retry(ctx, func() error {
		obj, err := o.kas.Get(ctx, openshift.ClusterName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := o.applyStatus(obj); err != nil {
			return err
		}
		updated, err := o.kas.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err != nil {
			return err
		}
		out, err = openshift.ParseKubeAPIServerStatus(updated)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("writing the status of KubeAPIServer/%s at revision %d: %w", openshift.ClusterName, o.revision, err)
	}
	return out, nil
}

func (o *Operator) applyStatus(obj *unstructured.Unstructured) error {
	status, _, err := unstructured.NestedMap(obj.Object, "status")
	if err != nil {
		return fmt.Errorf("KubeAPIServer/%s has a malformed status: %w", openshift.ClusterName, err)
	}
	if status == nil {
		status = map[string]any{}
	}
	status["latestAvailableRevision"] = int64(o.revision)

	// Keep what else a node's entry holds (lastFailedRevision and so on);
	// drop nodes the operator does not manage.
	old := map[string]map[string]any{}
	if list, ok := status["nodeStatuses"].([]any); ok {
		for _, item := range list {
			if m, ok := item.(map[string]any); ok {
				if name, ok := m["nodeName"].(string); ok {
					old[name] = m
				}
			}
		}
	}
	nodes := make([]any, len(o.cfg.NodeNames))
	view := make([]openshift.NodeStatus, len(o.cfg.NodeNames))
	for i, name := range o.cfg.NodeNames {
		m := old[name]
		if m == nil {
			m = map[string]any{"nodeName": name}
		}
		setOrDelete(m, "currentRevision", o.current[i])
		setOrDelete(m, "targetRevision", o.target[i])
		nodes[i] = m
		view[i] = openshift.NodeStatus{NodeName: name, CurrentRevision: o.current[i], TargetRevision: o.target[i]}
	}
	status["nodeStatuses"] = nodes

	conds, _ := status["conditions"].([]any)
	now := metav1.NewTime(o.clock.Now()).Rfc3339Copy()
	for _, c := range nodeInstallerConditions(view, o.revision) {
		at := -1
		for j, item := range conds {
			if m, ok := item.(map[string]any); ok && m["type"] == c.Type {
				at = j
				// The transition time moves only when the status does.
				if t, ok := m["lastTransitionTime"].(string); ok && m["status"] == c.Status {
					if parsed, err := time.Parse(time.RFC3339, t); err == nil {
						c.LastTransitionTime = metav1.NewTime(parsed)
					}
				}
			}
		}
		if c.LastTransitionTime.IsZero() {
			c.LastTransitionTime = now
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c)
		if err != nil {
			return err
		}
		if at >= 0 {
			conds[at] = m
		} else {
			conds = append(conds, m)
		}
	}
	status["conditions"] = conds

	var issuers []any
	for _, s := range o.issuers.status() {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&s)
		if err != nil {
			return err
		}
		issuers = append(issuers, m)
	}
	status["serviceAccountIssuers"] = issuers
	obj.Object["status"] = status
	return nil
}

func setOrDelete(m map[string]any, key string, v int32) {
	if v == 0 {
		delete(m, key)
		return
	}
	m[key] = int64(v)
}

// writeBackoff rides out an API server restart behind the load balancer.
var writeBackoff = wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 12, Cap: 5 * time.Second}

func (o *Operator) retry(ctx context.Context, fn func() error) error {
	return retry.OnError(writeBackoff, func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		retriable := transient(err)
		if retriable {
			o.log.Debug("retrying after a transient API error", zap.Error(err))
		}
		return retriable
	}, fn)
}

// transient says whether err may pass on retry: a write conflict, or a
// request cut short by an API server going away.
func transient(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) ||
		utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err) ||
		errors.Is(err, context.DeadlineExceeded)
}

// trustedIssuer is an issuer the API servers accept but no longer sign with.
type trustedIssuer struct {
	name    string
	expires time.Time
}

// issuerState is what the API servers should trust: the signing issuer first.
type issuerState struct {
	signing  string
	previous []trustedIssuer
}

// flags is the --service-account-issuer list.
func (s issuerState) flags() []string {
	out := []string{s.signing}
	for _, p := range s.previous {
		out = append(out, p.name)
	}
	return out
}

func (s issuerState) status() []openshift.ServiceAccountIssuerStatus {
	out := []openshift.ServiceAccountIssuerStatus{{Name: s.signing}}
	for _, p := range s.previous {
		t := metav1.NewTime(p.expires)
		out = append(out, openshift.ServiceAccountIssuerStatus{Name: p.name, ExpirationTime: &t})
	}
	return out
}

func (s issuerState) nextExpiry() (time.Time, bool) {
	var at time.Time
	for _, p := range s.previous {
		if at.IsZero() || p.expires.Before(at) {
			at = p.expires
		}
	}
	return at, !at.IsZero()
}

// rolloutPlan is what the next revision installs, and why.
type rolloutPlan struct {
	issuers issuerState
	reason  string
}

// nextRollout decides whether a new revision is due and what it trusts:
//   - the wanted issuer differs from the signing one: it signs, and the old
//     one stays trusted for trustWindow (not at all when it is 0);
//   - a previous issuer's time is up (unless keepExpired): drop it;
//   - an API server runs with other issuers than it should (an earlier
//     rollout was cut short): roll them again.
func nextRollout(cur issuerState, want string, now time.Time, trustWindow time.Duration, keepExpired bool, servers [][]string) (rolloutPlan, bool) {
	live := func(p trustedIssuer) bool { return keepExpired || now.Before(p.expires) }
	if want != cur.signing {
		next := issuerState{signing: want}
		if trustWindow > 0 {
			next.previous = append(next.previous, trustedIssuer{name: cur.signing, expires: truncate(now.Add(trustWindow))})
			for _, p := range cur.previous {
				if p.name != want && p.name != cur.signing && live(p) {
					next.previous = append(next.previous, p)
				}
			}
		}
		return rolloutPlan{issuers: next, reason: RolloutIssuerChanged}, true
	}
	kept := issuerState{signing: cur.signing}
	for _, p := range cur.previous {
		if live(p) {
			kept.previous = append(kept.previous, p)
		}
	}
	if len(kept.previous) != len(cur.previous) {
		return rolloutPlan{issuers: kept, reason: RolloutIssuerExpired}, true
	}
	flags := cur.flags()
	for _, s := range servers {
		if !slices.Equal(s, flags) {
			return rolloutPlan{issuers: cur, reason: RolloutServersDiffer}, true
		}
	}
	return rolloutPlan{}, false
}

// truncate drops what RFC 3339 in the status cannot hold, so that the
// operator's own times and the ones it reads back compare equal.
func truncate(t time.Time) time.Time { return t.Truncate(time.Second) }
