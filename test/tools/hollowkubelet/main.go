// Command hollow-kubelet runs the kubelet code of the pinned Kubernetes
// release as a "hollow" node, with kubemark's wiring (k8s.io/kubernetes/pkg/kubemark):
// the real RunKubelet, volume plugins and token manager over a fake
// cadvisor, a fake mounter and no cgroups. Unlike kubemark's hollow-node it
// keeps its state in a fixed root directory and talks to a container
// runtime in another process (fake-runtime), so that a restart of this
// process is a kubelet restart on a node whose containers keep running.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	cadvisorapi "github.com/google/cadvisor/lib/model"
	"github.com/spf13/pflag"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/component-base/metrics/prometheus/restclient" // client metrics, as kubemark registers them
	"k8s.io/component-base/version"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/cmd/kubelet/app/options"
	cadvisortest "k8s.io/kubernetes/pkg/kubelet/cadvisor/testing"
	"k8s.io/kubernetes/pkg/kubelet/cm"
	"k8s.io/kubernetes/pkg/kubemark"
)

type hollowOptions struct {
	// NodeName is the node this kubelet registers and runs pods for.
	NodeName string
	// Kubeconfig holds the node's identity (system:node:NAME).
	Kubeconfig string
	// RootDir is the kubelet's --root-dir; it survives restarts.
	RootDir string
	// RuntimeEndpoint is fake-runtime's socket.
	RuntimeEndpoint string
	// BootIDFile holds the boot ID the node reports (read at start).
	BootIDFile string
	// NodeIP is the address the node reports (empty: the host's default,
	// as the kubelet picks it; the kubelet refuses a loopback address).
	NodeIP string
	// Address is where the kubelet API listens.
	Address string
	// Port serves the kubelet API on Address (0: not served).
	Port int
	// SyncFrequency is how often each pod is synced, its volumes
	// rewritten and its tokens refreshed when due.
	SyncFrequency time.Duration
	// MaxPods is the node's pod capacity.
	MaxPods int
}

func (o *hollowOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "name", o.NodeName, "Node name.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig with the node's identity (system:node:NAME in group system:nodes).")
	fs.StringVar(&o.RootDir, "root-dir", o.RootDir, "Kubelet root directory (pods, volumes, the Pods API socket); kept across restarts.")
	fs.StringVar(&o.RuntimeEndpoint, "runtime-endpoint", o.RuntimeEndpoint, "CRI endpoint of the fake runtime (unix:///path).")
	fs.StringVar(&o.BootIDFile, "boot-id-file", o.BootIDFile, "File holding the boot ID the node reports in status.nodeInfo.bootID.")
	fs.StringVar(&o.NodeIP, "node-ip", o.NodeIP, "IP address the node reports (default: the host's, as the kubelet picks it; not a loopback address).")
	fs.StringVar(&o.Address, "address", o.Address, "IP address the kubelet API listens on.")
	fs.IntVar(&o.Port, "port", o.Port, "Port of the kubelet API (0: not served).")
	fs.DurationVar(&o.SyncFrequency, "sync-frequency", o.SyncFrequency, "Pod sync period (the kubelet's --sync-frequency).")
	fs.IntVar(&o.MaxPods, "max-pods", o.MaxPods, "Pods the node accepts.")
}

func (o *hollowOptions) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("--name is required"))
	}
	if o.Kubeconfig == "" {
		errs = append(errs, errors.New("--kubeconfig is required"))
	}
	if !filepath.IsAbs(o.RootDir) {
		errs = append(errs, fmt.Errorf("--root-dir %q: want an absolute path", o.RootDir))
	}
	if !strings.HasPrefix(o.RuntimeEndpoint, "unix:///") {
		errs = append(errs, fmt.Errorf("--runtime-endpoint %q: want unix:///absolute/path", o.RuntimeEndpoint))
	}
	if o.BootIDFile == "" {
		errs = append(errs, errors.New("--boot-id-file is required"))
	}
	if o.Port < 0 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: want 0 to 65535", o.Port))
	}
	if o.SyncFrequency < time.Second {
		errs = append(errs, fmt.Errorf("--sync-frequency %s: want at least 1s", o.SyncFrequency))
	}
	if o.MaxPods < 1 {
		errs = append(errs, fmt.Errorf("--max-pods %d: want at least 1", o.MaxPods))
	}
	return errors.Join(errs...)
}

func main() {
	o := &hollowOptions{Address: "127.0.0.1", SyncFrequency: 10 * time.Second, MaxPods: 110}
	fs := pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	o.AddFlags(fs)
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
	_ = fs.Parse(os.Args[1:])
	err := o.Validate()
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err = run(ctx, o)
		stop()
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hollow-kubelet:", err)
		os.Exit(1)
	}
}

// machine is kubemark's fake cadvisor reporting the node's boot ID, which
// the kubelet copies into status.nodeInfo.bootID.
type machine struct {
	*cadvisortest.Fake
	bootID string
}

func (m machine) MachineInfo(logger klog.Logger) (*cadvisorapi.MachineInfo, error) {
	info, err := m.Fake.MachineInfo(logger)
	if err != nil {
		return nil, err
	}
	info.BootID = m.bootID
	return info, nil
}

func run(ctx context.Context, o *hollowOptions) error {
	klog.InfoS("hollow kubelet", "version", version.Get().GitVersion, "node", o.NodeName, "rootDir", o.RootDir)
	bootID, err := os.ReadFile(o.BootIDFile)
	if err != nil {
		return fmt.Errorf("reading the boot ID: %w", err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading --kubeconfig %s: %w", o.Kubeconfig, err)
	}
	rc.UserAgent = "hollow-kubelet"
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := clientset.NewForConfig(rc)
	if err != nil {
		return err
	}

	// GetHollowKubeletConfig makes temporary directories for a root it
	// picks itself; point TMPDIR into ours so they stay inside it, then
	// replace every path with a fixed one.
	scratch := filepath.Join(o.RootDir, "hollow-tmp")
	if err := os.RemoveAll(scratch); err != nil {
		return err
	}
	if err := os.MkdirAll(scratch, 0o750); err != nil {
		return err
	}
	if err := os.Setenv("TMPDIR", scratch); err != nil {
		return err
	}
	f, c := kubemark.GetHollowKubeletConfig(&kubemark.HollowKubeletOptions{
		NodeName: o.NodeName, KubeletPort: o.Port, MaxPods: o.MaxPods, NodeLabels: map[string]string{},
	})
	f.RootDirectory = o.RootDir
	f.CertDirectory = filepath.Join(o.RootDir, "pki")
	f.NodeIP = o.NodeIP
	c.StaticPodPath = filepath.Join(o.RootDir, "static-pods")
	c.PodLogsDir = filepath.Join(o.RootDir, "pod-logs")
	for _, d := range []string{c.StaticPodPath, c.PodLogsDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	c.ContainerRuntimeEndpoint = o.RuntimeEndpoint
	c.ImageServiceEndpoint = o.RuntimeEndpoint
	c.Address = o.Address
	c.EnableServer = o.Port > 0
	c.ReadOnlyPort = 0
	c.HealthzPort = 0
	c.SyncFrequency.Duration = o.SyncFrequency

	heartbeat := *rc
	heartbeat.Timeout = min(c.NodeStatusUpdateFrequency.Duration, time.Duration(c.NodeLeaseDurationSeconds)*time.Second)
	heartbeat.QPS = -1
	heartbeatClient, err := clientset.NewForConfig(&heartbeat)
	if err != nil {
		return err
	}

	runtimeService, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(o.RuntimeEndpoint).WithConnectionTimeout(15 * time.Second).Build(ctx)
	if err != nil {
		return fmt.Errorf("connecting to the runtime at %s: %w", o.RuntimeEndpoint, err)
	}
	imageService, err := remote.NewRemoteImageServiceBuilder().WithEndpoint(o.RuntimeEndpoint).WithConnectionTimeout(15 * time.Second).Build(ctx)
	if err != nil {
		return fmt.Errorf("connecting to the image service at %s: %w", o.RuntimeEndpoint, err)
	}

	hk := kubemark.NewHollowKubelet(f, c, client, heartbeatClient,
		machine{Fake: &cadvisortest.Fake{NodeName: o.NodeName}, bootID: strings.TrimSpace(string(bootID))},
		imageService, runtimeService, cm.NewStubContainerManager())
	if err := kubeletapp.RunKubelet(ctx, &options.KubeletServer{KubeletFlags: *hk.KubeletFlags, KubeletConfiguration: *hk.KubeletConfiguration}, hk.KubeletDeps); err != nil {
		return fmt.Errorf("running the kubelet: %w", err)
	}
	<-ctx.Done()
	return nil
}
