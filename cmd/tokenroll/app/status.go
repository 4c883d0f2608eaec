package app

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// statusOptions configure `tokenroll status`.
type statusOptions struct {
	// Kubeconfig selects the cluster, as kubectl does.
	Kubeconfig string
	// Output is table or json.
	Output string
}

func newStatusOptions() *statusOptions { return &statusOptions{Output: "table"} }

func (o *statusOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file (default $KUBECONFIG or ~/.kube/config).")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
}

func (o *statusOptions) Validate() error {
	return errors.Join(checkFile("kubeconfig", o.Kubeconfig), checkOneOf("output", o.Output, "table", "json"))
}

func (o *statusOptions) run(context.Context, env) error { return notImplemented("tokenroll status", 5) }
