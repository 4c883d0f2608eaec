package coordinator

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenroll/tokenroll/protocol"
)

// The cache parses a node's value once while it stays the same string,
// again when it changes, keeps errors as it keeps values, and keeps each
// node apart.
func TestAnnotationCache(t *testing.T) {
	parses := 0
	c := newAnnotationCache(func(raw string) (int, error) {
		parses++
		return strconv.Atoi(raw)
	})
	get := func(node, raw string, want int, wantErr bool, wantParses int) {
		t.Helper()
		v, err := c.get(node, raw)
		if v != want || (err != nil) != wantErr {
			t.Errorf("get(%s, %q) = %d, %v; want %d, error %v", node, raw, v, err, want, wantErr)
		}
		if parses != wantParses {
			t.Errorf("after get(%s, %q): %d parses, want %d", node, raw, parses, wantParses)
		}
	}
	get("a", "1", 1, false, 1)
	get("a", "1", 1, false, 1)
	// An equal string of other memory is the same value.
	get("a", strconv.Itoa(1), 1, false, 1)
	get("b", "1", 1, false, 2)
	get("a", "2", 2, false, 3)
	get("a", "2", 2, false, 3)
	get("a", "x", 0, true, 4)
	get("a", "x", 0, true, 4)
	get("a", "1", 1, false, 5)

	c.retain(func(node string) bool { return node != "a" })
	if n := c.len(); n != 1 {
		t.Errorf("%d nodes cached after forgetting a, want 1 (b)", n)
	}
	get("b", "1", 1, false, 5)
	get("a", "1", 1, false, 6)
}

// A nil parsedNodes parses every time, as the protocol does.
func TestParsedNodesNil(t *testing.T) {
	var p *parsedNodes
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{protocol.AnnotationTokens: "{"}}}
	if _, err := p.tokenReport(n); err == nil {
		t.Error("a nil cache read an unparsable tokens report without error")
	}
	if _, err := p.nodeState(n); err == nil {
		t.Error("a nil cache read an absent node state without error")
	}
	if _, err := p.agentStatus(n); err == nil {
		t.Error("a nil cache read an absent agent status without error")
	}
	p.retain(func(string) bool { return false })
}

// The node index forgets the parses of the Nodes it no longer holds, when
// it is rebuilt and when a refresh finds a Node gone.
func TestNodeIndexForgetsParses(t *testing.T) {
	x := newNodeIndex()
	x.parsed = newParsedNodes()
	byName := map[string]*corev1.Node{}
	keys := func() []string {
		var out []string
		for k := range byName {
			out = append(out, k)
		}
		return out
	}
	get := func(name string) *corev1.Node { return byName[name] }
	read := func(names ...string) {
		for _, name := range names {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
				protocol.AnnotationTokens: `{"issuer":"x"}`, protocol.AnnotationNodeState: `{"rollout":"r"}`, protocol.AnnotationStatus: `{"id":"r-1","phase":"done"}`}}}
			if _, err := x.parsed.tokenReport(n); err != nil {
				t.Fatal(err)
			}
			if _, err := x.parsed.nodeState(n); err != nil {
				t.Fatal(err)
			}
			if _, err := x.parsed.agentStatus(n); err != nil {
				t.Fatal(err)
			}
		}
	}
	cached := func(want int) {
		t.Helper()
		if s, r, a := x.parsed.states.len(), x.parsed.reports.len(), x.parsed.statuses.len(); s != want || r != want || a != want {
			t.Errorf("%d node states, %d tokens reports and %d agent statuses cached, want %d each", s, r, a, want)
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		byName[name] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	x.refresh(keys, get)
	read("a", "b", "c", "gone-before")
	cached(4)
	x.track()
	x.refresh(keys, get) // rebuilt: track asks for it
	cached(3)

	delete(byName, "b")
	x.mark(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b"}})
	if _, all := x.refresh(keys, get); all {
		t.Fatal("the refresh after one deletion rebuilt everything; want it to follow the change")
	}
	cached(2)
	if _, ok := x.parsed.states.byNode["b"]; ok {
		t.Error("the deleted node b is still cached")
	}
}

// A term's caches forget a Node deleted while a rollout runs on it: a
// fleet whose nodes come and go under new names does not grow them.
func TestTermForgetsDeletedNode(t *testing.T) {
	f := newIdleFleet(t, 20)
	ctx := context.Background()
	changed := fleetNode(7, 2)
	raw, err := json.Marshal(expiredReport())
	if err != nil {
		t.Fatal(err)
	}
	changed.Annotations[protocol.AnnotationTokens] = string(raw)
	// A record of an earlier rollout, which every sync of this one reads.
	changed.Annotations[protocol.AnnotationNodeState] = `{"rollout":"earlier","step":"done"}`
	f.update(t, changed)
	// The agent's hourly rewrite, moving only the TokenIDs: the handler
	// compares the reports, through the cache.
	rep := expiredReport()
	rep.TokenIDs = map[string][]string{"uid": {protocol.TokenIDEntry(protocol.TokenID("jti"), t0)}}
	raw, err = json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	rewritten := changed.DeepCopy()
	rewritten.ResourceVersion = "3"
	rewritten.Annotations[protocol.AnnotationTokens] = string(raw)
	f.update(t, rewritten)
	if _, ok := f.t.parsed.reports.byNode[changed.Name]; !ok {
		t.Fatalf("the handler did not compare %s's tokens reports through the cache", changed.Name)
	}
	for range 2 {
		if _, err := f.t.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r := StateOf(f.t.recordList()).Rollout; r == nil || len(r.Nodes) != 1 || r.Nodes[0].Name != changed.Name {
		t.Fatalf("rollout %+v, want one on %s", r, changed.Name)
	}
	if _, ok := f.t.parsed.states.byNode[changed.Name]; !ok {
		t.Fatalf("the sync of a rollout on %s did not read its state through the cache", changed.Name)
	}
	n, ok, err := f.nodes.GetByKey(changed.Name)
	if err != nil || !ok {
		t.Fatalf("node %s not in the store: %v", changed.Name, err)
	}
	if err := f.nodes.Delete(n); err != nil {
		t.Fatal(err)
	}
	f.handler.OnDelete(n)
	if _, err := f.t.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.t.parsed.states.byNode[changed.Name]; ok {
		t.Errorf("the deleted node %s's state is still cached", changed.Name)
	}
	if _, ok := f.t.parsed.reports.byNode[changed.Name]; ok {
		t.Errorf("the deleted node %s's tokens report is still cached", changed.Name)
	}
}
