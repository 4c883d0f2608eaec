package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/issuer"
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
	// NodeName names the node in the report (default $NODE_NAME, else the
	// node the tokens name).
	NodeName string
}

func newScanOptions() *scanOptions {
	return &scanOptions{KubeletRoot: "/var/lib/kubelet", Grace: token.DefaultGrace, Output: "table", NodeName: os.Getenv("NODE_NAME")}
}

func (o *scanOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.KubeletRoot, "kubelet-root", o.KubeletRoot, "Kubelet root directory to scan.")
	fs.StringVar(&o.Issuer, "issuer", o.Issuer, "Expected service-account issuer; tokens from another are issuer-mismatch.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Read the expected issuer from this cluster's OIDC discovery instead of --issuer.")
	fs.StringVar(&o.Now, "now", o.Now, "Judge the tokens as of this time (RFC 3339) instead of the clock.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long past its refresh time a token may be before it counts as overdue.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
	fs.StringSliceVar(&o.FailOn, "fail-on", o.FailOn, "Exit 1 when any token is in one of these states (comma-separated).")
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "Node name for the report (default $NODE_NAME, else the node the tokens name); without the kubelet Pods API, tokens whose claims name another node are foreign.")
}

func (o *scanOptions) Validate() error {
	var errs []error
	errs = append(errs, cli.CheckDir("kubelet-root", o.KubeletRoot), cli.CheckFile("kubeconfig", o.Kubeconfig),
		cli.CheckPositive("grace", o.Grace, 0), cli.CheckOneOf("output", o.Output, "table", "json"))
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

func (o *scanOptions) run(ctx context.Context, e cli.Env) error {
	now := time.Now()
	if o.Now != "" {
		now, _ = time.Parse(time.RFC3339, o.Now)
	}
	expected := o.Issuer
	if o.Kubeconfig != "" {
		cfg, err := cli.RestConfig(o.Kubeconfig)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		if expected, err = issuer.Discover(ctx, client.Discovery().RESTClient()); err != nil {
			return fmt.Errorf("reading the expected issuer from %s: %w", cfg.Host, err)
		}
	}
	opts := scan.Options{Root: o.KubeletRoot, Node: o.NodeName, Now: now, ExpectedIssuer: expected, Grace: o.Grace}
	var err error
	if opts.Pods, opts.PodsAPI, err = podsapi.Ask(ctx, podsapi.SocketPath(o.KubeletRoot)); err != nil {
		e.Log.Warn("kubelet Pods API did not list the pods; tokens are attributed by their claims and none is judged orphaned", zap.String("podsAPI", string(opts.PodsAPI)), zap.Error(err))
	}
	report, err := scan.NewScanner().Scan(opts)
	if err != nil {
		return err
	}
	if o.Output == "json" {
		// The table lists them; JSON has them too, and here they go to
		// the log as well.
		for _, msg := range report.Errors {
			e.Log.Warn("part of the kubelet root could not be read", zap.String("error", protocol.Truncate(msg)))
		}
	}
	if o.Output == "json" {
		if err := scan.WriteJSON(e.Stdout, report); err != nil {
			return err
		}
	} else if err := scan.WriteTable(e.Stdout, report, expected); err != nil {
		return err
	}
	var hit []string
	for _, s := range o.FailOn {
		if n := report.Summary[protocol.State(s)]; n > 0 {
			hit = append(hit, fmt.Sprintf("%d %s", n, s))
		}
	}
	if len(hit) > 0 {
		return &cli.ExitError{Code: cli.ExitFailure, Err: fmt.Errorf("--fail-on: %s", strings.Join(hit, ", "))}
	}
	return nil
}
