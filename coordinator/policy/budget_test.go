package policy

import (
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// admitAll offers nodes in order, as the coordinator does, and returns the
// ones that start and why each other does not.
func admitAll(b *Budget, pool string, nodes [][2]string) (started []string, blocks map[string]*Block) {
	blocks = map[string]*Block{}
	for _, n := range nodes {
		if blk := b.Check(pool, n[1], false); blk != nil {
			blocks[n[0]] = blk
			continue
		}
		b.Take(pool, n[1], false)
		started = append(started, n[0])
	}
	return started, blocks
}

func TestBudgetPools(t *testing.T) {
	b := NewBudget()
	b.SetPool("a", 2, nil)
	b.SetPool("b", 1, nil)
	b.Add("b", "", Count{Busy: true}) // a NotReady node of pool b
	for range 4 {
		b.Add("a", "", Count{Remaining: true})
	}
	got, _ := admitAll(b, "a", [][2]string{{"a1"}, {"a2"}, {"a3"}})
	if strings.Join(got, ",") != "a1,a2" {
		t.Errorf("pool a started %v, want a1,a2", got)
	}
	blk := b.Check("b", "", false)
	if blk == nil || blk.Reason != ReasonMaxUnavailable || !strings.Contains(blk.Message, "pool b: 1 node out of service, its maxUnavailable is 1") {
		t.Errorf("pool b: %+v", blk)
	}
}

// A node someone else cordoned takes no new slot: found nodes do not wait
// on each other, but they do hold up the nodes we would cordon.
func TestBudgetFoundNodes(t *testing.T) {
	b := NewBudget()
	b.SetPool("", 1, nil)
	b.Add("", "", Count{Found: true})
	b.Add("", "", Count{Found: true})
	if blk := b.Check("", "", false); blk == nil {
		t.Error("a node to cordon started while two found nodes fill the budget")
	}
	if blk := b.Check("", "", true); blk != nil {
		t.Errorf("the first found node: %+v", blk)
	}
	b.Take("", "", true)
	if blk := b.Check("", "", true); blk == nil {
		t.Error("the second found node started beside the first, beyond the limit")
	}
}

func TestBudgetZones(t *testing.T) {
	zones := [][2]string{{"a1", "za"}, {"b1", "zb"}, {"c1", "zc"}, {"a2", "za"}, {"b2", "zb"}, {"c2", "zc"}}
	t.Run("parallel, one per zone", func(t *testing.T) {
		b := NewBudget()
		b.SetPool("p", 10, &v1alpha1.ZonePolicy{MaxUnavailable: ptr.To[int32](1), Order: v1alpha1.ZoneOrderParallel})
		for _, n := range zones {
			b.Add("p", n[1], Count{Remaining: true})
		}
		got, blocks := admitAll(b, "p", zones)
		if strings.Join(got, ",") != "a1,b1,c1" {
			t.Errorf("started %v, want one per zone", got)
		}
		if blk := blocks["a2"]; blk == nil || blk.Reason != ReasonZone || !strings.Contains(blk.Message, `zone "za" has 1 node out of service, its limit per zone is 1`) {
			t.Errorf("a2: %+v", blk)
		}
	})
	t.Run("sequential, in the given order then by name", func(t *testing.T) {
		b := NewBudget()
		b.SetPool("p", 10, &v1alpha1.ZonePolicy{Sequence: []string{"zc"}})
		for _, n := range zones {
			b.Add("p", n[1], Count{Remaining: true})
		}
		got, blocks := admitAll(b, "p", zones)
		if strings.Join(got, ",") != "c1,c2" {
			t.Errorf("started %v, want zone zc's nodes only", got)
		}
		if blk := blocks["a1"]; blk == nil || blk.Reason != ReasonZone || !strings.Contains(blk.Message, `zone "za" waits until zone "zc" finishes (2 nodes left there)`) {
			t.Errorf("a1: %+v", blk)
		}
		// zc done: za comes next, by name.
		b2 := NewBudget()
		b2.SetPool("p", 10, &v1alpha1.ZonePolicy{Sequence: []string{"zc"}})
		for _, n := range zones[:2] {
			b2.Add("p", n[1], Count{Remaining: true})
		}
		if z, ok := b2.CurrentZone("p"); !ok || z != "za" {
			t.Errorf("current zone %q %v, want za", z, ok)
		}
	})
}
