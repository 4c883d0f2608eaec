package audit

import (
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// replaceFile swaps name's content as the kubelet updates a mounted
// Secret: a new file renamed over the old one.
func replaceFile(t *testing.T, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(name), ".new-"+filepath.Base(name))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

// A renewed serving certificate is served from the next connection on,
// without a restart; files that do not load leave the last good one
// served.
func TestWebhookReloadsItsServingCertificate(t *testing.T) {
	apiserverCA := newTestCA(t, "apiserver-client-ca")
	o, serverCA := webhookOptions(t, apiserverCA.pem)
	_, srcs := startSources(t, o, &recorder{})
	url := "https://" + srcs[0].(*Webhook).Addr() + "/audit"
	clientCert, clientKey := apiserverCA.issue(t, "kube-apiserver-audit", false)
	// serial is the serving certificate's serial number on a new
	// connection.
	serial := func() *big.Int {
		t.Helper()
		c := client(t, serverCA, clientCert, clientKey)
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("connecting: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatalf("answer %d, TLS %v", resp.StatusCode, resp.TLS)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber
	}
	first := serial()

	cert, key := serverCA.issue(t, "tokenroll-audit", true)
	replaceFile(t, o.WebhookKey, key)
	replaceFile(t, o.WebhookCert, cert)
	renewed := serial()
	if renewed.Cmp(first) == 0 {
		t.Fatalf("still serving certificate %s after it was renewed on disk", first)
	}

	// A certificate without its key (written before the key) does not
	// load: the renewed pair is served until both are there.
	next, nextKey := serverCA.issue(t, "tokenroll-audit", true)
	replaceFile(t, o.WebhookCert, next)
	if got := serial(); got.Cmp(renewed) != 0 {
		t.Errorf("serving %s with a certificate and a key that do not match on disk; want the last good one, %s", got, renewed)
	}
	replaceFile(t, o.WebhookKey, nextKey)
	if got := serial(); got.Cmp(renewed) == 0 {
		t.Errorf("still serving %s once the key matched the new certificate", got)
	}
}
