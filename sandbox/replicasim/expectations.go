package replicasim

import (
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// expectationsTTL is how long a ReplicaSet waits for its own creations and
// deletions to reach the cache before acting again anyway, as the
// ReplicaSet controller's ExpectationsTimeout.
const expectationsTTL = 5 * time.Minute

// expectations keep a ReplicaSet from acting on a cache that has not yet
// seen its last creations and deletions, which would create or delete
// twice: creations are counted (the server names the pods), deletions are
// kept by pod name, so that a pod deleted by someone else (an eviction)
// does not stand for one of ours.
type expectations struct {
	clock clock.Clock
	mu    sync.Mutex
	m     map[cache.ObjectName]*expectation
}

type expectation struct {
	adds  int
	dels  map[string]bool
	since time.Time
}

func newExpectations(clk clock.Clock) *expectations {
	return &expectations{clock: clk, m: map[cache.ObjectName]*expectation{}}
}

// satisfied says whether key may act: nothing it did is still unseen, or
// it has waited longer than expectationsTTL.
func (e *expectations) satisfied(key cache.ObjectName) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	x, ok := e.m[key]
	if !ok || (x.adds <= 0 && len(x.dels) == 0) {
		return true
	}
	return e.clock.Since(x.since) > expectationsTTL
}

func (e *expectations) expectCreations(key cache.ObjectName, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m[key] = &expectation{adds: n, dels: map[string]bool{}, since: e.clock.Now()}
}

func (e *expectations) expectDeletions(key cache.ObjectName, names []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x := &expectation{dels: map[string]bool{}, since: e.clock.Now()}
	for _, n := range names {
		x.dels[n] = true
	}
	e.m[key] = x
}

func (e *expectations) creationObserved(key cache.ObjectName) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if x, ok := e.m[key]; ok {
		x.adds--
	}
}

func (e *expectations) deletionObserved(key cache.ObjectName, pod string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if x, ok := e.m[key]; ok {
		delete(x.dels, pod)
	}
}

func (e *expectations) forget(key cache.ObjectName) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.m, key)
}
