package podsapi

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"

	"github.com/tokenroll/tokenroll/protocol"
)

func TestFromPodKeepsOnlyTokenProjections(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web", UID: "u"}, Spec: corev1.PodSpec{
		ServiceAccountName: "robot",
		Volumes: []corev1.Volume{
			{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			}}}},
			{Name: "mixed", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{Items: []corev1.KeyToPath{{Key: "t", Path: "vault/token"}}}},
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "./sa//token", Audience: "vault"}},
			}}}},
			{Name: "secret-only", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{}},
			}}}},
			{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		},
	}}
	want := Pod{Namespace: "apps", Name: "web", ServiceAccount: "robot", TokenPaths: map[string][]string{"kube-api-access-x": {"token"}, "mixed": {"sa/token"}}}
	if got := FromPod(p); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// kubelet answers ListPods as a kubelet does at one moment.
type kubelet struct {
	podsv1alpha1.UnimplementedPodsServer
	err  error
	pods []*corev1.Pod
}

func (k *kubelet) ListPods(context.Context, *podsv1alpha1.ListPodsRequest) (*podsv1alpha1.ListPodsResponse, error) {
	if k.err != nil {
		return nil, k.err
	}
	resp := &podsv1alpha1.ListPodsResponse{}
	for _, p := range k.pods {
		b, err := p.Marshal()
		if err != nil {
			return nil, err
		}
		resp.Pods = append(resp.Pods, b)
	}
	return resp, nil
}

func serve(t *testing.T, k *kubelet) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "pods-api.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podsv1alpha1.RegisterPodsServer(srv, k)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return socket
}

// TestAskSaysWhatTheKubeletAnswered: listed pods, "Kubelet is
// initializing" (FailedPrecondition, just after a restart), a refused
// connection, and no socket at all are four different answers.
func TestAskSaysWhatTheKubeletAnswered(t *testing.T) {
	ctx := context.Background()
	web := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "web", UID: "u-1"}}
	pods, answer, err := Ask(ctx, serve(t, &kubelet{pods: []*corev1.Pod{web}}))
	if err != nil || answer != protocol.PodsAPIListed || pods["u-1"].Name != "web" {
		t.Errorf("listing: %v %q %v", pods, answer, err)
	}
	pods, answer, err = Ask(ctx, serve(t, &kubelet{err: status.Error(codes.FailedPrecondition, "Kubelet is initializing")}))
	if pods != nil || answer != protocol.PodsAPIInitializing || !errors.Is(err, ErrInitializing) {
		t.Errorf("initializing: %v %q %v", pods, answer, err)
	}
	// A socket left by a stopped kubelet: connections are refused.
	stale := filepath.Join(t.TempDir(), "pods-api.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	pods, answer, err = Ask(ctx, stale)
	if pods != nil || answer != protocol.PodsAPIUnavailable || err == nil {
		t.Errorf("refused: %v %q %v", pods, answer, err)
	}
	pods, answer, err = Ask(ctx, filepath.Join(t.TempDir(), "none.sock"))
	if pods != nil || answer != protocol.PodsAPIAbsent || err != nil {
		t.Errorf("absent: %v %q %v", pods, answer, err)
	}
}
