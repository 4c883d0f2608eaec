package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
)

// testCA is a certificate authority for the webhook's tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key: for 127.0.0.1 when serving, a
// client certificate named cn otherwise.
func (ca *testCA) issue(t testing.TB, cn string, serving bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if serving {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func writeTemp(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// webhookOptions makes a serving certificate and returns Options for a
// webhook on a free loopback port trusting clientCA, and the serving CA.
func webhookOptions(t testing.TB, clientCA []byte) (*Options, *testCA) {
	t.Helper()
	dir := t.TempDir()
	serverCA := newTestCA(t, "audit-webhook-serving-ca")
	cert, key := serverCA.issue(t, "tokenroll-audit", true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	o := NewOptions()
	o.WebhookListen = addr
	o.WebhookCert = writeTemp(t, dir, "tls.crt", cert)
	o.WebhookKey = writeTemp(t, dir, "tls.key", key)
	o.WebhookClientCA = writeTemp(t, dir, "client-ca.crt", clientCA)
	return o, serverCA
}

func startSources(t testing.TB, o *Options, sink Sink) (*Metrics, []Source) {
	t.Helper()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srcs, err := o.NewSources(sink, reg, zap.NewNop(), clock.RealClock{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(srcs))
	for _, s := range srcs {
		go func() { done <- s.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range srcs {
			if err := <-done; err != nil {
				t.Errorf("source stopped with %v", err)
			}
		}
	})
	return srcs[0].(interface{ metricsOf() *Metrics }).metricsOf(), srcs
}

func client(t testing.TB, serverCA *testCA, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(serverCA.pem)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

func eventList(t testing.TB, names ...string) []byte {
	t.Helper()
	var items []json.RawMessage
	for _, n := range names {
		items = append(items, fixture(t, n))
	}
	data, _ := json.Marshal(map[string]any{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
	return data
}

func TestWebhook(t *testing.T) {
	apiserverCA := newTestCA(t, "apiserver-client-ca")
	o, serverCA := webhookOptions(t, apiserverCA.pem)
	o.WebhookMaxBodyBytes = 64 << 10
	o.WebhookClientNames = []string{"kube-apiserver-audit"}
	rec := &recorder{}
	m, srcs := startSources(t, o, rec)
	url := "https://" + srcs[0].(*Webhook).Addr() + "/audit"

	cert, key := apiserverCA.issue(t, "kube-apiserver-audit", false)
	apiserver := client(t, serverCA, cert, key)
	post := func(c *http.Client, body []byte) (int, error) {
		resp, err := c.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	list := eventList(t, "presented.json", "issued.json", "authfailed.json")
	if code, err := post(apiserver, list); err != nil || code != http.StatusOK {
		t.Fatalf("batch: %d, %v", code, err)
	}
	// Sent again (the API server got no answer in time): nothing new.
	if code, err := post(apiserver, list); err != nil || code != http.StatusOK {
		t.Fatalf("batch again: %d, %v", code, err)
	}
	if got := rec.ids(); strings.Join(got, ",") != "7e0cbccf-2c1e-4a5e-9a53-6a3cf1a0a001,11d3e5f7-8a9b-4c0d-9e1f-203040506070,2a3b4c5d-6e7f-4081-9203-a4b5c6d7e8f9" {
		t.Errorf("delivered %v", got)
	}
	if n := testutil.ToFloat64(m.skipped.WithLabelValues(SourceWebhook, string(SkipDuplicate))); n != 3 {
		t.Errorf("duplicates %v, want 3", n)
	}

	// Refused: no client certificate; one from another CA; one from the
	// right CA with another name.
	if _, err := post(client(t, serverCA, nil, nil), list); err == nil {
		t.Error("a client without a certificate was served")
	}
	other := newTestCA(t, "other-ca")
	oc, ok := other.issue(t, "kube-apiserver-audit", false)
	if _, err := post(client(t, serverCA, oc, ok), list); err == nil {
		t.Error("a client with a certificate of another CA was served")
	}
	// The server counts a refused handshake after the client has seen it.
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return testutil.ToFloat64(m.webhookRequests.WithLabelValues(resultHandshake)) == 2, nil
	}); err != nil {
		t.Errorf("handshakes refused %v, want 2", testutil.ToFloat64(m.webhookRequests.WithLabelValues(resultHandshake)))
	}
	nc, nk := apiserverCA.issue(t, "system:node:node-a", false)
	if code, err := post(client(t, serverCA, nc, nk), list); err != nil || code != http.StatusForbidden {
		t.Errorf("a client of another name: %d, %v; want 403", code, err)
	}

	// Bounded and checked.
	if code, _ := post(apiserver, bytes.Repeat([]byte(" "), 65<<10)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a batch over the limit: %d, want 413", code)
	}
	if code, _ := post(apiserver, []byte(`{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}`)); code != http.StatusBadRequest {
		t.Errorf("a v1beta1 list: %d, want 400", code)
	}
	if resp, err := apiserver.Get(url); err != nil {
		t.Errorf("GET: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET: %d, want 405", resp.StatusCode)
		}
	}
	if n := testutil.ToFloat64(m.webhookRequests.WithLabelValues(resultAccepted)); n != 2 {
		t.Errorf("accepted %v, want 2", n)
	}
	if n := testutil.ToFloat64(m.webhookBytes); n != float64(2*len(list)) {
		t.Errorf("bytes %v, want %d", n, 2*len(list))
	}
	if len(rec.ids()) != 3 {
		t.Errorf("refused batches delivered events: %v", rec.ids())
	}
}

func TestWebhookBusyAnswers429(t *testing.T) {
	apiserverCA := newTestCA(t, "apiserver-client-ca")
	o, serverCA := webhookOptions(t, apiserverCA.pem)
	o.WebhookMaxConcurrent = 1
	block, arrived := make(chan struct{}), make(chan struct{})
	var once sync.Once
	sink := sinkFunc(func(Event) { once.Do(func() { close(arrived) }); <-block })
	_, srcs := startSources(t, o, sink)
	url := "https://" + srcs[0].(*Webhook).Addr() + "/"
	cert, key := apiserverCA.issue(t, "kube-apiserver-audit", false)
	c := client(t, serverCA, cert, key)
	first := make(chan int)
	go func() {
		resp, err := c.Post(url, "application/json", bytes.NewReader(eventList(t, "presented.json")))
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	// The first batch holds the only slot while its sink blocks.
	<-arrived
	resp, err := c.Post(url, "application/json", bytes.NewReader(eventList(t, "issued.json")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	close(block)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second batch %d, want 429 with Retry-After while the first is handled", resp.StatusCode)
	}
	if code := <-first; code != http.StatusOK {
		t.Errorf("first batch %d, want 200", code)
	}
}

type sinkFunc func(Event)

func (f sinkFunc) Observe(ev Event) { f(ev) }

func TestOptionsValidate(t *testing.T) {
	o := NewOptions()
	if err := o.Validate(); err != nil || o.Enabled() {
		t.Errorf("defaults: %v, enabled %v", err, o.Enabled())
	}
	o.WebhookListen = "nonsense"
	o.WebhookCert = "/nonexistent/tls.crt"
	o.Logs = []string{"relative/audit.log", "/var/log/a.log", "/var/log/a.log"}
	o.LogCheckpointDir = ""
	o.WebhookMaxConcurrent = 0
	err := o.Validate()
	for _, want := range []string{"--audit-webhook-listen", "--audit-webhook-cert", "--audit-webhook-key is required", "--audit-webhook-client-ca is required",
		"--audit-webhook-max-concurrent", "relative/audit.log\": must be an absolute path", "given twice", "--audit-log-checkpoint-dir is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to say %q", err, want)
		}
	}
	o = NewOptions()
	o.WebhookClientCA = "/x"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "need --audit-webhook-listen") {
		t.Errorf("webhook flags without --audit-webhook-listen: %v", err)
	}
}

func (w *Webhook) metricsOf() *Metrics   { return w.stream.metrics }
func (l *LogSource) metricsOf() *Metrics { return l.stream.metrics }

func TestOptionsFlags(t *testing.T) {
	o := NewOptions()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o.AddFlags(fs)
	err := fs.Parse([]string{"--audit-log=/var/log/a/audit.log,/var/log/b/audit.log", "--audit-log", "/var/log/c/audit.log",
		"--audit-webhook-client-name=one", "--audit-webhook-client-name=two", "--audit-log-poll-interval=2s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Logs) != 3 || len(o.WebhookClientNames) != 2 || o.LogPollInterval != 2*time.Second || o.LogCheckpointDir != "/var/lib/tokenroll/audit" {
		t.Errorf("parsed %+v", o)
	}
	// Client names without a webhook is the one thing wrong.
	if err := o.Validate(); err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), "need --audit-webhook-listen") {
		t.Errorf("Validate: %v; want only the complaint about a webhook flag without --audit-webhook-listen", err)
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// standbyRecorder is a Sink that keeps events only while it leads.
type standbyRecorder struct {
	recorder
	leading atomic.Bool
}

func (s *standbyRecorder) Accepting() bool { return s.leading.Load() }

// A replica that does not lead takes no batch: it answers 503 and closes
// the connection, so that the API server sends the batch again on a new
// connection, which the Service routes to the leader; once it leads, it
// takes the batch.
func TestWebhookStandbyRefusesBatches(t *testing.T) {
	apiserverCA := newTestCA(t, "apiserver-client-ca")
	o, serverCA := webhookOptions(t, apiserverCA.pem)
	rec := &standbyRecorder{}
	m, srcs := startSources(t, o, rec)
	url := "https://" + srcs[0].(*Webhook).Addr() + "/audit"
	cert, key := apiserverCA.issue(t, "kube-apiserver-audit", false)
	apiserver := client(t, serverCA, cert, key)
	list := eventList(t, "presented.json")

	resp, err := apiserver.Post(url, "application/json", bytes.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a standby answered %d (close %v, Retry-After %q); want 503, the connection closed and a Retry-After",
			resp.StatusCode, resp.Close, resp.Header.Get("Retry-After"))
	}
	if got := rec.ids(); len(got) != 0 {
		t.Errorf("a standby delivered %v", got)
	}
	if n := testutil.ToFloat64(m.webhookRequests.WithLabelValues(resultStandby)); n != 1 {
		t.Errorf("standby refusals %v, want 1", n)
	}

	rec.leading.Store(true)
	resp, err = apiserver.Post(url, "application/json", bytes.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(rec.ids()) != 1 {
		t.Errorf("the leader answered %d and delivered %v; want 200 and the event", resp.StatusCode, rec.ids())
	}
}
