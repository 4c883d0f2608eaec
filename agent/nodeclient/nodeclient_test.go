package nodeclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"

	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/apiretry/apiretrytest"
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

// Retrying carries a patch through a 500 and a 429 with Retry-After, on
// the policy's clock: the same patch is sent three times, reads once.
func TestRetryingPatch(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	faults := []error{apierrors.NewInternalError(errors.New("etcdserver: leader changed")), apierrors.NewTooManyRequests("throttled", 5)}
	client.PrependReactor("patch", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
		if len(faults) == 0 {
			return false, nil, nil
		}
		err := faults[0]
		faults = faults[1:]
		return true, nil, err
	})
	clk := apiretrytest.NewClock(time.Now())
	nodes := Retrying{Nodes: client.CoreV1().Nodes(), Policy: apiretry.Policy{
		Backoff: wait.Backoff{Duration: time.Second, Factor: 2, Steps: 4}, Clock: clk}}
	body := []byte(`{"metadata":{"annotations":{"tokenroll.io/request-status":"{}"}}}`)
	n, err := nodes.Patch(context.Background(), "node-1", types.MergePatchType, body, metav1.PatchOptions{FieldManager: "tokenroll-agent"})
	if err != nil || n.Annotations["tokenroll.io/request-status"] != "{}" {
		t.Fatalf("Patch = %v, %v; want the annotation written", n, err)
	}
	var patches []string
	for _, a := range client.Actions() {
		if p, ok := a.(clienttesting.PatchAction); ok {
			patches = append(patches, a.GetVerb()+" "+p.GetName()+" "+string(p.GetPatch()))
		}
	}
	want := "patch node-1 " + string(body)
	if len(patches) != 3 || patches[0] != want || patches[1] != want || patches[2] != want {
		t.Errorf("patches %q; want %q three times", patches, want)
	}
	if got := clk.Waits(); !slices.Equal(got, []time.Duration{time.Second, 5 * time.Second}) {
		t.Errorf("waits %v; want 1s, then the 5s the server asked for", got)
	}
	if nodes.IsWatchListSemanticsUnSupported() || !(Retrying{Nodes: noWatchList{nodes}}).IsWatchListSemanticsUnSupported() {
		t.Error("Retrying does not pass on what its client says of watch-list semantics")
	}
}

type noWatchList struct{ Nodes }

func (noWatchList) IsWatchListSemanticsUnSupported() bool { return true }
