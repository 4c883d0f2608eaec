package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/protocol"
)

type onePodKubelet struct {
	podsv1alpha1.UnimplementedPodsServer
}

func (onePodKubelet) ListPods(context.Context, *podsv1alpha1.ListPodsRequest) (*podsv1alpha1.ListPodsResponse, error) {
	b, err := (&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps", UID: "uid-1"}}).Marshal()
	if err != nil {
		return nil, err
	}
	return &podsv1alpha1.ListPodsResponse{Pods: [][]byte{b}}, nil
}

// A restarting kubelet removes its Pods API socket just before it listens
// again. An agent that has had a list from it takes a missing socket for an
// unavailable Pods API, so that a scan made in that instant is incomplete
// and verifies no kubelet restart; an agent that never had one takes it for
// the feature being off.
func TestPodsAPISocketGoneAfterAListIsUnavailable(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	socket := podsapi.SocketPath(root)
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podsv1alpha1.RegisterPodsServer(srv, onePodKubelet{})
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	newAgent := func() *Agent {
		a, err := New(Config{NodeName: "node-1", KubeletRoot: root, Client: cs.CoreV1().Nodes(), Discovery: oidcDiscovery(testIssuer),
			Interval: time.Minute, Grace: 5 * time.Minute, IssuerRefresh: 10 * time.Minute, MaxTokenSeries: 100})
		if err != nil {
			t.Fatal(err)
		}
		a.readIssuer(ctx, readStart)
		return a
	}
	reported := func(a *Agent) protocol.TokenReport {
		t.Helper()
		if a.ScanOnce(ctx) == nil {
			t.Fatal("scan failed")
		}
		n, err := cs.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	a := newAgent()
	if rep := reported(a); !rep.Complete() {
		t.Fatalf("with the Pods API listing: the report says %q; want complete", rep.PodsAPI)
	}
	srv.Stop() // the listener's socket file goes with it
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("the socket is still there: %v", err)
	}
	if rep := reported(a); rep.Complete() || rep.PodsAPI != protocol.PodsAPIUnavailable {
		t.Errorf("the socket gone after a list: the report says %q (complete %v); want %q", rep.PodsAPI, rep.Complete(), protocol.PodsAPIUnavailable)
	}
	if rep := reported(newAgent()); !rep.Complete() {
		t.Errorf("a new agent with no socket: the report says %q; want complete (the feature off)", rep.PodsAPI)
	}
}
