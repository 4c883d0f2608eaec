package sandbox

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// A node root too long for the kubelet's sockets is refused with the
// reason, before anything starts, rather than a kubelet that dies on its
// first restart.
func TestRealNodeRefusesARootTooLongForSockets(t *testing.T) {
	root := "/" + strings.Repeat("r", maxRealNodeRoot)
	n := newRealNode(realNodeConfig{Name: "worker-1", Root: root, LogDir: t.TempDir(), Log: zap.NewNop()})
	var wg sync.WaitGroup
	err := n.start(context.Background(), &wg)
	wg.Wait()
	if err == nil || !strings.Contains(err.Error(), "107 bytes") || !strings.Contains(err.Error(), "--dir") {
		t.Fatalf("start with a %d-byte root: %v; want a refusal naming the 107-byte limit and --dir", len(root), err)
	}
	if _, statErr := os.Stat(root); !os.IsNotExist(statErr) {
		t.Errorf("the refused root was created: %v", statErr)
	}
}
