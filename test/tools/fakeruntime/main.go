// Command fake-runtime serves kubemark's fake container runtime (CRI
// runtime and image services, k8s.io/cri-client/pkg/fake) on a unix
// socket, for a hollow kubelet in another process. Its containers live as
// long as this process does, so they outlive a kubelet restart as on a real
// node, and a reboot (this process stopped and started) loses them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	fakeremote "k8s.io/cri-client/pkg/fake"
)

type options struct {
	// Endpoint is the unix socket to serve, as unix:///path.
	Endpoint string
}

func (o *options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", o.Endpoint, "Unix socket to serve the CRI runtime and image services on (unix:///path/to/runtime.sock).")
}

func (o *options) Validate() error {
	if !strings.HasPrefix(o.Endpoint, "unix:///") {
		return fmt.Errorf("--endpoint %q: want unix:///absolute/path", o.Endpoint)
	}
	return nil
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

func run(ctx context.Context, o *options) error {
	rt := fakeremote.NewFakeRemoteRuntime()
	// The kubelet refuses an image without a size ("Id or size of image is
	// not set"); the fake's default is 0.
	rt.ImageService.SetFakeImageSize(fakeImageSize)
	if err := rt.Start(o.Endpoint); err != nil {
		return fmt.Errorf("serving the fake runtime on %s: %w", o.Endpoint, err)
	}
	defer rt.Stop()
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
