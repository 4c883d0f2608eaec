package policy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// AlertSource lists the alerts that are pending or firing.
type AlertSource interface {
	Alerts(ctx context.Context) ([]Alert, error)
}

// PrometheusConfig says how to reach a Prometheus server.
type PrometheusConfig struct {
	// URL is the server's base URL.
	URL string
	// BearerToken, when set, is sent in the Authorization header; it is a
	// secret and appears in no error.
	BearerToken string
	// CAPEM, when set, are the roots the server's certificate must chain
	// to (else the system's).
	CAPEM []byte
	// Timeout bounds one query (0: 10 s).
	Timeout time.Duration
}

// Prometheus reads alerts from a Prometheus server's /api/v1/alerts.
type Prometheus struct {
	api     promv1.API
	timeout time.Duration
}

// NewPrometheus builds a source on cfg, checking it.
func NewPrometheus(cfg PrometheusConfig) (*Prometheus, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("the CA bundle holds no PEM certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	var rt http.RoundTripper = tr
	if cfg.BearerToken != "" {
		rt = bearer{token: cfg.BearerToken, next: tr}
	}
	c, err := api.NewClient(api.Config{Address: cfg.URL, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheusURL %q: %w", cfg.URL, err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Prometheus{api: promv1.NewAPI(c), timeout: timeout}, nil
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// Alerts lists the server's pending and firing alerts.
func (p *Prometheus) Alerts(ctx context.Context) ([]Alert, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	res, err := p.api.Alerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing alerts: %w", err)
	}
	out := make([]Alert, 0, len(res.Alerts))
	for _, a := range res.Alerts {
		labels := make(map[string]string, len(a.Labels))
		for k, v := range a.Labels {
			labels[string(k)] = string(v)
		}
		out = append(out, Alert{Name: labels["alertname"], State: string(a.State), Labels: labels})
	}
	return out, nil
}
