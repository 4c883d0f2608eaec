package apps

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// FollowPods starts a reflector that gives d every pod of the cluster,
// trimmed to what the detector reads, until ctx ends or stop is called;
// synced tells when d has been given them all. d is the reflector's
// store: no informer keeps the pods beside it.
func FollowPods(ctx context.Context, client kubernetes.Interface, d *Detector) (synced cache.InformerSynced, stop func()) {
	pods := client.CoreV1().Pods(metav1.NamespaceAll)
	// As a pod informer's: a client that cannot stream the initial list
	// in a watch (a fake clientset) says so, and is listed.
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}, client)
	return followPods(ctx, lw, d, cache.ReflectorOptions{})
}

// followPods is FollowPods over any lister-watcher of pods.
func followPods(ctx context.Context, lw cache.ListerWatcher, d *Detector, opts cache.ReflectorOptions) (synced cache.InformerSynced, stop func()) {
	s := &podStore{d: d}
	logger := klog.FromContext(ctx)
	opts.Logger = &logger
	r := cache.NewReflectorWithOptions(lw, &corev1.Pod{}, s, opts)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.RunWithContext(ctx) })
	return s.synced.Load, func() { cancel(); wg.Wait() }
}

// podStore is the pod reflector's store. It keeps nothing of a pod: it
// hands each, trimmed, to the detector, which keeps it once, by UID. The
// reflector calls it from one goroutine: Add, Update and Delete for watch
// events, Replace for each list of every pod (the first, and each relist
// after a watch ended too long ago), Resync never (no resync period), and
// Transformer for the temporary store a watch-list streams the pods into
// before Replace. A reflector asks a store for nothing back (its
// ReflectorStore has no List or Get).
type podStore struct {
	d *Detector
	// synced: the first list is applied.
	synced atomic.Bool
}

var (
	_ cache.ReflectorStore    = (*podStore)(nil)
	_ cache.TransformingStore = (*podStore)(nil)
)

// Add and Update give the detector the pod; one that has ended is
// dropped.
func (s *podStore) Add(obj any) error { return s.set(obj) }

func (s *podStore) Update(obj any) error { return s.set(obj) }

func (s *podStore) set(obj any) error {
	p, ended, err := trimmedOf(obj)
	if err != nil {
		return err
	}
	s.d.setPod(p, ended)
	return nil
}

// Delete drops the pod, by UID; nothing, for a pod the detector does not
// hold.
func (s *podStore) Delete(obj any) error {
	var uid types.UID
	switch o := obj.(type) {
	case *corev1.Pod:
		uid = o.UID
	case *trimmedPod:
		uid = o.pod.UID
	default:
		return fmt.Errorf("app detection's pod store: deleting a %T, not a pod; ignored", obj)
	}
	s.d.DeletePod(uid)
	return nil
}

// Replace makes the pods listed the detector's: the others are deleted,
// those listed updated, with what the detector learnt of them kept (by
// UID: a pod recreated under the same name is another pod). The store
// owns the list: each full pod is let go once trimmed.
func (s *podStore) Replace(list []any, _ string) error {
	for _, obj := range list {
		switch obj.(type) {
		case *corev1.Pod, *trimmedPod:
		default:
			return fmt.Errorf("app detection's pod store: a list holds a %T, not a pod; not applied", obj)
		}
	}
	s.d.replacePods(func(yield func(*Pod, bool) bool) {
		for i, obj := range list {
			list[i] = nil
			p, ended, _ := trimmedOf(obj)
			if !yield(p, ended) {
				return
			}
		}
	})
	s.synced.Store(true)
	return nil
}

// Resync has nothing to do: the detector holds every pod already. The
// reflector calls it only with a resync period, which FollowPods does
// not set.
func (s *podStore) Resync() error { return nil }

// Transformer trims the pods a watch-list streams before Replace, as
// they come: its temporary store holds every pod of the cluster at once.
func (s *podStore) Transformer() cache.TransformFunc { return TrimPod }

// trimmedOf takes what the detector reads of a pod, full or trimmed
// already.
func trimmedOf(obj any) (*Pod, bool, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		p, ended := trim(o)
		return p, ended, nil
	case *trimmedPod:
		return o.pod, o.ended, nil
	}
	return nil, false, fmt.Errorf("app detection's pod store: given a %T, not a pod; ignored", obj)
}
