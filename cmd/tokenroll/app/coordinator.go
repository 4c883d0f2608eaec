package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// coordinatorOptions configure `tokenroll coordinator`.
type coordinatorOptions struct {
	// Kubeconfig is empty in a cluster.
	Kubeconfig string
	// Namespace holds the Lease.
	Namespace string
	// LeaseName names the leader-election Lease.
	LeaseName string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader
	// election timings.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Gate is the revision gate provider.
	Gate string
	// Strategy is the default remediation.
	Strategy string
	// MaxUnavailable is a count or a percentage of nodes.
	MaxUnavailable string
	// MetricsBindAddress serves /metrics, /healthz and /readyz.
	MetricsBindAddress string
}

func newCoordinatorOptions() *coordinatorOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "tokenroll"
	}
	return &coordinatorOptions{
		Namespace: ns, LeaseName: "tokenroll-coordinator",
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Gate: "auto", Strategy: "kubelet-restart", MaxUnavailable: "1", MetricsBindAddress: ":8080",
	}
}

func (o *coordinatorOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty means the pod's service account.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the leader-election Lease (default $POD_NAMESPACE or tokenroll).")
	fs.StringVar(&o.LeaseName, "lease-name", o.LeaseName, "Name of the leader-election Lease.")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "How long a leader's Lease is valid without renewal.")
	fs.DurationVar(&o.RenewDeadline, "renew-deadline", o.RenewDeadline, "How long the leader keeps trying to renew before it gives up leadership.")
	fs.DurationVar(&o.RetryPeriod, "retry-period", o.RetryPeriod, "Time between leader-election attempts.")
	fs.StringVar(&o.Gate, "gate", o.Gate, "Revision gate: auto, openshift, static-pods or none.")
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation: kubelet-restart, pod-restart or reboot.")
	fs.StringVar(&o.MaxUnavailable, "max-unavailable", o.MaxUnavailable, "Most nodes disrupted at once, as a number or a percentage (counting nodes already NotReady or cordoned).")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address serving /metrics, /healthz and /readyz.")
}

func (o *coordinatorOptions) Validate() error {
	var errs []error
	errs = append(errs, checkFile("kubeconfig", o.Kubeconfig))
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required"))
	}
	if o.LeaseName == "" {
		errs = append(errs, errors.New("--lease-name is required"))
	}
	if o.LeaseDuration <= o.RenewDeadline {
		errs = append(errs, fmt.Errorf("--lease-duration=%s must be longer than --renew-deadline=%s", o.LeaseDuration, o.RenewDeadline))
	}
	// client-go's leader election requires renew-deadline > 1.2 * retry-period.
	if o.RetryPeriod <= 0 || float64(o.RenewDeadline) <= 1.2*float64(o.RetryPeriod) {
		errs = append(errs, fmt.Errorf("--renew-deadline=%s must be more than 1.2 times --retry-period=%s, which must be positive", o.RenewDeadline, o.RetryPeriod))
	}
	errs = append(errs,
		checkOneOf("gate", o.Gate, "auto", "openshift", "static-pods", "none"),
		checkOneOf("strategy", o.Strategy, "kubelet-restart", "pod-restart", "reboot"),
		checkMaxUnavailable(o.MaxUnavailable),
		checkAddr("metrics-bind-address", o.MetricsBindAddress))
	return errors.Join(errs...)
}

func checkMaxUnavailable(v string) error {
	n, pct := strings.CutSuffix(v, "%")
	i, err := strconv.Atoi(n)
	switch {
	case err != nil:
		return fmt.Errorf("--max-unavailable=%q: want a number of nodes (1) or a percentage (10%%)", v)
	case i < 1:
		return fmt.Errorf("--max-unavailable=%q: must be at least 1", v)
	case pct && i > 100:
		return fmt.Errorf("--max-unavailable=%q: a percentage must be at most 100%%", v)
	}
	return nil
}

func (o *coordinatorOptions) run(context.Context, env) error {
	return notImplemented("tokenroll coordinator", 5)
}
