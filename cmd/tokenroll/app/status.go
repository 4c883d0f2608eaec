package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/internal/version"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
)

// clusterOptions select the cluster and tokenroll's namespace, for the
// commands an administrator runs.
type clusterOptions struct {
	// Kubeconfig selects the cluster, as kubectl does.
	Kubeconfig string
	// Namespace is where the coordinator keeps its state.
	Namespace string
	// Gate is the revision gate provider to read.
	Gate string
}

func newClusterOptions() clusterOptions {
	ns := os.Getenv("TOKENROLL_NAMESPACE")
	if ns == "" {
		ns = "tokenroll"
	}
	return clusterOptions{Namespace: ns, Gate: "auto"}
}

func (o *clusterOptions) addFlags(fs *pflag.FlagSet, withGate bool) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file (default $KUBECONFIG or ~/.kube/config).")
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "The coordinator's namespace (default $TOKENROLL_NAMESPACE or tokenroll).")
	if withGate {
		fs.StringVar(&o.Gate, "gate", o.Gate, "Revision gate to read: "+strings.Join(coordinator.GateNames(), ", ")+" (as the coordinator's --gate).")
	}
}

func (o *clusterOptions) validate() error {
	errs := []error{cli.CheckFile("kubeconfig", o.Kubeconfig), cli.CheckOneOf("gate", o.Gate, coordinator.GateNames()...)}
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required"))
	}
	return errors.Join(errs...)
}

func (o *clusterOptions) clients() (kubernetes.Interface, dynamic.Interface, error) {
	cfg, err := cli.RestConfig(o.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.UserAgent = "tokenroll-cli/" + version.Version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	return client, dyn, err
}

// apiClient is the tokenroll.io client: TokenRollouts.
func (o *clusterOptions) apiClient() (versioned.Interface, error) {
	cfg, err := cli.RestConfig(o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "tokenroll-cli/" + version.Version
	return versioned.NewForConfig(cfg)
}

// gateAndIssuer reads the gate once and the signing issuer.
func (o *clusterOptions) gateAndIssuer(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface) (coordinator.GateState, string, error) {
	gate, err := coordinator.NewGate(ctx, o.Gate, client, dyn)
	if err != nil {
		return coordinator.GateState{}, "", err
	}
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := gate.Start(gctx, func() {}); err != nil {
		return coordinator.GateState{}, "", fmt.Errorf("reading the revision gate: %w", err)
	}
	iss, err := issuer.Discover(ctx, client.Discovery().RESTClient())
	if err != nil {
		return coordinator.GateState{}, "", fmt.Errorf("reading the API server's issuer (OIDC discovery): %w", err)
	}
	return gate.State().WithDiscovery(iss), iss, nil
}

// statusOptions configure `tokenroll status`.
type statusOptions struct {
	clusterOptions
	// Output is table or json.
	Output string
}

func newStatusOptions() *statusOptions {
	return &statusOptions{clusterOptions: newClusterOptions(), Output: "table"}
}

func (o *statusOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs, true)
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Output format: table or json.")
}

func (o *statusOptions) Validate() error {
	return errors.Join(o.validate(), cli.CheckOneOf("output", o.Output, "table", "json"))
}

func (o *statusOptions) run(ctx context.Context, e cli.Env) error {
	client, dyn, err := o.clients()
	if err != nil {
		return err
	}
	gate, iss, err := o.gateAndIssuer(ctx, client, dyn)
	if err != nil {
		return err
	}
	api, err := o.apiClient()
	if err != nil {
		return err
	}
	rep, err := coordinator.BuildStatus(ctx, client, api, o.Namespace, iss, gate, time.Now())
	if err != nil {
		return err
	}
	if o.Output == "json" {
		return coordinator.WriteStatusJSON(e.Stdout, rep)
	}
	return coordinator.WriteStatusTable(e.Stdout, rep)
}
