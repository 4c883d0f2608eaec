package audit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tokenroll/tokenroll/protocol"
)

// WebhookConfig configures the webhook source.
type WebhookConfig struct {
	// Addr is the host:port to listen on.
	Addr string
	// CertFile and KeyFile are the serving certificate and key.
	CertFile, KeyFile string
	// ClientCAFile holds the CA certificates that sign the API servers'
	// client certificates; a connection without one is refused.
	ClientCAFile string
	// ClientNames, when set, are the only common names a client
	// certificate may have (for a CA that signs other clients too).
	ClientNames []string
	// MaxBodyBytes bounds one batch.
	MaxBodyBytes int64
	// MaxConcurrent bounds the batches handled at once; more are refused
	// with 429 and the API server sends them again.
	MaxConcurrent int
}

// Webhook receives audit.k8s.io/v1 EventList batches from the API servers'
// webhook backend (--audit-webhook-config-file, batch mode) over HTTPS,
// from clients with a certificate the given CA signed.
type Webhook struct {
	cfg    WebhookConfig
	ln     net.Listener
	srv    *http.Server
	stream *stream
	sem    chan struct{}
	log    *zap.Logger
}

// Name is "webhook".
func (w *Webhook) Name() string { return SourceWebhook }

// Addr is the address the webhook listens on.
func (w *Webhook) Addr() string { return w.ln.Addr().String() }

// newWebhook loads the certificates and listens at once, so a bad address
// or file is an error before anything runs.
func newWebhook(cfg WebhookConfig, s *stream, log *zap.Logger) (*Webhook, error) {
	cert, err := loadServingCert(cfg.CertFile, cfg.KeyFile,
		func(leaf *x509.Certificate) {
			log.Info("Loaded the audit webhook's renewed serving certificate", zap.String("file", cfg.CertFile),
				zap.String("serial", leaf.SerialNumber.String()), zap.Time("notAfter", leaf.NotAfter))
		},
		func(err error) {
			s.logLimited("webhook/certificate", "Reloading the audit webhook's serving certificate failed; serving the previous one", err)
		})
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(cfg.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading --audit-webhook-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--audit-webhook-client-ca %s holds no PEM certificate", cfg.ClientCAFile)
	}
	w := &Webhook{cfg: cfg, stream: s, sem: make(chan struct{}, cfg.MaxConcurrent), log: log}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: cert.GetCertificate,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      pool,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", w.serve)
	w.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	// The server's own errors, TLS handshakes refused above all (a client
	// without a certificate the CA signed), are counted and logged at most
	// once a minute.
	w.srv.ErrorLog = stdlog.New(serverErrors{w}, "", 0)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening for audit webhook batches on --audit-webhook-listen %s: %w", cfg.Addr, err)
	}
	w.ln = ln
	return w, nil
}

// Run serves until ctx ends, then shuts down, finishing the batches in
// hand, with a fresh timeout (the cancelled ctx would cut them).
func (w *Webhook) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- w.srv.ServeTLS(w.ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("audit webhook on %s: %w", w.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down the audit webhook: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (w *Webhook) serve(rw http.ResponseWriter, r *http.Request) {
	m := w.stream.metrics
	if r.Method != http.MethodPost {
		m.webhookRequests.WithLabelValues(resultMethod).Inc()
		http.Error(rw, "POST an audit.k8s.io/v1 EventList", http.StatusMethodNotAllowed)
		return
	}
	if len(w.cfg.ClientNames) > 0 {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !slices.Contains(w.cfg.ClientNames, r.TLS.PeerCertificates[0].Subject.CommonName) {
			m.webhookRequests.WithLabelValues(resultForbidden).Inc()
			http.Error(rw, "client certificate not allowed", http.StatusForbidden)
			return
		}
	}
	if sb, ok := w.stream.sink.(Standby); ok && !sb.Accepting() {
		m.webhookRequests.WithLabelValues(resultStandby).Inc()
		// A new connection for the resent batch: this one leads here.
		rw.Header().Set("Connection", "close")
		rw.Header().Set("Retry-After", "1")
		http.Error(rw, "this tokenroll-coordinator replica does not lead; send the batch again", http.StatusServiceUnavailable)
		return
	}
	select {
	case w.sem <- struct{}{}:
		defer func() { <-w.sem }()
	default:
		m.webhookRequests.WithLabelValues(resultBusy).Inc()
		rw.Header().Set("Retry-After", "1")
		http.Error(rw, "busy", http.StatusTooManyRequests)
		return
	}
	if r.ContentLength > w.cfg.MaxBodyBytes {
		w.tooLarge(rw, r.ContentLength)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, w.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			w.tooLarge(rw, -1)
			return
		}
		m.webhookRequests.WithLabelValues(resultMalformed).Inc()
		http.Error(rw, "reading the batch failed", http.StatusBadRequest)
		return
	}
	err = ParseList(body,
		func(ev Event) { w.stream.deliver(SourceWebhook, ev) },
		func(err error) { w.stream.skipped(SourceWebhook, err) })
	if err != nil {
		m.webhookRequests.WithLabelValues(resultMalformed).Inc()
		w.stream.skipped(SourceWebhook, err)
		// 400: the API server does not resend a batch it was told is bad.
		http.Error(rw, "not an audit.k8s.io/v1 EventList: "+err.Error(), http.StatusBadRequest)
		return
	}
	m.webhookRequests.WithLabelValues(resultAccepted).Inc()
	m.webhookBytes.Add(float64(len(body)))
	rw.WriteHeader(http.StatusOK)
}

type serverErrors struct{ w *Webhook }

func (e serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	key := "webhook/server"
	if strings.Contains(msg, "TLS handshake error") {
		e.w.stream.metrics.webhookRequests.WithLabelValues(resultHandshake).Inc()
		key = "webhook/handshake"
	}
	e.w.stream.logLimited(key, "Audit webhook connection refused or failed", errors.New(protocol.Truncate(msg)))
	return len(p), nil
}

func (w *Webhook) tooLarge(rw http.ResponseWriter, n int64) {
	w.stream.metrics.webhookRequests.WithLabelValues(resultTooLarge).Inc()
	w.stream.skipped(SourceWebhook, skip(SkipTooLarge, "batch of %d bytes (-1: unknown) is larger than the %d accepted; lower --audit-webhook-batch-max-size or raise --audit-webhook-max-body-bytes", n, w.cfg.MaxBodyBytes))
	http.Error(rw, "batch too large", http.StatusRequestEntityTooLarge)
}
