package cli

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// tokenroll's components ask the API server for uncompressed responses, as
// kube-controller-manager does, under their own user agent; the tokenroll
// command, which may run far from the cluster, asks for gzip as kubectl
// does.
func TestComponentRestConfigAsksForNoCompression(t *testing.T) {
	type request struct{ acceptEncoding, userAgent string }
	seen := make(chan request, 1)
	// TLS, as an API server serves: client-go builds no transport of its
	// own, and so honours no DisableCompression, for plain HTTP.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- request{r.Header.Get("Accept-Encoding"), r.Header.Get("User-Agent")}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"Node","apiVersion":"v1","metadata":{"name":"n1"}}`))
	}))
	defer srv.Close()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: srv.URL, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"u": {}},
		Contexts:       map[string]*clientcmdapi.Context{"x": {Cluster: "c", AuthInfo: "u"}},
		CurrentContext: "x",
	}, kubeconfig); err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, component bool) request {
		t.Helper()
		cfg, err := RestConfig(kubeconfig)
		if component {
			cfg, err = ComponentRestConfig(kubeconfig, "tokenroll-test/v0")
		}
		if err != nil {
			t.Fatal(err)
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		return <-seen
	}
	if got := get(t, true); got.acceptEncoding != "" || got.userAgent != "tokenroll-test/v0" {
		t.Errorf("a component's request: Accept-Encoding %q, User-Agent %q; want none and tokenroll-test/v0", got.acceptEncoding, got.userAgent)
	}
	if got := get(t, false); got.acceptEncoding != "gzip" {
		t.Errorf("the command's request: Accept-Encoding %q; want gzip, kubectl's default", got.acceptEncoding)
	}
}
