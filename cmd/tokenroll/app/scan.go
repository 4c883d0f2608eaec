package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/tokenroll/tokenroll/protocol"
)

// scanOptions configure `tokenroll scan`.
type scanOptions struct {
	// KubeletRoot is the directory to scan.
	KubeletRoot string
	// Issuer is the expected issuer; empty with no Kubeconfig means none is
	// checked.
	Issuer string
	// Kubeconfig, when set, reads the expected issuer from the API server's
	// OIDC discovery.
	Kubeconfig string
	// Now overrides the clock (RFC 3339), for reproducible reports.
	Now string
	// Grace is how long past its refresh time a token may be before it is
	// overdue.
	Grace time.Duration
	// Output is table or json.
	Output string
	// FailOn lists states that make the scan exit 1.
	FailOn []string
}

func newScanOptions() *scanOptions {
	return &scanOptions{KubeletRoot: "/var/lib/kubelet", Grace: 5 * time.Minute, Output: "table"}
}

func (o *scanOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.KubeletRoot, "kubelet-root", o.KubeletRoot, "Kubelet root directory to scan.")
	fs.StringVar(&o.Issuer, "issuer", o.Issuer, "Expected service-account issuer; tokens from another are issuer-mismatch.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Read the expected issuer from this cluster's OIDC discovery instead of --issuer.")
	fs.StringVar(&o.Now, "now", o.Now, "Judge the tokens as of this time (RFC 3339) instead of the clock.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long past its refresh time a token may be before it counts as overdue.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
	fs.StringSliceVar(&o.FailOn, "fail-on", o.FailOn, "Exit 1 when any token is in one of these states (comma-separated).")
}

func (o *scanOptions) Validate() error {
	var errs []error
	errs = append(errs, checkRequired("kubelet-root", o.KubeletRoot), checkFile("kubeconfig", o.Kubeconfig),
		checkPositive("grace", o.Grace, 0), checkOneOf("output", o.Output, "table", "json"))
	if o.Issuer != "" && o.Kubeconfig != "" {
		errs = append(errs, errors.New("--issuer and --kubeconfig both set: give one (--kubeconfig reads the issuer from the API server)"))
	}
	if o.Now != "" {
		if _, err := time.Parse(time.RFC3339, o.Now); err != nil {
			errs = append(errs, fmt.Errorf("--now=%q: want RFC 3339, e.g. 2026-11-27T10:00:00Z", o.Now))
		}
	}
	for _, s := range o.FailOn {
		if !protocol.State(s).Valid() {
			errs = append(errs, fmt.Errorf("--fail-on: unknown state %q; states are %v", s, protocol.States))
		}
	}
	return errors.Join(errs...)
}

func checkRequired(flag, value string) error {
	if value == "" {
		return fmt.Errorf("--%s is required", flag)
	}
	return nil
}

func (o *scanOptions) run(context.Context, env) error { return notImplemented("tokenroll scan", 3) }
