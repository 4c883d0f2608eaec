package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

// member is one simulated node with the real agent in-process, as
// sandbox/fleet builds it, except that its client talks to the API server
// it is given: fleet always goes through the load balancer, which would mix
// the nodes' requests into the coordinator's API server.
type member struct {
	name   string
	sim    *kubeletsim.Node
	client kubernetes.Interface
	// actions counts what the agent's executor did (reboots and kubelet
	// restarts).
	actions atomic.Int32
	down    time.Duration
	dir     string
	log     *zap.Logger
	// restart is signalled when the node comes up after a reboot: the
	// agent's pod starts afresh.
	restart chan struct{}
}

// nodeSet is the running members.
type nodeSet struct {
	members []*member
	wg      sync.WaitGroup
}

// nodeSpec says how to run the simulated nodes.
type nodeSpec struct {
	names []string
	// config is the node's own identity, already pointed at the API server
	// the nodes use.
	config        func(node string) (*rest.Config, error)
	dir           string
	rebootDown    time.Duration
	agentInterval time.Duration
	log           *zap.Logger
}

// startNodes runs the simulated kubelets until ctx ends and returns once
// each has registered; their agents start then.
func startNodes(ctx context.Context, spec nodeSpec) (*nodeSet, error) {
	s := &nodeSet{}
	for _, name := range spec.names {
		rc, err := spec.config(name)
		if err != nil {
			return nil, err
		}
		m := &member{name: name, down: spec.rebootDown, dir: spec.dir, log: spec.log, restart: make(chan struct{}, 1)}
		observer := func(e kubeletsim.Event) {
			if e.Kind == kubeletsim.EventUp {
				select {
				case m.restart <- struct{}{}:
				default:
				}
			}
		}
		if m.sim, err = kubeletsim.New(kubeletsim.Config{Name: name, Root: filepath.Join(spec.dir, name), RESTConfig: rc,
			Observer: observer, Logger: spec.log.Named("kubelet").With(zap.String("node", name))}); err != nil {
			return nil, err
		}
		// The agent acts as its node, as in sandbox/fleet: the Node
		// authorizer lets a node read and patch its own Node.
		if m.client, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, err
		}
		s.members = append(s.members, m)
		s.wg.Go(func() {
			if err := m.sim.Run(ctx); err != nil && ctx.Err() == nil {
				spec.log.Error("simulated node stopped", zap.String("node", name), zap.Error(err))
			}
		})
	}
	for _, m := range s.members {
		select {
		case <-m.sim.Registered():
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Minute):
			return nil, fmt.Errorf("simulated node %s did not register within 2m; see its log with -log-level=info", m.name)
		}
	}
	for _, m := range s.members {
		s.wg.Go(func() { m.runAgent(ctx, spec.agentInterval) })
	}
	return s, nil
}

// wait blocks until every node and agent stopped (after ctx ended).
func (s *nodeSet) wait() { s.wg.Wait() }

// runAgent runs the agent, starting it afresh after each reboot.
func (m *member) runAgent(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := m.agentOnce(actx, ctx, interval); err != nil && actx.Err() == nil {
				m.log.Error("agent stopped", zap.String("node", m.name), zap.Error(err))
			}
		}()
		select {
		case <-ctx.Done():
		case <-m.restart:
		}
		cancel()
		<-done
	}
}

// agentOnce is one life of the agent's pod: scanner and reporter, request
// handler and watcher. A reboot it starts runs on nodeCtx: it outlives the
// agent that asked for it.
func (m *member) agentOnce(ctx, nodeCtx context.Context, interval time.Duration) error {
	log := m.log.Named("agent").With(zap.String("node", m.name))
	a, err := agent.New(agent.Config{NodeName: m.name, KubeletRoot: m.sim.Root(), Client: m.client,
		Interval: interval, Grace: 5 * time.Minute, IssuerRefresh: 10 * time.Minute, Log: log})
	if err != nil {
		return err
	}
	h, err := actions.NewHandler(actions.HandlerConfig{NodeName: m.name, Executor: simExecutor{m: m, ctx: nodeCtx},
		StateDir: filepath.Join(m.dir, m.name+"-agent-state"), BootIDFile: kubeletsim.BootIDPath(m.sim.Root()),
		MaxRequestAge: time.Hour, Reporter: actions.NodeReporter{Client: m.client, NodeName: m.name},
		Finished: func(actions.Record) { a.Rescan() }, Log: log})
	if err != nil {
		return err
	}
	w, err := actions.NewWatcher(actions.WatcherConfig{Client: m.client, NodeName: m.name, Handler: h, Log: log})
	if err != nil {
		return err
	}
	errs := make(chan error, 1)
	go func() { errs <- w.Run(ctx) }()
	return errors.Join(a.Run(ctx), <-errs)
}

// simExecutor carries out the agent's requests on the simulated node.
type simExecutor struct {
	m   *member
	ctx context.Context
}

func (e simExecutor) Reboot(context.Context) error {
	e.m.actions.Add(1)
	return e.m.sim.Reboot(e.ctx, e.m.down)
}

func (e simExecutor) RestartKubelet(context.Context) error {
	e.m.actions.Add(1)
	e.m.sim.RestartKubelet()
	return nil
}
