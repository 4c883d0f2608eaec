package nodeclient

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
)

// client-go's typed Node client (and so the fake clientset's) is a Nodes.
var _ Nodes = corev1client.NodeInterface(nil)

// The client asks for Nodes where the generated client does, prefers
// protobuf as it does, and decodes the JSON an API server may answer with.
func TestNodesSpeaksTheCoreAPI(t *testing.T) {
	type call struct{ method, path, query, accept, contentType, body, agent string }
	var calls []call
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		calls = append(calls, call{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Accept"), r.Header.Get("Content-Type"), string(body), r.UserAgent()})
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/.well-known/openid-configuration" {
			_, _ = io.WriteString(w, `{"issuer":"https://issuer.example"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "node-1", Annotations: map[string]string{"a": "b"}}})
	}))
	defer srv.Close()
	nodes, discovery, err := New(&rest.Config{Host: srv.URL, UserAgent: "tokenroll-agent/test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n, err := nodes.Get(ctx, "node-1", metav1.GetOptions{ResourceVersion: "7"})
	if err != nil || n.Name != "node-1" || n.Annotations["a"] != "b" {
		t.Fatalf("Get = %+v, %v; want node-1 with its annotation", n, err)
	}
	if _, err := nodes.Patch(ctx, "node-1", types.StrategicMergePatchType, []byte(`{"status":{}}`), metav1.PatchOptions{FieldManager: "tokenroll-agent"}, "status"); err != nil {
		t.Fatal(err)
	}
	body, err := discovery.Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil || !strings.Contains(string(body), "issuer.example") {
		t.Fatalf("discovery = %q, %v", body, err)
	}
	want := []call{
		{"GET", "/api/v1/nodes/node-1", "resourceVersion=7", "application/vnd.kubernetes.protobuf,application/json", "", "", "tokenroll-agent/test"},
		{"PATCH", "/api/v1/nodes/node-1/status", "fieldManager=tokenroll-agent", "application/vnd.kubernetes.protobuf,application/json", "application/strategic-merge-patch+json", `{"status":{}}`, "tokenroll-agent/test"},
		{"GET", "/.well-known/openid-configuration", "", "application/json, */*", "", "", "tokenroll-agent/test"},
	}
	if len(calls) != len(want) {
		t.Fatalf("calls = %+v, want %+v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Errorf("call %d = %+v, want %+v", i, calls[i], want[i])
		}
	}
}
