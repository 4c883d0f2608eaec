// Package sandbox assembles a whole local cluster for tokenroll: a real
// control plane (sandbox/controlplane) and simulated kubelets
// (sandbox/kubeletsim) running pods with projected tokens, among them the
// seed procedure's build-robot pod with a token for the audience "vault".
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

// Options say what sandbox to build.
type Options struct {
	// BinDir holds etcd and kube-apiserver; empty means the build cache.
	BinDir string
	// Dir holds everything the sandbox writes; empty means a temporary
	// directory removed at the end.
	Dir string
	// Nodes is how many simulated worker nodes run.
	Nodes int
	// APIServers is how many kube-apiservers share the one etcd.
	APIServers int
	// Issuer is the service-account issuer the control plane starts with.
	Issuer string
}

// Sandbox is a running control plane and its simulated nodes.
type Sandbox struct {
	opts       Options
	dir        string
	removeDir  bool
	CP         *controlplane.ControlPlane
	Admin      kubernetes.Interface
	Nodes      []*kubeletsim.Node
	Kubeconfig string

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	synced map[types.UID]bool
	change chan struct{}
}

// Namespaces the sandbox's workloads live in.
const (
	NamespaceBuild = "build" // the seed's build-robot pods
	NamespaceApps  = "apps"  // plain pods with the default kube-api-access volume
)

// Start builds the sandbox and returns once every node is Ready and every
// pod's tokens are on disk.
func Start(ctx context.Context, opts Options, log *zap.Logger) (_ *Sandbox, err error) {
	if opts.Nodes < 1 {
		return nil, fmt.Errorf("sandbox: need at least one node, got %d", opts.Nodes)
	}
	bins, err := controlplane.FindBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{opts: opts, dir: opts.Dir, synced: map[types.UID]bool{}, change: make(chan struct{})}
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
	log.Info("starting control plane", zap.Int("apiservers", opts.APIServers), zap.String("issuer", opts.Issuer), zap.String("dir", s.dir))
	s.CP, err = controlplane.Start(ctx, controlplane.Config{
		Binaries: bins, Dir: filepath.Join(s.dir, "controlplane"),
		APIServers: opts.APIServers, Issuers: []string{opts.Issuer},
	})
	if err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(s.dir, "kubeconfig")
	if err := controlplane.WriteKubeconfig(s.Kubeconfig, s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	if s.Admin, err = kubernetes.NewForConfig(s.CP.AdminConfig()); err != nil {
		return nil, err
	}
	for _, ns := range []string{NamespaceBuild, NamespaceApps} {
		if err := s.CP.PrepareNamespace(ctx, ns); err != nil {
			return nil, err
		}
	}
	if _, err := s.Admin.CoreV1().ServiceAccounts(NamespaceBuild).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "build-robot"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	for i := 1; i <= opts.Nodes; i++ {
		name := fmt.Sprintf("worker-%d", i)
		cfg, err := s.CP.NodeConfig(name)
		if err != nil {
			return nil, err
		}
		n, err := kubeletsim.New(kubeletsim.Config{
			Name: name, Root: filepath.Join(s.dir, "nodes", name), RESTConfig: cfg,
			Logger: log.Named("kubeletsim"), Observer: s.observe,
		})
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
		select {
		case <-n.Registered():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	log.Info("nodes registered", zap.Int("nodes", len(s.Nodes)))

	var uids []types.UID
	for _, n := range s.Nodes {
		for _, pod := range workloads(n.Name()) {
			out, err := s.Admin.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
			}
			uids = append(uids, out.UID)
		}
	}
	if err := s.waitSynced(ctx, uids); err != nil {
		return nil, err
	}
	log.Info("every pod running with its tokens on disk", zap.Int("pods", len(uids)))
	return s, nil
}

// BuildRobotPod is the seed procedure's example pod: nginx as the
// build-robot service account, with a two-hour token for the audience
// "vault" at vault-token.
func BuildRobotPod(name, namespace, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: "build-robot",
			Containers: []corev1.Container{{
				Name: "nginx", Image: "nginx",
				VolumeMounts: []corev1.VolumeMount{{Name: "vault-token", MountPath: "/var/run/secrets/tokens"}},
			}},
			Volumes: []corev1.Volume{{
				Name: "vault-token",
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", ExpirationSeconds: ptr.To[int64](7200), Audience: "vault"},
				}}}},
			}},
		},
	}
}

// workloads are the pods each node runs: the seed's nginx as build-robot
// and a plain pod with the default kube-api-access volume.
func workloads(node string) []*corev1.Pod {
	return []*corev1.Pod{
		BuildRobotPod("nginx-"+node, NamespaceBuild, node),
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web-" + node, Namespace: NamespaceApps},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "web", Image: "web"}}},
		},
	}
}

func (s *Sandbox) observe(e kubeletsim.Event) {
	if e.Kind != kubeletsim.EventPodSynced {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced[e.PodUID] {
		s.synced[e.PodUID] = true
		close(s.change)
		s.change = make(chan struct{})
	}
}

func (s *Sandbox) waitSynced(ctx context.Context, uids []types.UID) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		s.mu.Lock()
		missing := 0
		for _, u := range uids {
			if !s.synced[u] {
				missing++
			}
		}
		change := s.change
		s.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-change:
		case <-ctx.Done():
			return fmt.Errorf("waiting for pods to start: %d of %d not synced: %w", missing, len(uids), ctx.Err())
		}
	}
}

// Dir is where the sandbox writes.
func (s *Sandbox) Dir() string { return s.dir }

// PrintAccess tells a person how to reach the sandbox from another terminal.
func (s *Sandbox) PrintAccess(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "API server\t%s (%d kube-apiserver(s) behind a local load balancer)\n", s.CP.URL(), s.CP.APIServers())
	fmt.Fprintf(tw, "kubeconfig\t%s\n", s.Kubeconfig)
	fmt.Fprintf(tw, "issuer\t%s\n", s.opts.Issuer)
	fmt.Fprintf(tw, "logs\t%s\n", filepath.Join(s.CP.Dir(), "logs"))
	fmt.Fprintln(tw, "\nNODE\tKUBELET ROOT\tPODS API SOCKET")
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", n.Name(), n.Root(), n.PodsAPISocket())
	}
	tw.Flush()
	fmt.Fprintf(w, "\nFrom another terminal:\n  export KUBECONFIG=%s\n  kubectl get nodes -o wide; kubectl get pods -A\n", s.Kubeconfig)
}

// Stop ends the nodes and the control plane; a temporary directory goes too.
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

// Run starts the sandbox, prints how to reach it, and keeps it up until ctx
// ends (Ctrl-C), or stops at once when once is set.
func Run(ctx context.Context, opts Options, once bool, out io.Writer, log *zap.Logger) error {
	s, err := Start(ctx, opts, log)
	if err != nil {
		return err
	}
	defer s.Stop()
	s.PrintAccess(out)
	if once {
		fmt.Fprintln(out, "\n--once: the sandbox came up; stopping.")
		return nil
	}
	fmt.Fprintln(out, "\nThe sandbox runs until Ctrl-C.")
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), context.Canceled) {
		return context.Cause(ctx)
	}
	return nil
}
