// Package podsapi asks the kubelet which pods it runs, through the node-local
// kubelet Pods API (k8s.io/kubelet/pkg/apis/pods/v1alpha1), so the agent can
// tell a live pod's token from a volume a deleted pod left behind.
package podsapi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"
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

// LiveUIDs lists the UIDs of the pods the kubelet runs.
func LiveUIDs(ctx context.Context, socket string) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("kubelet Pods API at %s: %w", socket, err)
	}
	defer conn.Close()
	resp, err := podsv1alpha1.NewPodsClient(conn).ListPods(ctx, &podsv1alpha1.ListPodsRequest{})
	if err != nil {
		return nil, fmt.Errorf("kubelet Pods API at %s: ListPods: %w", socket, err)
	}
	out := make(map[string]bool, len(resp.GetPods()))
	for _, b := range resp.GetPods() {
		var p corev1.Pod
		if err := p.Unmarshal(b); err != nil {
			return nil, fmt.Errorf("kubelet Pods API at %s: decoding a pod: %w", socket, err)
		}
		out[string(p.UID)] = true
	}
	return out, nil
}
