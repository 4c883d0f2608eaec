// Package invariants watches a cluster through the API server, as an
// outside observer, and checks tokenroll's invariants from what it sees:
// how many nodes were out of service at once, how many actions each node
// was asked for, which nodes stayed cordoned, how often the leader changed,
// and how long the coordinator took between one node verified and the next
// cordoned. It trusts nothing the coordinator says about itself except the
// request IDs it writes.
package invariants

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/internal/nodeutil"
	"github.com/tokenroll/tokenroll/protocol"
)

// Checker records what it sees; read it with Summary.
type Checker struct {
	mu sync.Mutex
	// disrupted holds nodes unschedulable or NotReady now.
	disrupted map[string]bool
	maxSeen   int
	maxAt     []string
	requests  map[string]map[string]bool // node -> request IDs
	nodes     map[string]*corev1.Node
	holders   []string
	// verified/cordoned moments, for the overhead between nodes.
	lastFreed time.Time
	overheads []time.Duration
	changed   chan struct{}
	now       func() time.Time
}

// Summary is what the checker saw.
type Summary struct {
	MaxConcurrentDisrupted int `json:"maxConcurrentDisrupted"`
	// MaxDisruptedNodes are the nodes out of service at that moment.
	MaxDisruptedNodes []string          `json:"maxDisruptedNodes,omitempty"`
	NodesLeftCordoned []string          `json:"nodesLeftCordoned"`
	ActionsPerNode    map[string]int    `json:"actionsPerNode"`
	LeaderChanges     int               `json:"leaderChanges"`
	Overheads         []time.Duration   `json:"-"`
	Leaders           []string          `json:"leaders,omitempty"`
	NodeStates        map[string]string `json:"nodeStates,omitempty"`
}

// Watch starts watching Nodes and the coordinator's Lease (namespace/name)
// until ctx ends; it returns once its caches are synced.
func Watch(ctx context.Context, client kubernetes.Interface, leaseNamespace, leaseName string) (*Checker, error) {
	c := &Checker{disrupted: map[string]bool{}, requests: map[string]map[string]bool{}, nodes: map[string]*corev1.Node{},
		changed: make(chan struct{}), now: time.Now}
	f := informers.NewSharedInformerFactory(client, 0)
	nodes := f.Core().V1().Nodes().Informer()
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.node(o) },
		UpdateFunc: func(_, o any) { c.node(o) },
		DeleteFunc: func(o any) {
			if n, ok := o.(*corev1.Node); ok {
				c.mu.Lock()
				delete(c.disrupted, n.Name)
				delete(c.nodes, n.Name)
				c.mu.Unlock()
			}
		},
	}); err != nil {
		return nil, err
	}
	lf := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(leaseNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + leaseName }))
	leases := lf.Coordination().V1().Leases().Informer()
	if _, err := leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.lease(o) },
		UpdateFunc: func(_, o any) { c.lease(o) },
	}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	lf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.HasSynced, leases.HasSynced) {
		return nil, fmt.Errorf("invariant watcher: caches did not sync: %w", ctx.Err())
	}
	return c, nil
}

func (c *Checker) node(o any) {
	n, ok := o.(*corev1.Node)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	was := len(c.disrupted)
	out := n.Spec.Unschedulable || !nodeutil.Ready(n)
	if out {
		c.disrupted[n.Name] = true
	} else {
		delete(c.disrupted, n.Name)
	}
	switch {
	case len(c.disrupted) > was && was == 0 && !c.lastFreed.IsZero():
		c.overheads = append(c.overheads, now.Sub(c.lastFreed))
		c.lastFreed = time.Time{}
	case len(c.disrupted) == 0 && was > 0:
		c.lastFreed = now
	}
	if len(c.disrupted) > c.maxSeen {
		c.maxSeen = len(c.disrupted)
		c.maxAt = sortedKeys(c.disrupted)
	}
	// A request lives from the coordinator's write to its verification,
	// which a watch that broke and relisted (an API server restart) can
	// miss entirely; the agent's answer to it stays on the Node.
	var ids []string
	if req, err := protocol.ParseRequest(n.Annotations[protocol.AnnotationRequest]); err == nil {
		ids = append(ids, req.ID)
	}
	if st, err := protocol.ParseStatus(n.Annotations[protocol.AnnotationStatus]); err == nil && st.ID != "" {
		ids = append(ids, st.ID)
	}
	for _, id := range ids {
		if c.requests[n.Name] == nil {
			c.requests[n.Name] = map[string]bool{}
		}
		c.requests[n.Name][id] = true
	}
	c.nodes[n.Name] = n
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Checker) lease(o any) {
	l, ok := o.(*coordinationv1.Lease)
	if !ok || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := *l.Spec.HolderIdentity; len(c.holders) == 0 || c.holders[len(c.holders)-1] != h {
		c.holders = append(c.holders, h)
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Summary reports what was seen so far.
func (c *Checker) Summary() Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Summary{MaxConcurrentDisrupted: c.maxSeen, MaxDisruptedNodes: slices.Clone(c.maxAt), ActionsPerNode: map[string]int{},
		NodesLeftCordoned: []string{}, Overheads: slices.Clone(c.overheads), Leaders: slices.Clone(c.holders), NodeStates: map[string]string{}}
	if len(c.holders) > 0 {
		s.LeaderChanges = len(c.holders) - 1
	}
	for name, n := range c.nodes {
		s.ActionsPerNode[name] = len(c.requests[name])
		if n.Spec.Unschedulable {
			s.NodesLeftCordoned = append(s.NodesLeftCordoned, name)
		}
		if st, err := protocol.ParseNodeState(n.Annotations[protocol.AnnotationNodeState]); err == nil {
			s.NodeStates[name] = string(st.Step)
		}
	}
	sort.Strings(s.NodesLeftCordoned)
	return s
}

// WaitFor blocks until cond holds on the nodes seen, or ctx ends.
func (c *Checker) WaitFor(ctx context.Context, cond func(nodes map[string]*corev1.Node) bool) error {
	for {
		c.mu.Lock()
		ok := cond(c.nodes)
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
