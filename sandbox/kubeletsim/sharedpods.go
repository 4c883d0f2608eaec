package kubeletsim

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// nodeNameIndex indexes the shared pods by spec.nodeName.
const nodeNameIndex = "spec.nodeName"

// SharedPods is one pod informer for many simulated nodes, each handed the
// pods bound to it, as its own informer (a field selector on
// spec.nodeName) would. A real kubelet lists and watches its pods itself,
// and a few simulated nodes do the same (Config.Pods nil); a thousand
// nodes in one process, each with its own list and watch against one API
// server, spend the machine on the API server's watch cache instead of on
// what a benchmark measures, and starting them takes longer than the
// benchmark.
//
// The nodes also read their pods' projected ConfigMaps from one shared
// ConfigMap informer, as a kubelet with its default change-detection
// strategy (Watch) reads them from watches: a GET of each pod's
// ConfigMap every sync, which a node of its own makes, is a thousand
// nodes' pods' worth of reads a minute that no kubelet makes.
type SharedPods struct {
	informer   cache.SharedIndexInformer
	configMaps cache.SharedIndexInformer
	cmLister   corelisters.ConfigMapLister

	mu    sync.RWMutex
	nodes map[string]*subscription
}

// subscription is one node's handler; a pointer, so that a node's
// unsubscribe never removes the handler of a later Run of the same node.
type subscription struct{ h cache.ResourceEventHandler }

// NewSharedPods returns a shared pod informer on client, which must be
// allowed to list and watch every pod; Start runs it.
func NewSharedPods(client kubernetes.Interface) (*SharedPods, error) {
	factory := informers.NewSharedInformerFactory(client, 0)
	informer := factory.Core().V1().Pods().Informer()
	configMaps := factory.Core().V1().ConfigMaps()
	if err := informer.AddIndexers(cache.Indexers{nodeNameIndex: func(obj any) ([]string, error) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return nil, nil
		}
		return []string{pod.Spec.NodeName}, nil
	}}); err != nil {
		return nil, err
	}
	s := &SharedPods{informer: informer, configMaps: configMaps.Informer(), cmLister: configMaps.Lister(), nodes: map[string]*subscription{}}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.dispatch(obj, func(h cache.ResourceEventHandler) { h.OnAdd(obj, false) }) },
		UpdateFunc: func(old, obj any) { s.dispatch(obj, func(h cache.ResourceEventHandler) { h.OnUpdate(old, obj) }) },
		DeleteFunc: func(obj any) { s.dispatch(obj, func(h cache.ResourceEventHandler) { h.OnDelete(obj) }) },
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// Start runs the informer until ctx ends and returns once its cache is
// synced.
func (s *SharedPods) Start(ctx context.Context) error {
	go s.informer.RunWithContext(ctx)
	go s.configMaps.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced, s.configMaps.HasSynced) {
		return fmt.Errorf("kubeletsim: the shared pod and ConfigMap informers did not sync: %w", ctx.Err())
	}
	return nil
}

func (s *SharedPods) dispatch(obj any, call func(cache.ResourceEventHandler)) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sub := s.nodes[pod.Spec.NodeName]; sub != nil {
		call(sub.h)
	}
}

// subscribe hands node's pods to h: first those in the cache, as adds,
// then every change. A change the cache already holds may reach h again
// after its add, which h must take as the same pod again.
func (s *SharedPods) subscribe(node string, h cache.ResourceEventHandler) (unsubscribe func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := &subscription{h: h}
	s.nodes[node] = sub
	objs, _ := s.informer.GetIndexer().ByIndex(nodeNameIndex, node)
	for _, obj := range objs {
		h.OnAdd(obj, true)
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.nodes[node] == sub {
			delete(s.nodes, node)
		}
	}
}

// lister lists and gets node's pods alone.
func (s *SharedPods) lister(node string) corelisters.PodLister {
	return nodePods{indexer: s.informer.GetIndexer(), node: node}
}

type nodePods struct {
	indexer   cache.Indexer
	node      string
	namespace string // "": every namespace
}

func (l nodePods) List(selector labels.Selector) ([]*corev1.Pod, error) {
	objs, err := l.indexer.ByIndex(nodeNameIndex, l.node)
	if err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for _, obj := range objs {
		pod, ok := obj.(*corev1.Pod)
		if ok && (l.namespace == "" || pod.Namespace == l.namespace) && selector.Matches(labels.Set(pod.Labels)) {
			out = append(out, pod)
		}
	}
	return out, nil
}

func (l nodePods) Pods(namespace string) corelisters.PodNamespaceLister {
	l.namespace = namespace
	return l
}

// Get finds a pod of the namespace Pods chose, on the node alone.
func (l nodePods) Get(name string) (*corev1.Pod, error) {
	obj, exists, err := l.indexer.GetByKey(l.namespace + "/" + name)
	if err != nil {
		return nil, err
	}
	if pod, ok := obj.(*corev1.Pod); exists && ok && pod.Spec.NodeName == l.node {
		return pod, nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("pod"), name)
}

// configMap is the cached ConfigMap namespace/name (NotFound when the
// cache has none).
func (s *SharedPods) configMap(namespace, name string) (*corev1.ConfigMap, error) {
	return s.cmLister.ConfigMaps(namespace).Get(name)
}
