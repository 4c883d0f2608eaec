// Package sandbox assembles a whole local cluster for tokenroll and walks
// the OpenShift documentation's procedure on it: a real control plane (sandbox/controlplane)
// with the OpenShift resources and a simulated kube-apiserver operator
// (sandbox/openshiftsim), the real kube-controller-manager and kube-scheduler,
// simulated kubelets (sandbox/kubeletsim) or the real kubelet code running
// ReplicaSets whose pods hold projected tokens, among them the
// documentation's build-robot pod with a token for the audience "vault", and
// the real tokenroll-agent and tokenroll-coordinator binaries as processes.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	deployaudit "github.com/tokenroll/tokenroll/deploy/audit"
	"github.com/tokenroll/tokenroll/deploy/kustomize/base/crds"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
	"github.com/tokenroll/tokenroll/sandbox/workload"
)

// Config says what cluster Start builds.
type Config struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and
	// kube-scheduler; empty means the build cache.
	BinDir string
	// Dir holds everything the sandbox writes; empty means a temporary
	// directory removed by Stop.
	Dir string
	// Nodes is how many simulated worker nodes run.
	Nodes int
	// APIServers is how many kube-apiservers share the one etcd, standing
	// for as many control-plane nodes (master-0, master-1, ...).
	APIServers int
	// Issuer is the service-account issuer the control plane starts with.
	Issuer string
	// TrustWindow is how long the simulated operator keeps a previous
	// issuer trusted after a change (0: dropped in the same revision).
	TrustWindow time.Duration
	// Kubelet is what runs each worker node: KubeletSim (kubeletsim, in
	// this process; the default) or KubeletReal (the pinned kubelet code as
	// processes, see realNode).
	Kubelet string
	// Apps are the kinds of app the pods run (none: no app runs).
	Apps []AppKind
	// Log receives what the in-process parts do (default: nothing).
	Log *zap.Logger
}

// Sandbox is a running control plane with its controllers, its simulated
// operator and its nodes.
type Sandbox struct {
	cfg        Config
	dir        string
	removeDir  bool
	CP         *controlplane.ControlPlane
	Admin      kubernetes.Interface
	Dynamic    dynamic.Interface
	Nodes      []Node
	Kubeconfig string

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// retry is how the sandbox's own reads meet an API server's restart.
	retry apiretry.Policy

	mu       sync.Mutex
	synced   map[types.UID]bool
	change   chan struct{}
	nodeHook func(kubeletsim.Event)
	apps     *appRunner
}

// Node is one worker node: a simulated kubelet or the real kubelet code.
type Node interface {
	Name() string
	// Root is the kubelet's root directory (/var/lib/kubelet on a node).
	Root() string
	// PodsAPISocket is the kubelet Pods API socket.
	PodsAPISocket() string
	// BootID is the boot the node is in now.
	BootID() string
}

// What runs the worker nodes (Config.Kubelet, --kubelet).
const (
	// KubeletSim is kubeletsim: light, for many nodes.
	KubeletSim = "sim"
	// KubeletReal is the kubelet code of the pinned Kubernetes, run as
	// hollow-kubelet and fake-runtime processes per node.
	KubeletReal = "real"
)

// Kubelets lists the values of Config.Kubelet.
var Kubelets = []string{KubeletSim, KubeletReal}

// Namespaces the sandbox's workloads live in.
const (
	NamespaceBuild = "build" // the documentation's build-robot pods
	NamespaceApps  = "apps"  // plain pods with the default kube-api-access volume
)

// TokensPerNode is how many projected tokens the workloads put on each node
// at the start: the build-robot pod's vault token and kube-api-access token,
// and the web and legacy pods' kube-api-access tokens.
const TokensPerNode = 4

// PodsPerNode is how many of the workloads' pods run on each node.
const PodsPerNode = 3

// podIPRange is the loopback range the pods of the i-th worker node
// (from 1) get their IPs from, as a cluster's network plugin gives each
// node a pod CIDR: 127.1.1.0/24 for worker-1. The control plane listens on
// 127.0.0.1, outside every range.
// simNodeConfig is a --kubelet=sim node's: it restarts with the real
// kubelet's restart gap, so that the agents and the coordinator meet the
// same refused and initializing Pods API there as on a real kubelet.
func simNodeConfig(name, root string, rc *rest.Config, i int, log *zap.Logger, observe func(kubeletsim.Event)) kubeletsim.Config {
	return kubeletsim.Config{
		Name: name, Root: root, RESTConfig: rc, PodIPs: podIPRange(i),
		Logger: log.Named("kubeletsim"), Observer: observe, RestartGap: kubeletsim.RealRestartGap,
	}
}

func podIPRange(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(1 + i/256), byte(i % 256), 0}), 24)
}

// MasterNames are the control-plane node names the simulated operator
// reports, one per API server.
func MasterNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = "master-" + strconv.Itoa(i)
	}
	return names
}

// Start builds the sandbox and returns once every node is Ready, the
// simulated operator has settled KubeAPIServer/cluster at revision 11, and
// every pod's tokens are on disk. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (_ *Sandbox, err error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("sandbox: need at least one node, got %d", cfg.Nodes)
	}
	if cfg.APIServers < 1 {
		cfg.APIServers = 1
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	log := cfg.Log
	if cfg.Kubelet == "" {
		cfg.Kubelet = KubeletSim
	}
	bins, err := controlplane.FindBinaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	controllerBins, err := controlplane.FindControllerBinaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	var kubeletBins controlplane.KubeletBinaries
	switch cfg.Kubelet {
	case KubeletSim:
	case KubeletReal:
		if kubeletBins, err = controlplane.FindKubeletBinaries(cfg.BinDir); err != nil {
			return nil, err
		}
		if err := checkRuntimeGivesPodIPs(ctx, kubeletBins.FakeRuntime); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("sandbox: kubelet %q: want %s", cfg.Kubelet, strings.Join(Kubelets, " or "))
	}
	s := &Sandbox{cfg: cfg, dir: cfg.Dir, synced: map[types.UID]bool{}, change: make(chan struct{}), retry: censusRetry()}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "tokenroll-sandbox-"); err != nil {
			return nil, err
		}
		s.removeDir = true
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	for _, d := range []string{"logs", "kubeconfigs", "nodes", "agents"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o750); err != nil {
			return nil, err
		}
	}
	log.Info("starting control plane", zap.Int("apiservers", cfg.APIServers), zap.String("issuer", cfg.Issuer), zap.String("dir", s.dir))
	s.CP, err = controlplane.Start(ctx, controlplane.Config{
		Binaries: bins, Dir: filepath.Join(s.dir, "controlplane"),
		APIServers: cfg.APIServers, Issuers: []string{cfg.Issuer},
		// The shipped policy, each API server writing its own log, which
		// the coordinators follow for app detection.
		AuditPolicy: deployaudit.Policy,
	})
	if err != nil {
		return nil, err
	}
	if err := s.CP.StartControllers(ctx, controlplane.ControllersConfig{Binaries: controllerBins, Controllers: Controllers, Scheduler: true}); err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(s.dir, "kubeconfig")
	if err := controlplane.WriteKubeconfig(s.Kubeconfig, s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	if s.Admin, err = kubernetes.NewForConfig(s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	if s.Dynamic, err = dynamic.NewForConfig(s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	for _, ns := range []string{NamespaceBuild, NamespaceApps, Namespace} {
		if _, err := s.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	if _, err := s.Admin.CoreV1().ServiceAccounts(NamespaceBuild).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "build-robot"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	if err := applyRBAC(ctx, s.Admin); err != nil {
		return nil, err
	}
	if err := openshiftsim.InstallCRDs(ctx, s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	// tokenroll's own API, as the manifests install it. No RolloutPolicy is
	// created: every node follows the coordinators' flags (--strategy,
	// --max-unavailable), which the scenario and its invariants are
	// defined by, through the policy code path the coordinators take once
	// the CRD is served, as a cluster upgraded from the flags does. The coordinators record
	// each rollout as a TokenRollout.
	own, err := crds.Objects()
	if err != nil {
		return nil, err
	}
	if err := openshiftsim.InstallCRDObjects(ctx, s.CP.AdminConfig(), own); err != nil {
		return nil, fmt.Errorf("installing the tokenroll.io CRDs: %w", err)
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	op, err := openshiftsim.New(openshiftsim.Config{ControlPlane: s.CP, Client: s.Dynamic, NodeNames: MasterNames(cfg.APIServers),
		TrustWindow: cfg.TrustWindow, Log: log.Named("operator")})
	if err != nil {
		return nil, err
	}
	opDone := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := op.Run(runCtx)
		if err != nil {
			log.Error("the simulated kube-apiserver operator stopped", zap.Error(err))
		}
		opDone <- err
	}()

	for i := 1; i <= cfg.Nodes; i++ {
		name := fmt.Sprintf("worker-%d", i)
		rc, err := s.CP.NodeConfig(name)
		if err != nil {
			return nil, err
		}
		if err := controlplane.WriteKubeconfig(s.NodeKubeconfig(name), rc); err != nil {
			return nil, err
		}
		root := filepath.Join(s.dir, "nodes", name)
		if cfg.Kubelet == KubeletReal {
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return nil, err
			}
			n := newRealNode(realNodeConfig{Name: name, Root: root, Kubeconfig: s.NodeKubeconfig(name), Client: client,
				Binaries: kubeletBins, LogDir: filepath.Join(s.dir, "logs"), PodIPs: podIPRange(i), Observer: s.observe, Log: log.Named("node")})
			if err := n.start(runCtx, &s.wg); err != nil {
				return nil, err
			}
			s.Nodes = append(s.Nodes, n)
			continue
		}
		n, err := kubeletsim.New(simNodeConfig(name, root, rc, i, log, s.observe))
		if err != nil {
			return nil, err
		}
		s.Nodes = append(s.Nodes, n)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := n.Run(runCtx); err != nil && runCtx.Err() == nil {
				log.Error("simulated node stopped", zap.String("node", name), zap.Error(err))
			}
		}()
	}
	for _, n := range s.Nodes {
		switch n := n.(type) {
		case *kubeletsim.Node:
			select {
			case <-n.Registered():
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case *realNode:
			if err := n.waitReady(ctx, 2*time.Minute); err != nil {
				return nil, err
			}
		}
	}
	log.Info("nodes registered", zap.Int("nodes", len(s.Nodes)), zap.String("kubelet", cfg.Kubelet))

	apps, err := newAppRunner(appRunnerConfig{Client: s.Admin, URL: s.CP.URL(), CA: s.CP.CACert(), Kinds: cfg.Apps, Nodes: s.Nodes,
		Log: log.Named("apps")})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.apps = apps
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := apps.Run(runCtx); err != nil && runCtx.Err() == nil {
			log.Error("the pods' apps stopped", zap.Error(err))
		}
	}()

	// The admission of a pod needs its service account, which the
	// controller manager creates with the namespace; waiting here spares
	// the ReplicaSet controller's backoff.
	for _, ns := range []string{NamespaceBuild, NamespaceApps} {
		if err := s.waitNamespaceReady(ctx, ns); err != nil {
			return nil, err
		}
	}
	for _, set := range ReplicaSets(int32(cfg.Nodes)) {
		if _, err := s.Admin.AppsV1().ReplicaSets(set.Namespace).Create(ctx, set, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating ReplicaSet %s/%s: %w", set.Namespace, set.Name, err)
		}
	}
	if cfg.Kubelet == KubeletReal {
		err = s.waitPodsRunning(ctx, PodsPerNode*cfg.Nodes)
	} else {
		err = s.waitPodsSynced(ctx, PodsPerNode*cfg.Nodes)
	}
	if err != nil {
		return nil, err
	}
	log.Info("every pod running with its tokens on disk", zap.Int("pods", PodsPerNode*cfg.Nodes))

	select {
	case <-op.Ready():
	case err := <-opDone:
		return nil, fmt.Errorf("the simulated kube-apiserver operator stopped before settling: %w", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s, nil
}

// Controllers are the kube-controller-manager controllers the sandbox runs:
// those a cluster runs that act on what the sandbox has (ReplicaSets and
// their pods, namespaces, nodes, PodDisruptionBudgets an operator may add).
var Controllers = []string{
	controlplane.ReplicaSetController, controlplane.DeploymentController, controlplane.DisruptionController,
	controlplane.GarbageCollectorController, controlplane.PodGarbageCollectorController,
	controlplane.NamespaceController, controlplane.ServiceAccountController, controlplane.RootCAPublisherController,
	controlplane.NodeLifecycleController, controlplane.TaintEvictionController,
}

// waitNamespaceReady waits until the controller manager has given ns its
// default service account and its kube-root-ca.crt.
func (s *Sandbox) waitNamespaceReady(ctx context.Context, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	for {
		_, last = s.Admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if last == nil {
			_, last = s.Admin.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		}
		if last == nil {
			return nil
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("waiting for the controller manager to set up namespace %s (service account default, configmap kube-root-ca.crt): %w; its log is %s",
				ns, last, s.CP.ControllerLogPath("kube-controller-manager"))
		}
	}
}

// checkRuntimeGivesPodIPs refuses a fake-runtime built before it gave each
// pod an IP of its own (--pod-ip-range), which the pods' apps send from.
func checkRuntimeGivesPodIPs(ctx context.Context, bin string) error {
	out, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "--pod-ip-range") {
		return fmt.Errorf("%s has no --pod-ip-range: it was built before pods got IPs of their own; run `make kubelet` to build it again", bin)
	}
	return nil
}

// NodeKubeconfig is the kubeconfig with node's identity (system:node:NAME),
// which its agent uses.
func (s *Sandbox) NodeKubeconfig(node string) string {
	return filepath.Join(s.dir, "kubeconfigs", node)
}

// BuildRobotPod is the example pod of the OpenShift documentation's procedure (package workload).
var BuildRobotPod = workload.BuildRobotPod

// ReplicaSets are the sandbox's workloads, replicas pods each, spread one
// per node by the scheduler: the documentation's nginx as build-robot
// (namespace build), a plain web server and a legacy client, both with the
// default kube-api-access volume (namespace apps). Drained or evicted pods
// come back on another node, as on a real cluster. Each pod's AppLabel
// says what kind of app it runs: nginx and web reload their token,
// legacy caches it.
func ReplicaSets(replicas int32) []*appsv1.ReplicaSet {
	set := func(name, namespace string, kind AppKind, spec corev1.PodSpec) *appsv1.ReplicaSet {
		labels := map[string]string{"app": name}
		podLabels := map[string]string{"app": name, AppLabel: string(kind)}
		// A preference, not a rule: a drained node's pods must find room
		// on the others.
		spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: corev1.LabelHostname,
			WhenUnsatisfiable: corev1.ScheduleAnyway, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}}
		return &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: ptr.To(replicas),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels}, Spec: spec},
			},
		}
	}
	return []*appsv1.ReplicaSet{
		set("nginx", NamespaceBuild, AppReloading, workload.BuildRobotSpec("")),
		set("web", NamespaceApps, AppReloading, corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1"}}}),
		set("legacy", NamespaceApps, AppCaching, corev1.PodSpec{Containers: []corev1.Container{{Name: "legacy", Image: "registry.example/legacy-sdk:1"}}}),
	}
}

func (s *Sandbox) observe(e kubeletsim.Event) {
	s.mu.Lock()
	hook, apps := s.nodeHook, s.apps
	if e.Kind == kubeletsim.EventPodSynced && !s.synced[e.PodUID] {
		s.synced[e.PodUID] = true
		close(s.change)
		s.change = make(chan struct{})
	}
	s.mu.Unlock()
	if apps != nil {
		apps.observe(e)
	}
	if hook != nil {
		hook(e)
	}
}

// AppReports are the figures of every app that ran so far.
func (s *Sandbox) AppReports() []AppReport {
	s.mu.Lock()
	apps := s.apps
	s.mu.Unlock()
	if apps == nil {
		return nil
	}
	return apps.reports()
}

// setNodeHook makes f see every simulated node's events.
func (s *Sandbox) setNodeHook(f func(kubeletsim.Event)) {
	s.mu.Lock()
	s.nodeHook = f
	s.mu.Unlock()
}

// waitPodsSynced waits until the workloads' want pods exist and each has
// had its volumes written once.
func (s *Sandbox) waitPodsSynced(ctx context.Context, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	missing := want
	for {
		s.mu.Lock()
		change := s.change
		s.mu.Unlock()
		pods, err := s.workloadPods(ctx)
		if err == nil {
			missing = want - len(pods)
			s.mu.Lock()
			for _, p := range pods {
				if !s.synced[p.UID] {
					missing++
				}
			}
			s.mu.Unlock()
			if missing <= 0 {
				return nil
			}
		}
		select {
		case <-change:
		case <-time.After(time.Second): // pods created since the list
		case <-ctx.Done():
			return fmt.Errorf("waiting for the workloads' pods to start: %d of %d not running with their tokens on disk: %w", missing, want, ctx.Err())
		}
	}
}

// waitPodsRunning waits until the workloads' want pods exist, each
// Running with its tokens on disk, for nodes whose kubelet tells nothing
// but the API server and the files.
func (s *Sandbox) waitPodsRunning(ctx context.Context, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	for {
		pods, err := s.workloadPods(ctx)
		switch {
		case err != nil:
			last = err.Error()
		case len(pods) < want:
			last = fmt.Sprintf("%d of %d pods exist", len(pods), want)
		default:
			running := 0
			for _, p := range pods {
				if p.Status.Phase == corev1.PodRunning {
					running++
				}
			}
			c, err := s.census(ctx, "")
			switch {
			case err != nil:
				last = err.Error()
			case running < want:
				last = fmt.Sprintf("%d of %d pods Running", running, want)
			case c.Live < TokensPerNode*len(s.Nodes):
				last = fmt.Sprintf("%d of %d tokens on disk", c.Live, TokensPerNode*len(s.Nodes))
			default:
				return nil
			}
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return fmt.Errorf("waiting for the workloads' pods to start: %s: %w; the kubelets' logs are in %s", last, ctx.Err(), filepath.Join(s.dir, "logs"))
		}
	}
}

// workloadPods lists the workloads' pods that are not being deleted.
func (s *Sandbox) workloadPods(ctx context.Context) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, ns := range []string{NamespaceBuild, NamespaceApps} {
		list, err := s.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing pods in %s: %w", ns, err)
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// Dir is where the sandbox writes.
func (s *Sandbox) Dir() string { return s.dir }

// Stop ends the operator, the nodes and the control plane; a temporary
// directory goes too.
func (s *Sandbox) Stop() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.CP != nil {
		s.CP.Stop()
	}
	if s.removeDir {
		_ = os.RemoveAll(s.dir)
	}
}

// errNotOK is returned when the scenario ran to its end but an invariant
// did not hold, the procedure did not complete, or apps still fail.
var errNotOK = errors.New("not OK: an invariant did not hold, a token is not fresh, or an app still fails to authenticate (the summary says which)")
