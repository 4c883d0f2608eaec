// Package podsapi asks the kubelet which pods it runs, through the node-local
// kubelet Pods API (k8s.io/kubelet/pkg/apis/pods/v1alpha1), so the agent
// knows which files of a pod's projected volumes are its service-account
// tokens, and can tell a live pod's token from a volume a deleted pod left
// behind.
package podsapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"

	"github.com/tokenroll/tokenroll/protocol"
)

// SocketPath is where the kubelet serves the Pods API under its root.
func SocketPath(kubeletRoot string) string {
	return filepath.Join(kubeletRoot, "pods-api", "pods-api.sock")
}

// Available reports whether the socket exists (the PodsAPI feature is on).
func Available(socket string) bool {
	st, err := os.Stat(socket)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// Pod is what the scanner needs from one pod the kubelet runs.
type Pod struct {
	Namespace, Name, ServiceAccount string
	// TokenPaths are, by projected volume name, the cleaned paths of the
	// volume's serviceAccountToken sources: the only files in the pod's
	// volumes that are its service-account tokens.
	TokenPaths map[string][]string
}

// FromPod reduces a pod to what the scanner needs.
func FromPod(p *corev1.Pod) Pod {
	out := Pod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.Spec.ServiceAccountName}
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken == nil {
				continue
			}
			if out.TokenPaths == nil {
				out.TokenPaths = map[string][]string{}
			}
			out.TokenPaths[v.Name] = append(out.TokenPaths[v.Name], path.Clean(src.ServiceAccountToken.Path))
		}
	}
	return out
}

// ErrInitializing is wrapped by List's error when the kubelet answered
// that it is still initializing (gRPC FailedPrecondition, for about a
// second after a restart).
var ErrInitializing = errors.New("the kubelet is initializing")

// List returns the pods the kubelet runs, by UID. An empty list is what the
// kubelet said; judging whether to believe it is the caller's part.
func List(ctx context.Context, socket string) (map[string]Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("kubelet Pods API at %s: %w", socket, err)
	}
	defer conn.Close()
	resp, err := podsv1alpha1.NewPodsClient(conn).ListPods(ctx, &podsv1alpha1.ListPodsRequest{})
	if status.Code(err) == codes.FailedPrecondition {
		return nil, fmt.Errorf("kubelet Pods API at %s: ListPods: %w (%w)", socket, ErrInitializing, err)
	}
	if err != nil {
		return nil, fmt.Errorf("kubelet Pods API at %s: ListPods: %w", socket, err)
	}
	out := make(map[string]Pod, len(resp.GetPods()))
	for _, b := range resp.GetPods() {
		var p corev1.Pod
		if err := p.Unmarshal(b); err != nil {
			return nil, fmt.Errorf("kubelet Pods API at %s: decoding a pod: %w", socket, err)
		}
		out[string(p.UID)] = FromPod(&p)
	}
	return out, nil
}

// Ask lists the kubelet's pods and says what the answer was: nil pods and
// PodsAPIAbsent when the socket is not there, nil pods and
// PodsAPIInitializing or PodsAPIUnavailable (with the error) when the
// kubelet did not list them, else the pods and PodsAPIListed.
func Ask(ctx context.Context, socket string) (map[string]Pod, protocol.PodsAPI, error) {
	if !Available(socket) {
		return nil, protocol.PodsAPIAbsent, nil
	}
	pods, err := List(ctx, socket)
	switch {
	case errors.Is(err, ErrInitializing):
		return nil, protocol.PodsAPIInitializing, err
	case err != nil:
		return nil, protocol.PodsAPIUnavailable, err
	}
	return pods, protocol.PodsAPIListed, nil
}
