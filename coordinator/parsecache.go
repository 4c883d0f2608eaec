package coordinator

import (
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

// annotationCache keeps, per node, the parse of one annotation's value: a
// sync reads every planned node's annotations, and the Node informer hands
// out the same strings until a Node changes, so each value is decoded once
// instead of on every sync. An entry is used only while the value is the
// very string it was parsed from; errors are kept as values are.
//
// get returns shallow copies of one cached value: callers must not modify
// what it returns (slice elements, maps, what pointers point to), nor
// append to its slices; they copy first (slices.Clone) to change them.
type annotationCache[T any] struct {
	parse func(string) (T, error)

	mu     sync.Mutex
	byNode map[string]parsedValue[T]
}

type parsedValue[T any] struct {
	raw   string
	value T
	err   error
}

func newAnnotationCache[T any](parse func(string) (T, error)) *annotationCache[T] {
	return &annotationCache[T]{parse: parse, byNode: map[string]parsedValue[T]{}}
}

// get is parse(raw), from the cache when the value last parsed for node
// was raw.
func (c *annotationCache[T]) get(node, raw string) (T, error) {
	c.mu.Lock()
	e, ok := c.byNode[node]
	c.mu.Unlock()
	if ok && e.raw == raw {
		return e.value, e.err
	}
	// Parsed unlocked: two readers of a new value may both parse it, which
	// costs less than making the readers of every other node wait.
	v, err := c.parse(raw)
	c.mu.Lock()
	c.byNode[node] = parsedValue[T]{raw: raw, value: v, err: err}
	c.mu.Unlock()
	return v, err
}

// retain forgets the nodes keep says are gone.
func (c *annotationCache[T]) retain(keep func(node string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.byNode {
		if !keep(name) {
			delete(c.byNode, name)
		}
	}
}

func (c *annotationCache[T]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byNode)
}

// parsedNodes caches a term's parses of the Node annotations its syncs
// read (annotationCache; what they return is not to be modified). A nil
// *parsedNodes parses every time: for readers that see each Node once.
type parsedNodes struct {
	states   *annotationCache[protocol.NodeState]
	reports  *annotationCache[protocol.TokenReport]
	statuses *annotationCache[protocol.Status]
}

func newParsedNodes() *parsedNodes {
	return &parsedNodes{states: newAnnotationCache(protocol.ParseNodeState), reports: newAnnotationCache(protocol.ParseTokenReport),
		statuses: newAnnotationCache(protocol.ParseStatus)}
}

// agentStatus is the node's status annotation (the agent's answer to a
// request), parsed: read for every acting node on each sync.
func (p *parsedNodes) agentStatus(n *corev1.Node) (protocol.Status, error) {
	raw := n.Annotations[protocol.AnnotationStatus]
	if p == nil {
		return protocol.ParseStatus(raw)
	}
	return p.statuses.get(n.Name, raw)
}

// nodeState is the node's state annotation, parsed.
func (p *parsedNodes) nodeState(n *corev1.Node) (protocol.NodeState, error) {
	return p.nodeStateOf(n.Name, n.Annotations[protocol.AnnotationNodeState])
}

// nodeStateOf is raw, node's state annotation, parsed.
func (p *parsedNodes) nodeStateOf(node, raw string) (protocol.NodeState, error) {
	if p == nil {
		return protocol.ParseNodeState(raw)
	}
	return p.states.get(node, raw)
}

// tokenReport is the node's tokens annotation, parsed.
func (p *parsedNodes) tokenReport(n *corev1.Node) (protocol.TokenReport, error) {
	return p.tokenReportOf(n.Name, n.Annotations[protocol.AnnotationTokens])
}

// tokenReportOf is raw, node's tokens annotation, parsed.
func (p *parsedNodes) tokenReportOf(node, raw string) (protocol.TokenReport, error) {
	if p == nil {
		return protocol.ParseTokenReport(raw)
	}
	return p.reports.get(node, raw)
}

// retain forgets the nodes keep says are gone, so that a fleet whose
// nodes come and go under new names does not grow the caches.
func (p *parsedNodes) retain(keep func(node string) bool) {
	if p == nil {
		return
	}
	p.states.retain(keep)
	p.reports.retain(keep)
	p.statuses.retain(keep)
}
