package coordinator

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/protocol"
)

// nodeIndex is the fleet as a sync sees it, kept up to date from the Node
// informer's events and the term's own writes instead of being listed
// anew on every sync: at idle a sync follows one Node that changed, and on
// a large fleet listing, mapping and counting every cached Node each time
// is most of the sync's work. Until track is called (a term on stores a
// caller fills without events), every refresh lists everything.
type nodeIndex struct {
	mu sync.Mutex
	// dirty are the names changed since the last refresh; all says that
	// everything may have (no events followed yet).
	dirty   map[string]bool
	all     bool
	tracked bool

	// What the last refresh built; read by the sync goroutine alone. nodes
	// is sorted by name and replaced, never changed in place, when a
	// refresh changes it: a slice a sync handed out stays as it was.
	nodes      []*corev1.Node
	byName     map[string]*corev1.Node
	pos        map[string]int
	excluded   map[string]bool
	unresolved map[string]bool

	// parsed forgets the Nodes gone from the index whenever its
	// membership changes (nil: nothing to forget).
	parsed *parsedNodes
}

func newNodeIndex() *nodeIndex {
	return &nodeIndex{dirty: map[string]bool{}, all: true, byName: map[string]*corev1.Node{}, pos: map[string]int{},
		excluded: map[string]bool{}, unresolved: map[string]bool{}}
}

// track says that from now on every change to the cache is marked (the
// informer's handlers and the term's writes go through marking).
func (x *nodeIndex) track() {
	x.mu.Lock()
	x.tracked, x.all = true, true
	x.mu.Unlock()
}

// mark notes that obj (a Node, or a tombstone of one) changed.
func (x *nodeIndex) mark(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		x.mu.Lock()
		x.all = true
		x.mu.Unlock()
		return
	}
	x.mu.Lock()
	x.dirty[m.GetName()] = true
	x.mu.Unlock()
}

// refresh brings the index up to date: keys lists the cached names, get
// reads one Node (nil: gone). It returns the names whose Node changed, or
// all=true when it rebuilt everything.
func (x *nodeIndex) refresh(keys func() []string, get func(string) *corev1.Node) (changed []string, all bool) {
	x.mu.Lock()
	all = x.all || !x.tracked
	dirty := x.dirty
	x.dirty, x.all = map[string]bool{}, false
	x.mu.Unlock()
	if all {
		x.rebuild(keys(), get)
		return nil, true
	}
	if len(dirty) == 0 {
		return nil, false
	}
	changed = make([]string, 0, len(dirty))
	read := make(map[string]*corev1.Node, len(dirty))
	added, gone := false, false
	for name := range dirty {
		changed = append(changed, name)
		n := get(name)
		read[name] = n
		_, had := x.byName[name]
		switch {
		case n == nil && had:
			gone = true
		case n != nil && !had:
			added = true
		}
	}
	if added || gone {
		// The fleet's membership changed: the sorted list is rebuilt from
		// the index, the changed nodes read again.
		for _, name := range changed {
			x.set(name, read[name])
		}
		x.sortNodes()
		x.forgetGone()
		return changed, false
	}
	nodes := slices.Clone(x.nodes)
	for _, name := range changed {
		x.set(name, read[name])
		nodes[x.pos[name]] = read[name]
	}
	x.nodes = nodes
	return changed, false
}

func (x *nodeIndex) rebuild(keys []string, get func(string) *corev1.Node) {
	clear(x.byName)
	clear(x.excluded)
	clear(x.unresolved)
	for _, k := range keys {
		if n := get(k); n != nil {
			x.set(n.Name, n)
		}
	}
	x.sortNodes()
	x.forgetGone()
}

// forgetGone drops from parsed the Nodes not in the index: those deleted,
// and any a reader parsed again while it went.
func (x *nodeIndex) forgetGone() {
	x.parsed.retain(func(name string) bool {
		_, ok := x.byName[name]
		return ok
	})
}

// set records one Node (nil: gone) in the maps, not in the sorted list.
func (x *nodeIndex) set(name string, n *corev1.Node) {
	delete(x.excluded, name)
	delete(x.unresolved, name)
	if n == nil {
		delete(x.byName, name)
		return
	}
	x.byName[name] = n
	if excludedBy(n) != "" {
		x.excluded[name] = true
	}
	if strings.Contains(n.Annotations[protocol.AnnotationNodeState], string(protocol.StepUnresolved)) && unresolvedState(n) != nil {
		x.unresolved[name] = true
	}
}

func (x *nodeIndex) sortNodes() {
	nodes := make([]*corev1.Node, 0, len(x.byName))
	for _, n := range x.byName {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	clear(x.pos)
	for i, n := range nodes {
		x.pos[n.Name] = i
	}
	x.nodes = nodes
}

// markingCache is a MutationCache that marks in index what changes through
// it: the Node informer's events (OnAddOrUpdate, OnDelete) and the term's
// own writes (Mutation).
type markingCache struct {
	cache.MutationCache
	index *nodeIndex
}

func (m markingCache) Mutation(obj any) {
	m.MutationCache.Mutation(obj)
	m.index.mark(obj)
}

func (m markingCache) OnAddOrUpdate(obj runtime.Object) {
	m.MutationCache.OnAddOrUpdate(obj)
	m.index.mark(obj)
}

func (m markingCache) OnDelete(obj runtime.Object) {
	m.MutationCache.OnDelete(obj)
	m.index.mark(obj)
}
