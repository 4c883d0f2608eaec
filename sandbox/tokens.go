package sandbox

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
)

// tokenCensus is the sandbox's own look at every token on every node: the
// files on disk judged by the kubelet's rules against the issuer the API
// servers name in OIDC discovery, independent of what the agents report.
type tokenCensus struct {
	Issuer string
	// States counts the tokens of every node by state.
	States map[protocol.State]int
	// Live counts the tokens of pods the API server knows (orphaned ones
	// left out); Pods is how many such pods hold at least one.
	Live int
	// Problems are the tokens of live pods that are not fresh, at most a
	// few, for the failure message.
	Problems []string
	// OldIssuers are the issuers of issuer-mismatch tokens and the latest
	// time one of them is refreshed by its kubelet.
	OldIssuers map[string]time.Time
}

// AllFresh reports whether every token of a live pod is fresh.
func (c tokenCensus) AllFresh() bool {
	return c.Live > 0 && c.States[protocol.StateFresh] == c.Live
}

// stateCounts is the census as the summary shows it.
func (c tokenCensus) stateCounts() map[string]int {
	out := map[string]int{}
	for st, n := range c.States {
		out[string(st)] = n
	}
	return out
}

// censusRetry carries the sandbox's own reads through an API server's
// restart: the revision rollout after an issuer change restarts every API
// server, one at a time, and with one API server the census right after
// the change meets the only one going down. Up to a minute of waiting in
// all, each attempt bounded by 30 s.
func censusRetry() apiretry.Policy {
	return apiretry.Policy{
		Backoff:        wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 10, Cap: 8 * time.Second},
		AttemptTimeout: 30 * time.Second,
		Clock:          clock.RealClock{},
	}
}

// census scans every node's kubelet root and judges the tokens against iss,
// or, when iss is empty, the issuer the API server names in OIDC discovery.
// Pods the API server does not list on the node count as orphaned, as the
// agent judges them with the kubelet's Pods API.
func (s *Sandbox) census(ctx context.Context, iss string) (tokenCensus, error) {
	if iss == "" {
		if err := s.retry.Do(ctx, func(ctx context.Context) (err error) {
			iss, err = issuer.Discover(ctx, s.Admin.Discovery().RESTClient())
			return err
		}); err != nil {
			return tokenCensus{}, fmt.Errorf("reading the signing issuer from OIDC discovery: %w", err)
		}
	}
	var pods *corev1.PodList
	if err := s.retry.Do(ctx, func(ctx context.Context) (err error) {
		pods, err = s.Admin.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		return err
	}); err != nil {
		return tokenCensus{}, fmt.Errorf("listing pods: %w", err)
	}
	live := map[string]map[string]podsapi.Pod{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
			continue
		}
		if live[p.Spec.NodeName] == nil {
			live[p.Spec.NodeName] = map[string]podsapi.Pod{}
		}
		live[p.Spec.NodeName][string(p.UID)] = podsapi.FromPod(p)
	}
	c := tokenCensus{Issuer: iss, States: map[protocol.State]int{}, OldIssuers: map[string]time.Time{}}
	sc := scan.NewScanner()
	now := time.Now()
	for _, n := range s.Nodes {
		livePods := live[n.Name()]
		if livePods == nil {
			livePods = map[string]podsapi.Pod{}
		}
		rep, err := sc.Scan(scan.Options{Root: n.Root(), Node: n.Name(), Now: now, ExpectedIssuer: iss, Grace: token.DefaultGrace, Pods: livePods})
		if err != nil {
			return tokenCensus{}, err
		}
		for _, t := range rep.Tokens {
			c.States[t.State]++
			if t.State == protocol.StateOrphaned || t.State == protocol.StateForeign {
				continue
			}
			c.Live++
			if t.State == protocol.StateIssuerMismatch && t.RefreshAt.After(c.OldIssuers[t.Issuer]) {
				c.OldIssuers[t.Issuer] = t.RefreshAt
			}
			if t.State != protocol.StateFresh && len(c.Problems) < 5 {
				c.Problems = append(c.Problems, fmt.Sprintf("%s %s/%s %s/%s: %s", n.Name(), t.Namespace, t.Pod, t.Volume, t.Path, t.State))
			}
		}
	}
	return c, nil
}
