package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/tokenroll/tokenroll/sandbox"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// sandboxOptions configure `tokenroll sandbox`.
type sandboxOptions struct {
	sandbox.Options
	// Once stops the sandbox as soon as it is up (for CI and smoke tests).
	Once bool
}

func newSandboxOptions() *sandboxOptions {
	return &sandboxOptions{Options: sandbox.Options{Nodes: 5, APIServers: 3, Issuer: controlplane.DefaultIssuer}}
}

func (o *sandboxOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "Directory holding etcd and kube-apiserver (default: what `make controlplane` built, or $"+controlplane.BinDirEnv+").")
	fs.StringVar(&o.Dir, "dir", o.Dir, "Directory for the sandbox's certificates, data, node roots and logs; kept afterwards (default: a temporary directory, removed).")
	fs.IntVar(&o.Nodes, "nodes", o.Nodes, "Number of simulated worker nodes.")
	fs.IntVar(&o.APIServers, "apiservers", o.APIServers, "Number of kube-apiservers (control-plane nodes) sharing one etcd.")
	fs.StringVar(&o.Issuer, "issuer", o.Issuer, "Service-account issuer the control plane starts with.")
	fs.BoolVar(&o.Once, "once", o.Once, "Stop as soon as the sandbox is up, instead of running until Ctrl-C.")
}

func (o *sandboxOptions) Validate() error {
	var errs []error
	if o.Nodes < 1 || o.Nodes > 500 {
		errs = append(errs, fmt.Errorf("--nodes=%d: must be from 1 to 500", o.Nodes))
	}
	if o.APIServers < 1 || o.APIServers > 5 {
		errs = append(errs, fmt.Errorf("--apiservers=%d: must be from 1 to 5", o.APIServers))
	}
	if o.Issuer == "" {
		errs = append(errs, errors.New("--issuer must not be empty"))
	}
	return errors.Join(errs...)
}

func (o *sandboxOptions) run(ctx context.Context, e env) error {
	return sandbox.Run(ctx, o.Options, o.Once, e.stdout, e.log)
}
