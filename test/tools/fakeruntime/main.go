// Command fake-runtime serves kubemark's fake container runtime (CRI
// runtime and image services, k8s.io/cri-client/pkg/fake) on a unix
// socket, for a hollow kubelet in another process. Its containers live as
// long as this process does, so they outlive a kubelet restart as on a real
// node, and a reboot (this process stopped and started) loses them. Each
// pod sandbox gets its own address from --pod-ip-range, as a network plugin
// gives pod IPs, where kubemark's fake gives every pod the same one.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	apitest "k8s.io/cri-api/pkg/apis/testing"
	fakeremote "k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

type options struct {
	// Endpoint is the unix socket to serve, as unix:///path.
	Endpoint string
	// PodIPRange is where pod sandboxes get their addresses from (zero:
	// the fake's one address for every pod).
	PodIPRange string
}

func (o *options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", o.Endpoint, "Unix socket to serve the CRI runtime and image services on (unix:///path/to/runtime.sock).")
	fs.StringVar(&o.PodIPRange, "pod-ip-range", o.PodIPRange, "CIDR each pod sandbox gets its own address from, such as 127.1.1.0/24 (empty: every pod gets "+apitest.FakePodSandboxIPs[0]+").")
}

func (o *options) Validate() error {
	var errs []error
	if !strings.HasPrefix(o.Endpoint, "unix:///") {
		errs = append(errs, fmt.Errorf("--endpoint %q: want unix:///absolute/path", o.Endpoint))
	}
	if o.PodIPRange != "" {
		if p, err := netip.ParsePrefix(o.PodIPRange); err != nil || !p.Addr().Is4() || p.Bits() > 30 {
			errs = append(errs, fmt.Errorf("--pod-ip-range %q: want an IPv4 CIDR of at least 4 addresses, such as 127.1.1.0/24", o.PodIPRange))
		}
	}
	return errors.Join(errs...)
}

func main() {
	o := &options{}
	fs := pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	o.AddFlags(fs)
	_ = fs.Parse(os.Args[1:])
	err := o.Validate()
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err = run(ctx, o)
		stop()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake-runtime:", err)
		os.Exit(1)
	}
}

// runtime is kubemark's fake with pod IPs of its own.
type runtime struct {
	*fakeremote.RemoteRuntime
	ipRange netip.Prefix
	// mu serializes sandbox creation: the fake reads the address to give
	// from a package variable.
	mu   sync.Mutex
	last netip.Addr
}

// RunPodSandbox gives the new sandbox the next address of the range that
// no live sandbox holds.
func (r *runtime) RunPodSandbox(ctx context.Context, req *kubeapi.RunPodSandboxRequest) (*kubeapi.RunPodSandboxResponse, error) {
	if !r.ipRange.IsValid() {
		return r.RemoteRuntime.RunPodSandbox(ctx, req)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ip, err := r.nextIP()
	if err != nil {
		return nil, err
	}
	apitest.FakePodSandboxIPs = []string{ip.String()}
	resp, err := r.RemoteRuntime.RunPodSandbox(ctx, req)
	if err == nil {
		r.last = ip
	}
	return resp, err
}

// nextIP goes round the range from the last address given, skipping the
// network and broadcast addresses and those live sandboxes hold, so an
// address is not given again at once.
func (r *runtime) nextIP() (netip.Addr, error) {
	held := map[string]bool{}
	r.RuntimeService.Lock()
	for _, s := range r.RuntimeService.Sandboxes {
		if s.Network != nil {
			held[s.Network.Ip] = true
		}
	}
	r.RuntimeService.Unlock()
	first := r.ipRange.Masked().Addr().Next()
	ip := r.last
	if !ip.IsValid() {
		ip = first
	} else {
		ip = ip.Next()
	}
	for range 1 << (32 - r.ipRange.Bits()) {
		if !r.ipRange.Contains(ip) || !r.ipRange.Contains(ip.Next()) {
			ip = first
		}
		if !held[ip.String()] {
			return ip, nil
		}
		ip = ip.Next()
	}
	return netip.Addr{}, fmt.Errorf("no free pod IP in %s: every address is held by a sandbox", r.ipRange)
}

func run(ctx context.Context, o *options) error {
	rt := &runtime{RemoteRuntime: fakeremote.NewFakeRemoteRuntime()}
	if o.PodIPRange != "" {
		rt.ipRange = netip.MustParsePrefix(o.PodIPRange)
	}
	// The kubelet refuses an image without a size ("Id or size of image is
	// not set"); the fake's default is 0.
	rt.ImageService.SetFakeImageSize(fakeImageSize)
	// Our own server, so that RunPodSandbox is ours; what the fake's Start
	// does besides serving is marking the runtime and network ready.
	rt.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	l, err := util.CreateListener(o.Endpoint)
	if err != nil {
		return fmt.Errorf("serving the fake runtime on %s: %w", o.Endpoint, err)
	}
	srv := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(srv, rt)
	kubeapi.RegisterImageServiceServer(srv, rt.RemoteRuntime)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	// The fake records every call for tests' assertions; the kubelet's
	// relists would grow that record without end.
	trim := time.NewTicker(time.Minute)
	defer trim.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-trim.C:
			rt.RuntimeService.Lock()
			rt.RuntimeService.Called = nil
			rt.RuntimeService.Unlock()
		}
	}
}

// fakeImageSize is the size every pulled image reports.
const fakeImageSize = 1 << 20
