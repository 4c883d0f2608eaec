package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/internal/version"
	"github.com/tokenroll/tokenroll/metrics"
)

// agentOptions configure `tokenroll agent`.
type agentOptions struct {
	// NodeName is the Node this agent reports on and acts for.
	NodeName string
	// KubeletRoot is the kubelet's root directory as mounted in the pod.
	KubeletRoot string
	// Kubeconfig is empty in a cluster (the pod's own service account).
	Kubeconfig string
	// Interval is the time between scans.
	Interval time.Duration
	// Grace is how long past its refresh time a token may be before it is
	// overdue (the kubelet rewrites volumes every 60-90 s).
	Grace time.Duration
	// IssuerRefresh is how often OIDC discovery is read again.
	IssuerRefresh time.Duration
	// MetricsBindAddress serves /metrics, /healthz and /readyz.
	MetricsBindAddress string
	// MaxTokenSeries caps the per-token metric series.
	MaxTokenSeries int
}

func newAgentOptions() *agentOptions {
	return &agentOptions{
		NodeName:           os.Getenv("NODE_NAME"),
		KubeletRoot:        "/var/lib/kubelet",
		Interval:           30 * time.Second,
		Grace:              5 * time.Minute,
		IssuerRefresh:      10 * time.Minute,
		MetricsBindAddress: ":8080",
		MaxTokenSeries:     500,
	}
}

func (o *agentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "Name of the Node this agent runs on (default $NODE_NAME, set from the downward API).")
	fs.StringVar(&o.KubeletRoot, "kubelet-root", o.KubeletRoot, "Kubelet root directory, mounted read-only.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty means the pod's service account.")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "Time between scans of the node's tokens.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long past its refresh time a token may be before it counts as overdue.")
	fs.DurationVar(&o.IssuerRefresh, "issuer-refresh-interval", o.IssuerRefresh, "How often the API server's issuer is read from OIDC discovery.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address serving /metrics, /healthz and /readyz.")
	fs.IntVar(&o.MaxTokenSeries, "max-token-series", o.MaxTokenSeries, "Most per-token metric series exported (only tokens that are not fresh get one).")
}

func (o *agentOptions) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or set $NODE_NAME from the downward API: spec.nodeName)"))
	}
	errs = append(errs,
		checkAbsDir("kubelet-root", o.KubeletRoot),
		checkFile("kubeconfig", o.Kubeconfig),
		checkPositive("interval", o.Interval, time.Second),
		checkPositive("grace", o.Grace, 0),
		checkPositive("issuer-refresh-interval", o.IssuerRefresh, 10*time.Second),
		checkAddr("metrics-bind-address", o.MetricsBindAddress))
	if o.MaxTokenSeries < 0 {
		errs = append(errs, fmt.Errorf("--max-token-series=%d: must be 0 or more", o.MaxTokenSeries))
	}
	return errors.Join(errs...)
}

func (o *agentOptions) run(ctx context.Context, e env) error {
	cfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "tokenroll-agent/" + version.Version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry("agent")
	srv, err := metrics.NewServer(o.MetricsBindAddress, reg, e.log)
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		NodeName: o.NodeName, KubeletRoot: o.KubeletRoot, Client: client,
		Interval: o.Interval, Grace: o.Grace, IssuerRefresh: o.IssuerRefresh,
		MaxTokenSeries: o.MaxTokenSeries, Registry: reg, Log: e.log.With(zap.String("node", o.NodeName)),
	})
	if err != nil {
		return err
	}
	e.log.Info("agent starting", zap.String("node", o.NodeName), zap.String("kubeletRoot", o.KubeletRoot),
		zap.Duration("interval", o.Interval), zap.String("metrics", srv.Addr()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(ctx) }()
	go func() {
		select {
		case <-a.Scanned():
			srv.SetReady(true)
		case <-ctx.Done():
		}
	}()
	runErr := a.Run(ctx)
	cancel()
	return errors.Join(runErr, <-srvErr)
}
