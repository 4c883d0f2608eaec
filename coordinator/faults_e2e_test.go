package coordinator_test

import (
	"hash/fnv"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/faultproxy"
	"github.com/tokenroll/tokenroll/sandbox/fleet"
)

// fastRetry is the write policy of the fault tests: the default's shape,
// on a test's time scale, so that a lost answer costs two seconds.
func fastRetry() apiretry.Policy {
	return apiretry.Policy{Backoff: wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 6, Cap: 2 * time.Second},
		AttemptTimeout: 2 * time.Second, MaxRetryAfter: 5 * time.Second}
}

func seed(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

// An issuer change remediated through an API server that fails: the
// coordinator and every agent reach it through a fault proxy answering
// chosen writes with 500s, 429s and lost answers (the write applied, the
// client timed out). The rollout completes with every invariant held:
// each node asked to act once and acting once, never more than
// max-unavailable out of service, none left cordoned, no halt.
func TestRolloutThroughAPIFaults(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	var mu sync.Mutex
	var agentProxies []*faultproxy.Proxy
	e := startEnvWith(t, 1, func(c *fleet.Config) {
		c.AgentRetry = fastRetry()
		c.AgentConfig = func(node string, rc *rest.Config) (*rest.Config, error) {
			p, err := faultproxy.New(rc, seed(node),
				faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.Hang, Skip: 2, Count: 1},
				faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.3},
				faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.Throttle, RetryAfter: 1, Probability: 0.1})
			if err != nil {
				return nil, err
			}
			t.Cleanup(p.Close)
			mu.Lock()
			agentProxies = append(agentProxies, p)
			mu.Unlock()
			return p.Config(rc), nil
		}
	}, nodes...)

	cp, err := faultproxy.New(e.cp.AdminConfig(), seed("coordinator"),
		// The first node's cordon meets two 500s and a throttle.
		faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Count: 2},
		faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.Throttle, RetryAfter: 1, Count: 1},
		// Later writes lose their answers now and then: a request, an
		// uncordon, the rollout state.
		faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.Hang, Skip: 1, Count: 2},
		faultproxy.Rule{Verb: "update", Resource: "tokenrollouts", Subresource: "status", Fault: faultproxy.Hang, Skip: 1, Count: 1},
		faultproxy.Rule{Verb: "patch", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.25},
		faultproxy.Rule{Verb: "update", Resource: "tokenrollouts", Subresource: "status", Fault: faultproxy.ServerError, Probability: 0.25},
		faultproxy.Rule{Verb: "get", Resource: "nodes", Fault: faultproxy.ServerError, Probability: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)
	e.startCoordinator("c1", nil, func(c *coordinator.Config) {
		c.Client = kubernetes.NewForConfigOrDie(cp.Config(e.cp.AdminConfig()))
		c.Rollouts = versioned.NewForConfigOrDie(cp.Config(e.cp.AdminConfig()))
		c.WriteRetry = fastRetry()
	})
	e.waitObserved(oldIssuer)

	start := time.Now()
	e.restartAPIServers(newIssuer)
	st := e.waitState("a rollout finished or halted", func(s coordinator.State) bool {
		return s.Rollout != nil && (s.Rollout.Phase == coordinator.RolloutDone || s.Rollout.Phase == coordinator.RolloutHalted)
	})
	if st.Rollout.Phase != coordinator.RolloutDone || len(st.Rollout.Nodes) != 3 {
		t.Fatalf("rollout %s with %d nodes (%s: %s); want done with 3", st.Rollout.Phase, len(st.Rollout.Nodes), st.Rollout.HaltReason, st.Rollout.Message)
	}
	t.Logf("rollout through faults: %s", time.Since(start).Round(100*time.Millisecond))
	s := e.checkInvariants(1)
	for _, name := range nodes {
		if s.ActionsPerNode[name] != 1 || e.fleet.Members[name].KubeletRestarts.Load() != 1 {
			t.Errorf("node %s: %d requests, %d kubelet restarts; want one of each", name, s.ActionsPerNode[name], e.fleet.Members[name].KubeletRestarts.Load())
		}
	}
	kinds := map[faultproxy.Fault]int{}
	for _, in := range cp.Injected() {
		kinds[in.Fault]++
	}
	if kinds[faultproxy.ServerError] < 2 || kinds[faultproxy.Throttle] < 1 || kinds[faultproxy.Hang] < 3 {
		t.Errorf("faults injected into the coordinator's requests: %v; want at least two 500s, a 429 and three lost answers", kinds)
	}
	agentFaults := 0
	mu.Lock()
	for _, p := range agentProxies {
		agentFaults += len(p.Injected())
	}
	mu.Unlock()
	if agentFaults < len(nodes) {
		t.Errorf("%d faults injected into the agents' requests; want at least one per agent", agentFaults)
	}
	t.Logf("faults: coordinator %v, agents %d", kinds, agentFaults)
}
