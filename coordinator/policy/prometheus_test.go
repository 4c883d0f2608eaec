package policy

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const alertsJSON = `{"status":"success","data":{"alerts":[
 {"labels":{"alertname":"NodeDown","severity":"critical"},"annotations":{},"state":"firing","activeAt":"2026-12-01T00:00:00Z","value":"1e+00"},
 {"labels":{"alertname":"DiskFull"},"annotations":{},"state":"pending","activeAt":"2026-12-01T00:00:00Z","value":"1e+00"}]}}`

// The source reads /api/v1/alerts over TLS with the policy's CA, sending
// the bearer token.
func TestPrometheusSource(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/alerts" || r.Header.Get("Authorization") != "Bearer s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(alertsJSON))
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	p, err := NewPrometheus(PrometheusConfig{URL: srv.URL, BearerToken: "s3cret", CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Alerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "NodeDown" || got[0].State != AlertFiring || got[0].Labels["severity"] != "critical" || got[1].State != AlertPending {
		t.Errorf("alerts %+v", got)
	}
	// Without the CA, the server's certificate is not trusted.
	p, _ = NewPrometheus(PrometheusConfig{URL: srv.URL, BearerToken: "s3cret"})
	if _, err := p.Alerts(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v", err)
	}
	if _, err := NewPrometheus(PrometheusConfig{URL: srv.URL, CAPEM: []byte("not pem")}); err == nil {
		t.Error("a CA bundle without a certificate was accepted")
	}
}
