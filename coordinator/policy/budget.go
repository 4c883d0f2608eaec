package policy

import (
	"fmt"
	"slices"
	"time"

	"github.com/tokenroll/tokenroll/internal/plural"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
)

// Reasons a node does not start; each is one of the coordinator's wait
// reasons (bounded: they label a metric).
const (
	ReasonMaxUnavailable = "max-unavailable"
	ReasonWindow         = "window"
	ReasonZone           = "zone"
	ReasonBlockingPod    = "blocking-pod"
	ReasonBlockingAlert  = "blocking-alert"
	ReasonHealthGate     = "health-gate"
	ReasonPolicyRefused  = "policy-refused"
)

// Reasons lists the reasons, in the order a node is checked.
var Reasons = []string{ReasonPolicyRefused, ReasonWindow, ReasonMaxUnavailable, ReasonZone, ReasonHealthGate, ReasonBlockingPod, ReasonBlockingAlert}

// Block is why a node does not start now, and what to do about it.
type Block struct {
	Reason  string
	Message string
	// Until is when to look again without any change (zero: on a change).
	Until time.Time
}

// Budget counts, per pool and per zone, the nodes out of service, and
// says whether one more may start. A pool is named by its policy ("": the
// nodes no policy covers, under the coordinator's flags).
type Budget struct {
	pools map[string]*pool
}

type pool struct {
	limit, zoneLimit int // zoneLimit 0: none
	sequential       bool
	sequence         []string
	// busy: out of service; found: planned nodes someone else cordoned
	// that we have not started. They are counted apart as the
	// coordinator's global count does: a found node starting takes no
	// new slot, so found nodes do not wait on each other.
	busy, found         int
	zoneBusy, zoneFound map[string]int
	// remaining counts, per zone, the planned nodes not finished yet.
	remaining map[string]int
}

// NewBudget starts an empty budget.
func NewBudget() *Budget { return &Budget{pools: map[string]*pool{}} }

// SetPool sets a pool's limits: limit nodes at once, and the zone policy
// (nil: no limit or order by zone).
func (b *Budget) SetPool(name string, limit int, zones *v1alpha1.ZonePolicy) {
	p := b.pool(name)
	p.limit = limit
	if zones != nil {
		if zones.MaxUnavailable != nil {
			p.zoneLimit = int(*zones.MaxUnavailable)
		}
		p.sequential = zones.Order != v1alpha1.ZoneOrderParallel
		p.sequence = zones.Sequence
	}
}

func (b *Budget) pool(name string) *pool {
	p := b.pools[name]
	if p == nil {
		p = &pool{limit: 1, zoneBusy: map[string]int{}, zoneFound: map[string]int{}, remaining: map[string]int{}}
		b.pools[name] = p
	}
	return p
}

// Count is how a node counts in its pool's budget.
type Count struct {
	// Busy: out of service (ours in progress, NotReady, cordoned by
	// others). Found: planned, cordoned by someone else, not started.
	Busy, Found bool
	// Remaining: planned in the current rollout and not finished.
	Remaining bool
}

// Add counts one node of a pool's zone.
func (b *Budget) Add(poolName, zone string, c Count) {
	p := b.pool(poolName)
	if c.Busy {
		p.busy++
		p.zoneBusy[zone]++
	}
	if c.Found {
		p.found++
		p.zoneFound[zone]++
	}
	if c.Remaining {
		p.remaining[zone]++
	}
}

// CurrentZone is the zone whose nodes may start in a pool ordered by
// zone: the first, in the pool's sequence and then by name, with nodes
// left. ok is false when the pool is not ordered by zone.
func (b *Budget) CurrentZone(poolName string) (zone string, ok bool) {
	p := b.pool(poolName)
	if !p.sequential {
		return "", false
	}
	var rest []string
	for z, n := range p.remaining {
		if n > 0 && !slices.Contains(p.sequence, z) {
			rest = append(rest, z)
		}
	}
	slices.Sort(rest)
	for _, z := range append(slices.Clone(p.sequence), rest...) {
		if p.remaining[z] > 0 {
			return z, true
		}
	}
	return "", true
}

// Check says whether one more node of the pool's zone may start; already
// tells that it is one someone else cordoned (it is out of service
// already, so only nodes we are working on count ahead of it).
func (b *Budget) Check(poolName, zone string, already bool) *Block {
	p := b.pool(poolName)
	label := "the nodes no policy covers"
	if poolName != "" {
		label = "pool " + poolName
	}
	ahead, zoneAhead := p.busy, p.zoneBusy[zone]
	if !already {
		ahead += p.found
		zoneAhead += p.zoneFound[zone]
	}
	if ahead >= p.limit {
		return &Block{Reason: ReasonMaxUnavailable, Message: fmt.Sprintf("%s: %s out of service, its maxUnavailable is %d; the next starts when one is back", label, plural.Count(ahead, "node"), p.limit)}
	}
	if cur, ok := b.CurrentZone(poolName); ok && cur != zone {
		return &Block{Reason: ReasonZone, Message: fmt.Sprintf("%s: zone %q waits until zone %q finishes (%s left there); zones take turns (spec.zones.order Sequential)",
			label, zone, cur, plural.Count(p.remaining[cur], "node"))}
	}
	if p.zoneLimit > 0 && zoneAhead >= p.zoneLimit {
		return &Block{Reason: ReasonZone, Message: fmt.Sprintf("%s: zone %q has %s out of service, its limit per zone is %d (spec.zones.maxUnavailable)", label, zone, plural.Count(zoneAhead, "node"), p.zoneLimit)}
	}
	return nil
}

// Take counts a node that starts.
func (b *Budget) Take(poolName, zone string, already bool) {
	p := b.pool(poolName)
	p.busy++
	p.zoneBusy[zone]++
	if already {
		p.found--
		p.zoneFound[zone]--
	}
}
