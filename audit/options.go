package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/cli"
)

// Source is one way audit events reach tokenroll: the webhook or the log.
type Source interface {
	// Name is "webhook" or "log".
	Name() string
	// Run reads events until ctx ends.
	Run(ctx context.Context) error
}

// Options configure the audit sources. Neither set: no source.
type Options struct {
	// WebhookListen is the webhook's host:port; empty: no webhook.
	WebhookListen string
	// WebhookCert and WebhookKey are its serving certificate and key.
	WebhookCert, WebhookKey string
	// WebhookClientCA signs the API servers' client certificates.
	WebhookClientCA string
	// WebhookClientNames, when set, are the only client certificate
	// common names accepted.
	WebhookClientNames []string
	// WebhookMaxBodyBytes bounds one batch.
	WebhookMaxBodyBytes int64
	// WebhookMaxConcurrent bounds the batches handled at once.
	WebhookMaxConcurrent int
	// Logs are the audit log files to follow; empty: no log source.
	Logs []string
	// LogCheckpointDir holds one checkpoint per log.
	LogCheckpointDir string
	// LogPollInterval is how often each log is read.
	LogPollInterval time.Duration
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		WebhookMaxBodyBytes:  16 << 20,
		WebhookMaxConcurrent: 4,
		LogCheckpointDir:     "/var/lib/tokenroll/audit",
		LogPollInterval:      500 * time.Millisecond,
	}
}

// AddFlags adds the audit flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.WebhookListen, "audit-webhook-listen", o.WebhookListen, "host:port on which to receive the API servers' audit events over HTTPS (their --audit-webhook-config-file, batch mode); empty: no webhook.")
	fs.StringVar(&o.WebhookCert, "audit-webhook-cert", o.WebhookCert, "PEM serving certificate of the audit webhook.")
	fs.StringVar(&o.WebhookKey, "audit-webhook-key", o.WebhookKey, "PEM private key of the audit webhook.")
	fs.StringVar(&o.WebhookClientCA, "audit-webhook-client-ca", o.WebhookClientCA, "PEM CA certificates that sign the API servers' client certificates; a client without such a certificate is refused. Use a CA that signs nothing else, or set --audit-webhook-client-name.")
	fs.StringSliceVar(&o.WebhookClientNames, "audit-webhook-client-name", o.WebhookClientNames, "Common names a client certificate may have (repeatable); empty: any the CA signed.")
	fs.Int64Var(&o.WebhookMaxBodyBytes, "audit-webhook-max-body-bytes", o.WebhookMaxBodyBytes, "Largest batch accepted (a larger one is refused with 413).")
	fs.IntVar(&o.WebhookMaxConcurrent, "audit-webhook-max-concurrent", o.WebhookMaxConcurrent, "Batches handled at once; more are answered 429 and the API server sends them again.")
	fs.StringSliceVar(&o.Logs, "audit-log", o.Logs, "kube-apiserver audit log to follow (JSON lines), one per API server; repeatable or comma-separated, e.g. /var/log/kube-apiserver/audit.log.")
	fs.StringVar(&o.LogCheckpointDir, "audit-log-checkpoint-dir", o.LogCheckpointDir, "Directory of the audit logs' checkpoints (one small file per log), so a restart resumes where it stopped.")
	fs.DurationVar(&o.LogPollInterval, "audit-log-poll-interval", o.LogPollInterval, "How often each audit log is read.")
}

// Enabled tells whether any source is configured.
func (o *Options) Enabled() bool { return o.WebhookListen != "" || len(o.Logs) > 0 }

// Validate checks every flag and returns every problem.
func (o *Options) Validate() error {
	var errs []error
	webhookSet := o.WebhookCert != "" || o.WebhookKey != "" || o.WebhookClientCA != "" || len(o.WebhookClientNames) > 0
	if o.WebhookListen == "" && webhookSet {
		errs = append(errs, errors.New("--audit-webhook-cert, --audit-webhook-key, --audit-webhook-client-ca and --audit-webhook-client-name need --audit-webhook-listen"))
	}
	if o.WebhookListen != "" {
		errs = append(errs, cli.CheckAddr("audit-webhook-listen", o.WebhookListen))
		for flag, v := range map[string]string{"audit-webhook-cert": o.WebhookCert, "audit-webhook-key": o.WebhookKey, "audit-webhook-client-ca": o.WebhookClientCA} {
			if v == "" {
				errs = append(errs, fmt.Errorf("--%s is required with --audit-webhook-listen", flag))
			} else {
				errs = append(errs, cli.CheckFile(flag, v))
			}
		}
	}
	if o.WebhookMaxBodyBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("--audit-webhook-max-body-bytes=%d: must be at least 65536", o.WebhookMaxBodyBytes))
	}
	if o.WebhookMaxConcurrent < 1 {
		errs = append(errs, fmt.Errorf("--audit-webhook-max-concurrent=%d: must be at least 1", o.WebhookMaxConcurrent))
	}
	seen := map[string]bool{}
	for _, p := range o.Logs {
		switch {
		case !filepath.IsAbs(p):
			errs = append(errs, fmt.Errorf("--audit-log=%q: must be an absolute path", p))
		case seen[filepath.Clean(p)]:
			errs = append(errs, fmt.Errorf("--audit-log=%q: given twice", p))
		}
		seen[filepath.Clean(p)] = true
	}
	if len(o.Logs) > 0 {
		errs = append(errs, cli.CheckAbsDir("audit-log-checkpoint-dir", o.LogCheckpointDir))
		errs = append(errs, cli.CheckPositive("audit-log-poll-interval", o.LogPollInterval, 10*time.Millisecond))
	}
	return errors.Join(errs...)
}

// NewSources builds the configured sources, all delivering to sink, their
// metrics on reg. The webhook listens at once. Nothing runs until each
// Source's Run.
func (o *Options) NewSources(sink Sink, reg prometheus.Registerer, log *zap.Logger, clk clock.WithTicker) ([]Source, error) {
	if !o.Enabled() {
		return nil, nil
	}
	s := newStream(sink, NewMetrics(reg), log, clk)
	var out []Source
	if len(o.Logs) > 0 {
		l, err := newLogSource(LogConfig{Paths: slices.Clone(o.Logs), CheckpointDir: o.LogCheckpointDir, PollInterval: o.LogPollInterval}, s, log, clk)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	if o.WebhookListen != "" {
		w, err := newWebhook(WebhookConfig{
			Addr: o.WebhookListen, CertFile: o.WebhookCert, KeyFile: o.WebhookKey, ClientCAFile: o.WebhookClientCA,
			ClientNames: slices.Clone(o.WebhookClientNames), MaxBodyBytes: o.WebhookMaxBodyBytes, MaxConcurrent: o.WebhookMaxConcurrent,
		}, s, log)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}
