package sandbox

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/internal/nodeutil"
)

// Disruption is what a remediation cost the cluster, as the sandbox saw it
// itself: its own watch on every pod and Node, and its nodes' boot IDs.
// Nothing in it comes from tokenroll's account of what it did.
type Disruption struct {
	// PodsRestarted counts pod starts after the issuer change: a pod that
	// replaced a deleted or evicted one, once its containers started, and
	// a pod whose containers started again in place (its node rebooted).
	PodsRestarted int `json:"podsRestarted"`
	// NodeReboots counts the boot IDs the nodes changed to.
	NodeReboots int `json:"nodeReboots"`
	// NodeSecondsOutOfService sums, over the nodes, the time each was
	// cordoned or NotReady.
	NodeSecondsOutOfService float64 `json:"nodeSecondsOutOfService"`
}

// disruptionCounter adds up Disruption from observations. Before begin it
// only learns what is there (the pods' current containers, the boot IDs,
// the nodes out of service); from begin on, what changes counts. Times are
// the caller's, so that tests feed them.
type disruptionCounter struct {
	mu    sync.Mutex
	began bool
	since time.Time
	// pods are the container starts seen of each pod.
	pods map[types.UID]*podStarts
	// boots is each node's boot ID now.
	boots   map[string]string
	reboots int
	// outSince is when each node out of service went out (or since, if it
	// was out at begin).
	outSince map[string]time.Time
	// out is the time out of service of nodes back in service.
	out      time.Duration
	restarts int
}

// podStarts are the starts seen of one pod's containers.
type podStarts struct {
	// base is how many starts were seen before begin (they do not count).
	base int
	// seen is each container's starts (restart count and start time).
	seen map[string]map[containerStart]bool
	// counted is how many starts of this pod were counted since begin.
	counted int
}

// containerStart identifies one start of a container, as the kubelet posts
// it: a new start has a new restart count, a new start time, or both.
type containerStart struct {
	Restarts  int32
	StartedAt time.Time
}

func newDisruptionCounter() *disruptionCounter {
	return &disruptionCounter{pods: map[types.UID]*podStarts{}, boots: map[string]string{}, outSince: map[string]time.Time{}}
}

// begin starts counting at now.
func (c *disruptionCounter) begin(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.began, c.since = true, now
	for name, t := range c.outSince {
		if t.Before(now) {
			c.outSince[name] = now
		}
	}
}

// pod notes a pod as the watch shows it. A pod's starts are its running
// containers' starts; a pod with several containers that all start again
// (a reboot) counts once, by the container seen starting most often.
func (c *disruptionCounter) pod(p *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := c.pods[p.UID]
	if ps == nil {
		ps = &podStarts{seen: map[string]map[containerStart]bool{}}
		c.pods[p.UID] = ps
	}
	most := 0
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil {
			continue
		}
		starts := ps.seen[cs.Name]
		if starts == nil {
			starts = map[containerStart]bool{}
			ps.seen[cs.Name] = starts
		}
		starts[containerStart{Restarts: cs.RestartCount, StartedAt: cs.State.Running.StartedAt.Time}] = true
		most = max(most, len(starts))
	}
	// Starts before begin do not count.
	if !c.began {
		ps.base = most
		return
	}
	if n := max(most-ps.base, 0); n > ps.counted {
		c.restarts += n - ps.counted
		ps.counted = n
	}
}

// podGone forgets a deleted pod.
func (c *disruptionCounter) podGone(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pods, uid)
}

// boot notes the boot ID a node is in: a change after begin is a reboot.
func (c *disruptionCounter) boot(node, id string) {
	if id == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.boots[node]; ok && old != id && c.began {
		c.reboots++
	}
	c.boots[node] = id
}

// node notes whether a node is out of service (cordoned or NotReady) at
// now.
func (c *disruptionCounter) node(name string, outOfService bool, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	since, wasOut := c.outSince[name]
	switch {
	case outOfService && !wasOut:
		if c.began && now.Before(c.since) {
			now = c.since
		}
		c.outSince[name] = now
	case !outOfService && wasOut:
		delete(c.outSince, name)
		if c.began && now.After(since) {
			c.out += now.Sub(since)
		}
	}
}

// figures are the counts from begin to now; nodes still out of service
// count up to now.
func (c *disruptionCounter) figures(now time.Time) Disruption {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.out
	if c.began {
		for _, since := range c.outSince {
			if now.After(since) {
				out += now.Sub(since)
			}
		}
	}
	return Disruption{PodsRestarted: c.restarts, NodeReboots: c.reboots, NodeSecondsOutOfService: math.Round(out.Seconds()*10) / 10}
}

// watchDisruption feeds c from a watch on every pod and every Node until
// ctx ends; it returns once the caches are synced.
func watchDisruption(ctx context.Context, client kubernetes.Interface, clk clock.PassiveClock, c *disruptionCounter) error {
	f := informers.NewSharedInformerFactory(client, 0)
	pods := f.Core().V1().Pods().Informer()
	nodes := f.Core().V1().Nodes().Informer()
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { podOf(o, c.pod) },
		UpdateFunc: func(_, o any) { podOf(o, c.pod) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			podOf(o, func(p *corev1.Pod) { c.podGone(p.UID) })
		},
	}); err != nil {
		return err
	}
	node := func(o any) {
		if n, ok := o.(*corev1.Node); ok {
			c.node(n.Name, n.Spec.Unschedulable || !nodeutil.Ready(n), clk.Now())
		}
	}
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: node, UpdateFunc: func(_, o any) { node(o) },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced, nodes.HasSynced) {
		return fmt.Errorf("watching pods and nodes for the disruption figures: caches did not sync: %w", context.Cause(ctx))
	}
	return nil
}

func podOf(o any, f func(*corev1.Pod)) {
	if p, ok := o.(*corev1.Pod); ok {
		f(p)
	}
}
