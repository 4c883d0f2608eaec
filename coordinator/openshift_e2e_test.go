package coordinator_test

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
)

// startOpenShift installs the OpenShift CRDs and runs the simulated
// kube-apiserver operator over the three API servers.
func (e *env) startOpenShift(trust time.Duration, observe func(openshiftsim.Event)) dynamic.Interface {
	e.t.Helper()
	if err := openshiftsim.InstallCRDs(e.ctx, e.cp.AdminConfig()); err != nil {
		e.t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(e.cp.AdminConfig())
	op, err := openshiftsim.New(openshiftsim.Config{ControlPlane: e.cp, Client: dyn, NodeNames: []string{"master-0", "master-1", "master-2"},
		TrustWindow: trust, Log: e.log.Named("operator"), Observer: observe})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := op.Run(ctx); err != nil && ctx.Err() == nil {
			e.t.Errorf("operator: %v", err)
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-op.Ready():
	case <-time.After(2 * time.Minute):
		e.t.Fatal("the simulated operator did not settle")
	}
	return dyn
}

func (e *env) openshiftGate(dyn dynamic.Interface) coordinator.Gate {
	e.t.Helper()
	g, err := coordinator.NewGate(e.ctx, coordinator.GateAuto, kubernetes.NewForConfigOrDie(e.cp.AdminConfig()), dyn)
	if err != nil {
		e.t.Fatal(err)
	}
	return g
}

// The OpenShift documentation's procedure end to end: the administrator changes
// Authentication/cluster .spec.serviceAccountIssuer; the operator rolls
// revision 12 over three API servers, during which nothing happens; the
// gate opens; the old issuer is not trusted (no trust window), so every
// node is remediated, one at a time, until every token is from the new
// issuer.
func TestOpenShiftIssuerRotation(t *testing.T) {
	nodes := []string{"worker-a", "worker-b", "worker-c"}
	e := startEnv(t, 3, nodes...)
	var mu sync.Mutex
	var during []string // anything the coordinator did while the revision rolled
	rolling := false
	dyn := e.startOpenShift(0, func(ev openshiftsim.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch ev.Kind {
		case openshiftsim.EventRevisionStarted:
			rolling = true
		case openshiftsim.EventRolloutDone:
			rolling = false
		}
		if rolling {
			for name, st := range e.checker.Summary().NodeStates {
				during = append(during, string(ev.Kind)+": "+name+" "+st)
			}
		}
	})
	run := e.startCoordinator("c1", e.openshiftGate(dyn), nil)
	e.waitObserved(oldIssuer)

	if err := openshiftsim.SetIssuer(e.ctx, dyn, newIssuer); err != nil {
		t.Fatal(err)
	}
	st := e.waitState("the rollout finished", func(s coordinator.State) bool {
		return s.Rollout != nil && s.Rollout.Phase == coordinator.RolloutDone
	})
	mu.Lock()
	if len(during) > 0 {
		t.Errorf("the coordinator acted while kube-apiserver revision 12 rolled out: %v", during)
	}
	mu.Unlock()
	if st.Rollout.Issuer != newIssuer || st.Rollout.Trigger != coordinator.TriggerIssuer || len(st.Rollout.Nodes) != len(nodes) {
		t.Errorf("rollout %+v: want every node, for the new issuer", st.Rollout)
	}
	if _, seen := run.c.ObservedIssuer(); st.Rollout.CreatedAt.Before(seen.Truncate(time.Second)) {
		t.Errorf("rollout planned at %s, before the new issuer was seen with the gate open at %s", st.Rollout.CreatedAt, seen)
	}
	e.waitNodes("every token from the new issuer", func(m map[string]*corev1.Node) bool {
		return allNodes(m, nodes, func(n *corev1.Node) bool { return tokensFrom(n, newIssuer) == 3 })
	})
	e.checkInvariants(1)
	if got := gatherGauge(t, run, "tokenroll_gate_revision", "kind", "latest"); got != 12 {
		t.Errorf("gate revision metric %v, want 12", got)
	}
}

// With OpenShift's default trust window the old issuer stays trusted for
// 24 h; every old token refreshes well before that, so the plan is empty
// and no node is touched.
func TestOpenShiftTrustWindowNeedsNoWork(t *testing.T) {
	nodes := []string{"worker-a", "worker-b"}
	e := startEnv(t, 3, nodes...)
	dyn := e.startOpenShift(24*time.Hour, nil)
	gate := e.openshiftGate(dyn)
	run := e.startCoordinator("c1", gate, func(c *coordinator.Config) { c.AgentWait = time.Minute })
	e.waitObserved(oldIssuer)
	if err := openshiftsim.SetIssuer(e.ctx, dyn, newIssuer); err != nil {
		t.Fatal(err)
	}
	e.waitObserved(newIssuer)
	e.waitNodes("every agent judging by the new issuer, with the old tokens' refresh times", func(m map[string]*corev1.Node) bool {
		return allNodes(m, nodes, func(n *corev1.Node) bool {
			rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
			if err != nil || rep.Issuer != newIssuer {
				return false
			}
			for _, it := range rep.Issuers {
				if it.Issuer == oldIssuer && it.LastRefreshAt.IsZero() {
					return false
				}
			}
			return true
		})
	})
	var list []*corev1.Node
	_ = e.checker.WaitFor(e.ctx, func(m map[string]*corev1.Node) bool {
		for _, n := range m {
			list = append(list, n)
		}
		return true
	})
	p := coordinator.MakePlan(coordinator.PlanInput{Now: time.Now(), Issuer: newIssuer, Gate: gate.State(), Strategy: coordinator.KubeletRestart,
		Margin: time.Hour, Nodes: list})
	if len(p.Nodes) != 0 || len(p.Skipped) != len(nodes) {
		t.Errorf("plan %+v: want no node, all left alone", p)
	}
	// A rollout, had the coordinator planned one, is written by a sync
	// after the reports above.
	e.syncRanOn(run, nodes[0])
	st, err := coordinator.Store{Client: e.api}.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Rollout != nil {
		t.Errorf("a rollout was planned: %+v", st.Rollout)
	}
	e.checkInvariants(0)
}
