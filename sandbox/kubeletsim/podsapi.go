package kubeletsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	podsv1alpha1 "k8s.io/kubelet/pkg/apis/pods/v1alpha1"
)

// podsAPIServer serves the kubelet Pods API (k8s.io/kubelet
// pkg/apis/pods/v1alpha1) from the node's pod cache on a unix socket, as
// the kubelet does under <root>/pods-api/.
type podsAPIServer struct {
	podsv1alpha1.UnimplementedPodsServer
	pods corelisters.PodLister

	mu       sync.Mutex
	srv      *grpc.Server
	ln       *net.UnixListener
	watchers map[chan *podsv1alpha1.WatchPodsEvent]struct{}
	// initializing: the kubelet has started but not synced its pods yet,
	// and says so instead of listing them.
	initializing bool
}

// errInitializing is what the kubelet's Pods API answers for about a
// second after it starts.
var errInitializing = status.Error(codes.FailedPrecondition, "Kubelet is initializing")

func (s *podsAPIServer) setInitializing(v bool) {
	s.mu.Lock()
	s.initializing = v
	s.mu.Unlock()
}

func (s *podsAPIServer) isInitializing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.initializing
}

func newPodsAPIServer(pods corelisters.PodLister) *podsAPIServer {
	return &podsAPIServer{pods: pods, watchers: map[chan *podsv1alpha1.WatchPodsEvent]struct{}{}}
}

func (s *podsAPIServer) start(socket string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		return err
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale Pods API socket %s: %w", socket, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listening on Pods API socket %s: %w", socket, err)
	}
	s.ln = ln
	s.srv = grpc.NewServer()
	podsv1alpha1.RegisterPodsServer(s.srv, s)
	srv := s.srv
	go func() { _ = srv.Serve(ln) }()
	return nil
}

// stop stops serving. With keepSocket the socket file stays, as a stopped
// kubelet's does: clients are refused instead of finding no socket.
func (s *podsAPIServer) stop(keepSocket bool) {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	if s.ln != nil && keepSocket {
		s.ln.SetUnlinkOnClose(false)
	}
	s.ln = nil
	for ch := range s.watchers {
		close(ch)
		delete(s.watchers, ch)
	}
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

func (s *podsAPIServer) ListPods(context.Context, *podsv1alpha1.ListPodsRequest) (*podsv1alpha1.ListPodsResponse, error) {
	if s.isInitializing() {
		return nil, errInitializing
	}
	pods, err := s.pods.List(everything)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &podsv1alpha1.ListPodsResponse{}
	for _, p := range pods {
		b, err := p.Marshal()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		resp.Pods = append(resp.Pods, b)
	}
	return resp, nil
}

func (s *podsAPIServer) GetPod(_ context.Context, req *podsv1alpha1.GetPodRequest) (*podsv1alpha1.GetPodResponse, error) {
	if s.isInitializing() {
		return nil, errInitializing
	}
	pods, err := s.pods.List(everything)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, p := range pods {
		if p.UID == types.UID(req.GetPodUID()) {
			b, err := p.Marshal()
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			return &podsv1alpha1.GetPodResponse{Pod: b}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "pod with UID %q not found on this node", req.GetPodUID())
}

func (s *podsAPIServer) WatchPods(_ *podsv1alpha1.WatchPodsRequest, stream grpc.ServerStreamingServer[podsv1alpha1.WatchPodsEvent]) error {
	if s.isInitializing() {
		return errInitializing
	}
	ch := make(chan *podsv1alpha1.WatchPodsEvent, 256)
	s.mu.Lock()
	s.watchers[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if _, ok := s.watchers[ch]; ok {
			delete(s.watchers, ch)
			close(ch)
		}
		s.mu.Unlock()
	}()
	pods, err := s.pods.List(everything)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	for _, p := range pods {
		b, err := p.Marshal()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(&podsv1alpha1.WatchPodsEvent{Type: podsv1alpha1.EventType_ADDED, Pod: b}); err != nil {
			return err
		}
	}
	if err := stream.Send(&podsv1alpha1.WatchPodsEvent{Type: podsv1alpha1.EventType_INITIAL_SYNC_COMPLETE}); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev, ok := <-ch:
			if !ok {
				return status.Error(codes.Unavailable, "kubelet Pods API stopped")
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// notify passes a pod change to every watcher. A watcher too slow to keep a
// buffer of 256 events is cut off, and must list again, as with any watch.
func (s *podsAPIServer) notify(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	b, err := pod.Marshal()
	if err != nil {
		return
	}
	ev := &podsv1alpha1.WatchPodsEvent{Type: podsv1alpha1.EventType_MODIFIED, Pod: b}
	if deleted {
		ev.Type = podsv1alpha1.EventType_DELETED
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.watchers {
		select {
		case ch <- ev:
		default:
			delete(s.watchers, ch)
			close(ch)
		}
	}
}
