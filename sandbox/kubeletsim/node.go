// Package kubeletsim simulates kubelets against a real API server: each
// simulated node registers with its own node identity, keeps its Lease and
// Ready condition, mints projected service-account tokens through the real
// TokenRequest API by the kubelet's refresh rule, writes them to disk in the
// kubelet's AtomicWriter layout, and serves the kubelet Pods API. It reboots
// and restarts its "kubelet" on request, from Go or from another process
// through a control socket (Control), keeps its boot ID in a file as Linux
// does (BootIDPath), and can be told to misbehave.
package kubeletsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
)

// KubeletVersion is what simulated nodes report in status.nodeInfo.
const KubeletVersion = "v1.37.2"

var everything = labels.Everything()

// Config describes one simulated node.
type Config struct {
	// Name is the Node's name; the node authenticates as system:node:Name.
	Name string
	// Root is the kubelet root directory (what /var/lib/kubelet is on a node).
	Root string
	// RESTConfig must carry the node's own identity, so that the Node
	// authorizer and NodeRestriction judge the simulator as they would judge
	// a kubelet.
	RESTConfig *rest.Config
	// Clock drives token refresh, heartbeats and reboots (default: real
	// time). Retries of failed pod syncs wait on real time whatever it is.
	Clock clock.WithTicker
	// SyncInterval is how often every pod's volumes are rewritten (default
	// 60s, the kubelet's sync period).
	SyncInterval time.Duration
	// HeartbeatInterval is how often the node Lease is renewed (default 10s).
	HeartbeatInterval time.Duration
	// StatusInterval is how often node status is posted when nothing changes
	// (default 1m).
	StatusInterval time.Duration
	// Labels are added to the Node at registration. NodeRestriction limits
	// which labels a node may set on itself.
	Labels map[string]string
	// Logger receives the simulator's log (default: none).
	Logger *zap.Logger
	// Observer, when set, is told of everything the node does; tests wait on
	// it instead of sleeping.
	Observer func(Event)
	// PodIPs is the range the node gives its pods their status.podIP from,
	// one address per pod, as a network plugin would (zero: no pod IP).
	// The sandbox gives each node a loopback range, so that a pod's app
	// can send its requests from its pod's IP.
	PodIPs netip.Prefix
	// RestartGap, when set, makes a kubelet restart take as long as the
	// real kubelet's (wall time: it stands for a process starting, not for
	// the kubelet's timers). Zero: a restart rewrites the tokens at once.
	RestartGap RestartGap
	// Pods, when set, is where the node finds its pods and their projected
	// ConfigMaps, shared with other nodes in this process; nil: the node
	// lists and watches its own pods, as a kubelet does, and reads each
	// ConfigMap on every sync.
	Pods *SharedPods
}

// RestartGap is what the real kubelet's restart looks like from the node:
// its Pods API refuses connections (the socket stays) for Refused, then
// answers FailedPrecondition "Kubelet is initializing" for Initializing;
// the tokens are rewritten after that.
type RestartGap struct {
	Refused, Initializing time.Duration
}

// RealRestartGap is the restart gap the real kubelet v1.37 showed as a
// hollow node: about 2 s from SIGTERM until the new process serves, then
// about a second initializing.
var RealRestartGap = RestartGap{Refused: 2 * time.Second, Initializing: time.Second}

// EventKind names something a simulated node did.
type EventKind string

const (
	EventRegistered       EventKind = "Registered"
	EventVolumeWritten    EventKind = "VolumeWritten"
	EventPodRunning       EventKind = "PodRunning"
	EventPodSynced        EventKind = "PodSynced"
	EventPodRemoved       EventKind = "PodRemoved"
	EventDown             EventKind = "Down"
	EventUp               EventKind = "Up"
	EventKubeletRestarted EventKind = "KubeletRestarted"
	EventSyncError        EventKind = "SyncError"
)

// Event is one observable step of a simulated node.
type Event struct {
	Kind   EventKind
	Node   string
	Pod    types.NamespacedName
	PodUID types.UID
	Volume string
	Err    error
}

// Node is one simulated kubelet.
type Node struct {
	cfg    Config
	client kubernetes.Interface
	clock  clock.WithTicker
	log    *zap.Logger
	tokens *tokenManager

	factory informers.SharedInformerFactory
	pods    corelisters.PodLister
	queue   workqueue.TypedRateLimitingInterface[string]
	podsAPI *podsAPIServer

	mu       sync.Mutex
	bootID   string
	down     bool
	notReady string // a reason while told to report NotReady
	// readyStatus and readySince are the Ready condition last posted and
	// its transition time, kept here so a status post needs no read.
	readyStatus corev1.ConditionStatus
	readySince  metav1.Time
	running     map[types.UID]bool
	// podIPs are the addresses given to the node's pods, kept across
	// reboots while the pod exists; startedIn is the boot in which each
	// pod's containers last started, so that a reboot restarts them.
	podIPs    map[types.UID]netip.Addr
	startedIn map[types.UID]string
	// restarting: the simulated kubelet process is not running (a
	// RestartGap): it syncs no pod.
	restarting bool
	kick       chan struct{}
	// stopping is set once Run is ending: no reboot starts after it.
	stopping bool

	// reboots tracks reboots in flight, which Run waits for; stopped is
	// closed when Run's context ends, so a reboot stops waiting to come up.
	reboots sync.WaitGroup
	stopped chan struct{}

	registered chan struct{}
}

// New checks cfg and returns a node that Run starts.
func New(cfg Config) (*Node, error) {
	var errs []error
	if cfg.Name == "" {
		errs = append(errs, errors.New("kubeletsim: Config.Name is empty"))
	}
	if cfg.Root == "" {
		errs = append(errs, errors.New("kubeletsim: Config.Root is empty"))
	}
	if cfg.RESTConfig == nil {
		errs = append(errs, errors.New("kubeletsim: Config.RESTConfig is nil"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Minute
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	client, err := kubernetes.NewForConfig(cfg.RESTConfig)
	if err != nil {
		return nil, fmt.Errorf("kubeletsim: client for node %s: %w", cfg.Name, err)
	}
	n := &Node{
		cfg:        cfg,
		client:     client,
		clock:      cfg.Clock,
		log:        cfg.Logger.With(zap.String("node", cfg.Name)),
		tokens:     newTokenManager(client, cfg.Clock),
		bootID:     newBootID(),
		running:    map[types.UID]bool{},
		podIPs:     map[types.UID]netip.Addr{},
		startedIn:  map[types.UID]string{},
		kick:       make(chan struct{}, 1),
		stopped:    make(chan struct{}),
		registered: make(chan struct{}),
	}
	if cfg.Pods != nil {
		n.pods = cfg.Pods.lister(cfg.Name)
	} else {
		n.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + cfg.Name
		}))
		n.pods = n.factory.Core().V1().Pods().Lister()
	}
	// A failed pod sync is retried within 10 s at most, as the kubelet's pod
	// workers do; the controller default backs off to many minutes. Retries
	// wait on real time, not on cfg.Clock: they wait out the API server (its
	// Node authorizer graph learns of a new pod a moment after the kubelet
	// does), and a test's fake clock would never fire them.
	n.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubeletsim-" + cfg.Name, Clock: clock.RealClock{}})
	n.podsAPI = newPodsAPIServer(n.pods)
	return n, nil
}

func newBootID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Root is the node's kubelet root directory.
func (n *Node) Root() string { return n.cfg.Root }

// BootID is the boot ID the node reports now.
func (n *Node) BootID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bootID
}

// PodsAPISocket is the kubelet Pods API socket, as the kubelet places it.
func (n *Node) PodsAPISocket() string {
	return filepath.Join(n.cfg.Root, "pods-api", "pods-api.sock")
}

// VolumeDir is where a pod's projected volume is written.
func (n *Node) VolumeDir(podUID types.UID, volume string) string {
	return filepath.Join(n.cfg.Root, "pods", string(podUID), "volumes", "kubernetes.io~projected", volume)
}

// Registered is closed once the Node exists and the pod cache is synced.
func (n *Node) Registered() <-chan struct{} { return n.registered }

func (n *Node) emit(e Event) {
	if n.cfg.Observer != nil {
		e.Node = n.cfg.Name
		n.cfg.Observer(e)
	}
}

// Run registers the node and simulates its kubelet until ctx ends. Once
// Registered, the node also serves ControlSocketPath and keeps its boot ID
// in BootIDPath.
func (n *Node) Run(ctx context.Context) error {
	defer n.queue.ShutDown()
	if err := os.MkdirAll(filepath.Join(n.cfg.Root, "pods"), 0o750); err != nil {
		return err
	}
	if err := writeBootID(n.cfg.Root, n.BootID()); err != nil {
		return err
	}
	if err := n.register(ctx); err != nil {
		return err
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.enqueue(obj); n.podsAPI.notify(obj, false) },
		UpdateFunc: func(_, obj any) { n.enqueue(obj); n.podsAPI.notify(obj, false) },
		DeleteFunc: func(obj any) { n.podGone(obj); n.podsAPI.notify(obj, true) },
	}
	if n.cfg.Pods != nil {
		defer n.cfg.Pods.subscribe(n.cfg.Name, handler)()
	} else {
		informer := n.factory.Core().V1().Pods().Informer()
		if _, err := informer.AddEventHandler(handler); err != nil {
			return err
		}
		n.factory.Start(ctx.Done())
		defer n.factory.Shutdown()
		if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
			return ctx.Err()
		}
	}
	if err := n.podsAPI.start(n.PodsAPISocket()); err != nil {
		return err
	}
	defer n.podsAPI.stop(false)
	control, err := n.startControl(ctx)
	if err != nil {
		return err
	}
	defer control.stop(n.log)
	close(n.registered)
	n.emit(Event{Kind: EventRegistered})

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); n.worker(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.loop(ctx) }()
	<-ctx.Done()
	n.queue.ShutDown()
	wg.Wait()
	n.mu.Lock()
	n.stopping = true
	n.mu.Unlock()
	close(n.stopped)
	n.reboots.Wait()
	return nil
}

// writeBootID replaces BootIDPath(root) atomically, so a reader sees the
// old boot ID or the new one, never a partial file.
func writeBootID(root, id string) error {
	path := BootIDPath(root)
	if err := os.MkdirAll(root, 0o750); err != nil {
		return fmt.Errorf("writing boot ID %s: %w", path, err)
	}
	f, err := os.CreateTemp(root, ".boot_id-*")
	if err != nil {
		return fmt.Errorf("writing boot ID %s: %w", path, err)
	}
	_, err = f.WriteString(id + "\n")
	err = errors.Join(err, f.Chmod(0o644), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("writing boot ID %s: %w", path, err)
	}
	return nil
}

func (n *Node) enqueue(obj any) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		n.queue.Add(key)
	}
}

// ResyncAll queues every pod for a volume sync now, as the kubelet's periodic
// sync would.
func (n *Node) ResyncAll() {
	pods, _ := n.pods.List(everything)
	for _, p := range pods {
		n.enqueue(p)
	}
}

func (n *Node) podGone(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	n.removePod(pod)
}

func (n *Node) removePod(pod *corev1.Pod) {
	n.tokens.forgetPod(pod.UID)
	n.mu.Lock()
	delete(n.running, pod.UID)
	delete(n.podIPs, pod.UID)
	delete(n.startedIn, pod.UID)
	n.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(n.cfg.Root, "pods", string(pod.UID))); err != nil {
		n.log.Error("removing pod directory", zap.String("pod", pod.Name), zap.Error(err))
	}
	n.emit(Event{Kind: EventPodRemoved, Pod: types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, PodUID: pod.UID})
}

// loop renews the Lease, posts status and triggers periodic syncs on the
// node's clock.
func (n *Node) loop(ctx context.Context) {
	lease := n.clock.NewTicker(n.cfg.HeartbeatInterval)
	defer lease.Stop()
	status := n.clock.NewTicker(n.cfg.StatusInterval)
	defer status.Stop()
	sync := n.clock.NewTicker(n.cfg.SyncInterval)
	defer sync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.C():
			if !n.isDown() {
				if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
					n.log.Warn("renewing node lease", zap.Error(err))
				}
			}
		case <-status.C():
			n.postStatus(ctx)
		case <-sync.C():
			n.ResyncAll()
		case <-n.kick:
			n.postStatus(ctx)
		}
	}
}

func (n *Node) isDown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.down
}

func (n *Node) kickStatus() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *Node) worker(ctx context.Context) {
	for {
		key, quit := n.queue.Get()
		if quit {
			return
		}
		err := n.syncPod(ctx, key)
		switch {
		case err == nil:
			n.queue.Forget(key)
		case ctx.Err() != nil:
		default:
			ns, name, _ := cache.SplitMetaNamespaceKey(key)
			n.log.Warn("syncing pod", zap.String("namespace", ns), zap.String("pod", name), zap.Error(err))
			n.emit(Event{Kind: EventSyncError, Pod: types.NamespacedName{Namespace: ns, Name: name}, Err: err})
			n.queue.AddRateLimited(key)
		}
		n.queue.Done(key)
	}
}

func (n *Node) syncPod(ctx context.Context, key string) error {
	n.mu.Lock()
	idle := n.down || n.restarting
	n.mu.Unlock()
	if idle {
		return nil // Up and the end of a restart re-queue every pod.
	}
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		n.log.Error("dropping a malformed queue key", zap.String("key", key), zap.Error(err))
		return nil //nolint:nilerr // retrying a malformed key cannot succeed
	}
	cached, err := n.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	pod := cached.DeepCopy()
	if pod.DeletionTimestamp != nil {
		// The kubelet confirms a graceful deletion once the containers are
		// gone: here at once.
		n.removePod(pod)
		err := n.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("confirming deletion of pod %s/%s: %w", ns, name, err)
		}
		return nil
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	if err := n.makePodDir(pod); err != nil {
		return fmt.Errorf("making the directory of pod %s/%s: %w", ns, name, err)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		payload, err := n.projectedPayload(ctx, pod, v.Projected)
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		var fsGroup *int64
		if pod.Spec.SecurityContext != nil {
			fsGroup = pod.Spec.SecurityContext.FSGroup
		}
		wrote, err := writeAtomically(n.VolumeDir(pod.UID, v.Name), payload, fsGroup, n.clock.Now())
		if err != nil {
			return fmt.Errorf("writing volume %q: %w", v.Name, err)
		}
		if wrote {
			n.emit(Event{Kind: EventVolumeWritten, Pod: types.NamespacedName{Namespace: ns, Name: name}, PodUID: pod.UID, Volume: v.Name})
		}
	}
	if err := n.markRunning(ctx, pod); err != nil {
		return err
	}
	n.emit(Event{Kind: EventPodSynced, Pod: types.NamespacedName{Namespace: ns, Name: name}, PodUID: pod.UID})
	return nil
}

// makePodDir lays out what the kubelet keeps for a pod beside its volumes,
// as it does: a directory per container, the pod's hosts file, and the
// emptyDir each projected volume is mounted on, with the kubelet's modes.
// The scanner meets these entries on a node and must pass over them.
func (n *Node) makePodDir(pod *corev1.Pod) error {
	dir := filepath.Join(n.cfg.Root, "pods", string(pod.UID))
	projected := filepath.Join(dir, "volumes", "kubernetes.io~projected")
	if _, err := os.Stat(projected); err == nil {
		return nil
	}
	mkdir := func(path string, mode os.FileMode) error {
		if err := os.MkdirAll(path, mode); err != nil {
			return err
		}
		return os.Chmod(path, mode)
	}
	dirs := []string{dir, filepath.Join(dir, "volumes")}
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		dirs = append(dirs, filepath.Join(dir, "containers", c.Name))
	}
	for _, d := range dirs {
		if err := mkdir(d, 0o750); err != nil {
			return err
		}
	}
	if err := mkdir(projected, 0o755); err != nil {
		return err
	}
	hosts := "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if err := os.WriteFile(filepath.Join(dir, "etc-hosts"), []byte(hosts), 0o644); err != nil {
		return err
	}
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		wrapped := filepath.Join(dir, "plugins", "kubernetes.io~empty-dir", "wrapped_"+v.Name)
		if err := mkdir(wrapped, 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(wrapped, "ready"), nil, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// projectedPayload builds a projected volume's files the way the kubelet's
// projected volume plugin does.
func (n *Node) projectedPayload(ctx context.Context, pod *corev1.Pod, vol *corev1.ProjectedVolumeSource) (map[string]file, error) {
	mode := os.FileMode(0o644)
	if vol.DefaultMode != nil {
		mode = os.FileMode(*vol.DefaultMode)
	}
	itemMode := func(m *int32) os.FileMode {
		if m != nil {
			return os.FileMode(*m)
		}
		return mode
	}
	out := map[string]file{}
	for _, src := range vol.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			tp := src.ServiceAccountToken
			var auds []string
			if tp.Audience != "" {
				auds = []string{tp.Audience}
			}
			exp := ptr.Deref(tp.ExpirationSeconds, 3600)
			sa := pod.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			tr, err := n.tokens.get(ctx, pod.Namespace, sa, pod.UID, &authenticationv1.TokenRequest{
				Spec: authenticationv1.TokenRequestSpec{
					Audiences:         auds,
					ExpirationSeconds: &exp,
					BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
				},
			})
			if err != nil {
				return nil, err
			}
			// The kubelet gives the token to the pod's user, readable by it
			// alone (and its fsGroup, once the volume is handed to it).
			f := file{Data: []byte(tr.Status.Token), Mode: mode, FsUser: fsUserOf(pod)}
			if f.FsUser != nil || (pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil) {
				f.Mode = 0o600
			}
			out[tp.Path] = f
		case src.ConfigMap != nil:
			cm, err := n.configMap(ctx, pod.Namespace, src.ConfigMap.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptr.Deref(src.ConfigMap.Optional, false) {
					continue
				}
				return nil, fmt.Errorf("configmap %s/%s: %w", pod.Namespace, src.ConfigMap.Name, err)
			}
			if len(src.ConfigMap.Items) == 0 {
				for k, v := range cm.Data {
					out[k] = file{Data: []byte(v), Mode: mode}
				}
			}
			for _, it := range src.ConfigMap.Items {
				v, ok := cm.Data[it.Key]
				if !ok {
					return nil, fmt.Errorf("configmap %s/%s has no key %q", pod.Namespace, cm.Name, it.Key)
				}
				out[it.Path] = file{Data: []byte(v), Mode: itemMode(it.Mode)}
			}
		case src.Secret != nil:
			s, err := n.client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.Secret.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && ptr.Deref(src.Secret.Optional, false) {
					continue
				}
				return nil, fmt.Errorf("secret %s/%s: %w", pod.Namespace, src.Secret.Name, err)
			}
			if len(src.Secret.Items) == 0 {
				for k, v := range s.Data {
					out[k] = file{Data: v, Mode: mode}
				}
			}
			for _, it := range src.Secret.Items {
				v, ok := s.Data[it.Key]
				if !ok {
					return nil, fmt.Errorf("secret %s/%s has no key %q", pod.Namespace, s.Name, it.Key)
				}
				out[it.Path] = file{Data: v, Mode: itemMode(it.Mode)}
			}
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					return nil, fmt.Errorf("downwardAPI item %q: only fieldRef is simulated", it.Path)
				}
				var v string
				switch it.FieldRef.FieldPath {
				case "metadata.namespace":
					v = pod.Namespace
				case "metadata.name":
					v = pod.Name
				case "metadata.uid":
					v = string(pod.UID)
				case "spec.serviceAccountName":
					v = pod.Spec.ServiceAccountName
				case "spec.nodeName":
					v = pod.Spec.NodeName
				default:
					return nil, fmt.Errorf("downwardAPI item %q: field %q is not simulated", it.Path, it.FieldRef.FieldPath)
				}
				out[it.Path] = file{Data: []byte(v), Mode: itemMode(it.Mode)}
			}
		default:
			return nil, errors.New("projected source not simulated (only serviceAccountToken, configMap, secret, downwardAPI)")
		}
	}
	return out, nil
}

// configMap reads a ConfigMap a pod's volume projects: from the shared
// cache when the node shares one (Config.Pods), else from the API server.
func (n *Node) configMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	if n.cfg.Pods != nil {
		return n.cfg.Pods.configMap(namespace, name)
	}
	return n.client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
}

// markRunning posts the pod as Running and Ready once, as the kubelet does
// when its containers have started. After a reboot the containers start
// again: a new start time and one more restart.
func (n *Node) markRunning(ctx context.Context, pod *corev1.Pod) error {
	n.mu.Lock()
	done := n.running[pod.UID]
	bootID := n.bootID
	startedIn, known := n.startedIn[pod.UID]
	n.mu.Unlock()
	if done {
		return nil
	}
	restarted := known && startedIn != bootID
	if pod.Status.Phase != corev1.PodRunning || !podReady(pod) || restarted {
		now := metav1.NewTime(n.clock.Now())
		restarts := map[string]int32{}
		for _, cs := range pod.Status.ContainerStatuses {
			restarts[cs.Name] = cs.RestartCount
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.HostIP = "127.0.0.1"
		if ip, ok := n.podIP(pod.UID); ok {
			pod.Status.PodIP = ip.String()
			pod.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
		}
		pod.Status.StartTime = &now
		pod.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
		pod.Status.ContainerStatuses = nil
		for _, c := range pod.Spec.Containers {
			cs := corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: ptr.To(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			}
			if restarted {
				cs.RestartCount = restarts[c.Name] + 1
			}
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, cs)
		}
		if _, err := n.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("posting status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	n.mu.Lock()
	n.running[pod.UID] = true
	n.startedIn[pod.UID] = bootID
	n.mu.Unlock()
	n.emit(Event{Kind: EventPodRunning, Pod: types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, PodUID: pod.UID})
	return nil
}

// podIP returns the address of the pod with uid, giving it the first one
// of the node's range no other pod holds; false when the node has no
// range or it is full.
func (n *Node) podIP(uid types.UID) (netip.Addr, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip, ok := n.podIPs[uid]; ok {
		return ip, true
	}
	r := n.cfg.PodIPs
	if !r.IsValid() {
		return netip.Addr{}, false
	}
	held := map[netip.Addr]bool{}
	for _, ip := range n.podIPs {
		held[ip] = true
	}
	// The range's first address names the network, as on a real one.
	for ip := r.Masked().Addr().Next(); r.Contains(ip); ip = ip.Next() {
		if !held[ip] && r.Contains(ip.Next()) {
			n.podIPs[uid] = ip
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// register creates the Node, or updates it when it already exists (a
// restarted kubelet), and its Lease.
func (n *Node) register(ctx context.Context) error {
	nodeLabels := map[string]string{
		"kubernetes.io/hostname": n.cfg.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
	}
	for k, v := range n.cfg.Labels {
		nodeLabels[k] = v
	}
	now := metav1.NewTime(n.clock.Now())
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name, Labels: nodeLabels},
		Status: corev1.NodeStatus{
			Capacity:    n.capacity(),
			Allocatable: n.capacity(),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
				{Type: corev1.NodeHostName, Address: n.cfg.Name},
			},
			// Tracked: the next post keeps this transition time.
			Conditions: []corev1.NodeCondition{n.trackTransition(n.readyCondition(now))},
			NodeInfo:   n.nodeInfo(),
		},
	}
	_, err := n.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A restarted kubelet: keep the Ready transition time the Node has.
		if cur, getErr := n.client.CoreV1().Nodes().Get(ctx, n.cfg.Name, metav1.GetOptions{}); getErr == nil {
			for _, c := range cur.Status.Conditions {
				if c.Type == corev1.NodeReady {
					n.mu.Lock()
					n.readyStatus, n.readySince = c.Status, c.LastTransitionTime
					n.mu.Unlock()
				}
			}
		}
		err = n.patchStatus(ctx, now)
	}
	if err != nil {
		return fmt.Errorf("registering node %s: %w", n.cfg.Name, err)
	}
	return n.renewLease(ctx)
}

func (n *Node) capacity() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
}

func (n *Node) nodeInfo() corev1.NodeSystemInfo {
	return corev1.NodeSystemInfo{
		MachineID: n.cfg.Name, SystemUUID: n.cfg.Name, BootID: n.BootID(),
		KernelVersion: "6.12.0-sim", OSImage: "tokenroll kubeletsim", ContainerRuntimeVersion: "sim://1.0",
		KubeletVersion: KubeletVersion, OperatingSystem: "linux", Architecture: "amd64",
	}
}

func (n *Node) readyCondition(now metav1.Time) corev1.NodeCondition {
	n.mu.Lock()
	down, reason := n.down, n.notReady
	n.mu.Unlock()
	c := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
	switch {
	case down:
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, "KubeletNotReady", "node is shutting down"
	case reason != "":
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, "KubeletNotReady", reason
	}
	return c
}

// patchStatus posts the Ready condition and node info. The transition time
// moves only when the status does.
func (n *Node) patchStatus(ctx context.Context, now metav1.Time) error {
	cond := n.trackTransition(n.readyCondition(now))
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"conditions": []corev1.NodeCondition{cond},
		"nodeInfo":   n.nodeInfo(),
	}})
	if err != nil {
		return err
	}
	_, err = n.client.CoreV1().Nodes().PatchStatus(ctx, n.cfg.Name, patch)
	return err
}

// trackTransition gives cond the transition time of the last posted Ready
// condition when its status is unchanged, and remembers it otherwise.
func (n *Node) trackTransition(cond corev1.NodeCondition) corev1.NodeCondition {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.readySince.IsZero() || n.readyStatus != cond.Status {
		n.readyStatus, n.readySince = cond.Status, cond.LastTransitionTime
	}
	cond.LastTransitionTime = n.readySince
	return cond
}

func (n *Node) postStatus(ctx context.Context) {
	n.mu.Lock()
	down := n.down
	n.mu.Unlock()
	if down {
		return // a node that is down posts nothing
	}
	if err := n.patchStatus(ctx, metav1.NewTime(n.clock.Now())); err != nil && ctx.Err() == nil {
		n.log.Warn("posting node status", zap.Error(err))
	}
}

func (n *Node) renewLease(ctx context.Context) error {
	leases := n.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(n.clock.Now())
	l, err := leases.Get(ctx, n.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(n.cfg.Name),
				LeaseDurationSeconds: ptr.To[int32](40),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// SetNotReady makes the node report Ready=False with reason, or Ready=True
// again when reason is empty, as a kubelet with a broken runtime would.
func (n *Node) SetNotReady(reason string) {
	n.mu.Lock()
	n.notReady = reason
	n.mu.Unlock()
	n.kickStatus()
}

// SetStopRefreshing makes the node keep serving its cached tokens however
// old they get, as a wedged kubelet would (false: back to the rule).
func (n *Node) SetStopRefreshing(stop bool) { n.tokens.setStopRefreshing(stop) }

// RestartKubelet simulates `systemctl restart kubelet`: the token cache is
// gone, so every projected token is requested again and the volumes are
// rewritten; pods keep running. With Config.RestartGap, it returns once the
// Pods API refuses, and the rest follows as on the real kubelet.
func (n *Node) RestartKubelet() {
	n.tokens.clear()
	gap := n.cfg.RestartGap
	if gap == (RestartGap{}) {
		n.emit(Event{Kind: EventKubeletRestarted})
		n.ResyncAll()
		return
	}
	n.mu.Lock()
	n.restarting = true
	n.mu.Unlock()
	n.podsAPI.stop(true)
	n.emit(Event{Kind: EventKubeletRestarted})
	go func() {
		wait := func(d time.Duration) bool {
			select {
			case <-n.stopped:
				return false
			case <-time.After(d):
				return true
			}
		}
		if !wait(gap.Refused) {
			return
		}
		n.podsAPI.setInitializing(true)
		if err := n.podsAPI.start(n.PodsAPISocket()); err != nil {
			n.log.Error("starting the Pods API after the kubelet restart", zap.Error(err))
		}
		if !wait(gap.Initializing) {
			return
		}
		n.podsAPI.setInitializing(false)
		n.mu.Lock()
		n.restarting = false
		n.mu.Unlock()
		n.ResyncAll()
	}()
}

// Reboot takes the node down for downFor on its clock, as `systemctl
// reboot` does: it returns once the reboot has begun (a second Reboot is
// refused from here on), and the node goes down just after (the Down
// event): it reports NotReady, stops renewing its Lease and syncing pods,
// and its projected volumes (tmpfs on a real node) are gone. It then comes
// back with a new boot ID (written to BootIDPath first) and an empty token
// cache, and rewrites every volume (the Up event). The reboot lasts as long
// as ctx and Run: cancelled, the node stays down.
func (n *Node) Reboot(ctx context.Context, downFor time.Duration) error {
	n.mu.Lock()
	if n.stopping {
		n.mu.Unlock()
		return fmt.Errorf("node %s is stopping; not rebooting it", n.cfg.Name)
	}
	if n.down {
		n.mu.Unlock()
		return fmt.Errorf("node %s is already rebooting; wait until it is Ready again", n.cfg.Name)
	}
	n.down = true
	n.reboots.Add(1)
	n.mu.Unlock()
	// The timer starts now, so that a test stepping the clock once Reboot
	// has returned moves the reboot along.
	after := n.clock.After(downFor)
	go func() {
		defer n.reboots.Done()
		n.goDown(ctx)
		select {
		case <-ctx.Done():
			return
		case <-n.stopped:
			return
		case <-after:
		}
		n.comeUp(ctx)
	}()
	return nil
}

// goDown is the shutdown half of a reboot.
func (n *Node) goDown(ctx context.Context) {
	// The kubelet's graceful node shutdown reports NotReady before going.
	cond := n.trackTransition(n.readyCondition(metav1.NewTime(n.clock.Now())))
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if _, err := n.client.CoreV1().Nodes().PatchStatus(ctx, n.cfg.Name, patch); err != nil && ctx.Err() == nil {
		n.log.Warn("posting NotReady before reboot", zap.Error(err))
	}
	n.tokens.clear()
	pods, _ := n.pods.List(everything)
	for _, p := range pods {
		_ = os.RemoveAll(filepath.Join(n.cfg.Root, "pods", string(p.UID), "volumes"))
	}
	n.mu.Lock()
	n.running = map[types.UID]bool{}
	n.mu.Unlock()
	n.podsAPI.stop(false)
	n.emit(Event{Kind: EventDown})
}

// comeUp is the boot half of a reboot: the boot ID file changes first, as
// /proc does before the kubelet starts.
func (n *Node) comeUp(ctx context.Context) {
	id := newBootID()
	if err := writeBootID(n.cfg.Root, id); err != nil {
		n.log.Error("recording the new boot ID", zap.Error(err))
	}
	n.mu.Lock()
	n.down = false
	n.bootID = id
	n.mu.Unlock()
	if err := n.podsAPI.start(n.PodsAPISocket()); err != nil {
		n.log.Error("restarting the Pods API after reboot", zap.Error(err))
	}
	n.postStatus(ctx)
	if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
		n.log.Warn("renewing node lease after reboot", zap.Error(err))
	}
	n.log.Info("node up after reboot", zap.String("bootID", id))
	n.emit(Event{Kind: EventUp})
	n.ResyncAll()
}

// fsUserOf is the user every container of pod runs as, when they all run as
// the same one (the kubelet's FsUserFrom); nil otherwise.
func fsUserOf(pod *corev1.Pod) *int64 {
	var user *int64
	first := true
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		var u *int64
		if pod.Spec.SecurityContext != nil {
			u = pod.Spec.SecurityContext.RunAsUser
		}
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			u = c.SecurityContext.RunAsUser
		}
		if u == nil || (!first && *u != *user) {
			return nil
		}
		user, first = u, false
	}
	return user
}
