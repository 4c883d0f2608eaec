// Package fleet runs simulated nodes, each with the real tokenroll agent
// (scanner, reporter and request handler) in the same process, against a
// real control plane. The agent's executor reboots or restarts its
// simulated node; after a reboot the agent is started afresh, as its pod
// would be. Tests and benchmarks of the coordinator use it.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/actions"
	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
)

// Config says which nodes to run and how.
type Config struct {
	CP *controlplane.ControlPlane
	// APIServer, when set, is the address (cp.APIServerURL(i)) the nodes and
	// their agents use instead of the load balancer, so that another API
	// server can serve a coordinator alone (benchmarks count its requests).
	APIServer string
	Dir       string
	Nodes     []string
	// AgentInterval is the agents' scan interval (default 1s) and
	// IssuerRefresh their OIDC discovery interval (default 2s) while no
	// issuer is published.
	AgentInterval, IssuerRefresh time.Duration
	// CoordinatorNamespace, when set, is the namespace (which must exist)
	// the coordinator publishes the issuer in: the agents follow ConfigMap
	// protocol.IssuerConfigMapName there, as a real agent's
	// --coordinator-namespace makes it, and the nodes are granted list and
	// watch on that one ConfigMap (deploy's Role tokenroll-agent). Empty:
	// the agents read OIDC discovery every IssuerRefresh.
	CoordinatorNamespace string
	// RebootDown is how long a simulated reboot keeps a node down.
	RebootDown time.Duration
	// StatusInterval is the simulated kubelets' status period (default 1m)
	// and HeartbeatInterval their Lease renewal period (default 10s).
	StatusInterval, HeartbeatInterval time.Duration
	// Observer sees every simulated node's events.
	Observer func(kubeletsim.Event)
	// AgentConfig, when set, gives the configuration a node's agent
	// reaches the API server with, from the node's own (a fault proxy in
	// front of it, say); the simulated kubelet keeps its own.
	AgentConfig func(node string, rc *rest.Config) (*rest.Config, error)
	// AgentRetry is the agents' write policy (zero: apiretry.Default).
	AgentRetry apiretry.Policy
	// AgentClock is the agents' clock, their scans' and their request
	// handlers' (default: real time); a benchmark steps it to put the
	// agents past their first minutes.
	AgentClock clock.WithTicker
	// SharePods gives the simulated kubelets one pod informer between them
	// (kubeletsim.SharedPods) instead of one each: for a benchmark of
	// hundreds of nodes, which measures tokenroll, not the kubelets' own
	// lists and watches.
	SharePods bool
	Log       *zap.Logger
}

// Member is one node: the simulated kubelet and its agent.
type Member struct {
	Name string
	Sim  *kubeletsim.Node
	// Reboots and KubeletRestarts count what the agent's executor did.
	Reboots, KubeletRestarts atomic.Int32
	// NeverBack makes the next reboot keep the node down.
	NeverBack atomic.Bool
	// FailActions makes the executor fail.
	FailActions atomic.Bool

	fleet   *Fleet
	client  kubernetes.Interface
	stateMu sync.Mutex
	agent   *agent.Agent
	restart chan struct{}
}

// Fleet is the running nodes.
type Fleet struct {
	cfg     Config
	Members map[string]*Member
	wg      sync.WaitGroup
	pods    *kubeletsim.SharedPods
}

// Pods is the pod informer the nodes share (nil unless Config.SharePods),
// for another simulated node to share.
func (f *Fleet) Pods() *kubeletsim.SharedPods { return f.pods }

// Start runs the nodes and their agents until ctx ends, and returns once
// every node has registered.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.CP == nil || cfg.Dir == "" || len(cfg.Nodes) == 0 {
		return nil, errors.New("fleet: needs a control plane, a directory and nodes")
	}
	if cfg.AgentInterval <= 0 {
		cfg.AgentInterval = time.Second
	}
	if cfg.IssuerRefresh <= 0 {
		cfg.IssuerRefresh = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.AgentRetry == (apiretry.Policy{}) {
		cfg.AgentRetry = apiretry.Default()
	}
	f := &Fleet{cfg: cfg, Members: map[string]*Member{}}
	if err := allowDiscovery(ctx, cfg.CP); err != nil {
		return nil, err
	}
	if cfg.CoordinatorNamespace != "" {
		if err := allowPublished(ctx, cfg.CP, cfg.CoordinatorNamespace); err != nil {
			return nil, err
		}
	}
	var shared *kubeletsim.SharedPods
	if cfg.SharePods {
		var err error
		if shared, err = startSharedPods(ctx, cfg); err != nil {
			return nil, err
		}
		f.pods = shared
	}
	for _, name := range cfg.Nodes {
		rc, err := cfg.CP.NodeConfig(name)
		if err != nil {
			return nil, err
		}
		if cfg.APIServer != "" {
			rc.Host = cfg.APIServer
		}
		m := &Member{Name: name, fleet: f, restart: make(chan struct{}, 1)}
		observer := func(e kubeletsim.Event) {
			if e.Kind == kubeletsim.EventUp {
				select {
				case m.restart <- struct{}{}:
				default:
				}
			}
			if cfg.Observer != nil {
				cfg.Observer(e)
			}
		}
		sim, err := kubeletsim.New(kubeletsim.Config{Name: name, Root: filepath.Join(cfg.Dir, name), RESTConfig: rc,
			StatusInterval: cfg.StatusInterval, HeartbeatInterval: cfg.HeartbeatInterval, Pods: shared, Observer: observer, Logger: cfg.Log.Named("kubelet").With(zap.String("node", name))})
		if err != nil {
			return nil, err
		}
		m.Sim = sim
		// The agent acts as its node here (the Node authorizer lets a node
		// read and patch its own Node), standing in for the agent's service
		// account, whose RBAC the deploy tests check.
		arc := rc
		if cfg.AgentConfig != nil {
			if arc, err = cfg.AgentConfig(name, rc); err != nil {
				return nil, err
			}
		}
		if m.client, err = kubernetes.NewForConfig(arc); err != nil {
			return nil, err
		}
		f.Members[name] = m
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := sim.Run(ctx); err != nil && ctx.Err() == nil {
				cfg.Log.Error("simulated node stopped", zap.String("node", name), zap.Error(err))
			}
		}()
	}
	for _, m := range f.Members {
		select {
		case <-m.Sim.Registered():
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Minute): // a loaded machine, every kubelet starting at once
			return nil, fmt.Errorf("fleet: node %s did not register", m.Name)
		}
	}
	for _, m := range f.Members {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			m.runAgent(ctx)
		}()
	}
	return f, nil
}

// Wait blocks until everything stopped (after ctx ended).
func (f *Fleet) Wait() { f.wg.Wait() }

// Agent is the member's current agent (nil before it started).
func (m *Member) Agent() *agent.Agent {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	return m.agent
}

// runAgent runs the agent, starting it afresh after each reboot.
func (m *Member) runAgent(ctx context.Context) {
	for ctx.Err() == nil {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := m.agentOnce(actx); err != nil && actx.Err() == nil {
				m.fleet.cfg.Log.Error("agent stopped", zap.String("node", m.Name), zap.Error(err))
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

func (m *Member) agentOnce(ctx context.Context) error {
	cfg := m.fleet.cfg
	log := cfg.Log.Named("agent").With(zap.String("node", m.Name))
	nodes := nodeclient.Retrying{Nodes: m.client.CoreV1().Nodes(), Policy: cfg.AgentRetry}
	var published nodeclient.ConfigMaps
	if cfg.CoordinatorNamespace != "" {
		published = m.client.CoreV1().ConfigMaps(cfg.CoordinatorNamespace)
	}
	a, err := agent.New(agent.Config{NodeName: m.Name, KubeletRoot: m.Sim.Root(), Client: nodes, Discovery: m.client.CoreV1().RESTClient(),
		Published: published, PublishedNamespace: cfg.CoordinatorNamespace, Interval: cfg.AgentInterval, Grace: 5 * time.Minute, IssuerRefresh: cfg.IssuerRefresh, Clock: cfg.AgentClock, Log: log})
	if err != nil {
		return err
	}
	m.stateMu.Lock()
	m.agent = a
	m.stateMu.Unlock()
	h, err := actions.NewHandler(actions.HandlerConfig{NodeName: m.Name, Executor: simExecutor{m: m, ctx: ctx},
		// Simulated reboots keep the directory, wherever cfg.Dir is.
		StateDir: filepath.Join(cfg.Dir, m.Name+"-agent-state"), AllowVolatileStateDir: true, BootIDFile: kubeletsim.BootIDPath(m.Sim.Root()),
		MaxRequestAge: time.Hour, Reporter: actions.NodeReporter{Client: nodes, NodeName: m.Name},
		Finished: func(actions.Record) { a.Rescan() }, Clock: cfg.AgentClock, Log: log})
	if err != nil {
		return err
	}
	w, err := actions.NewWatcher(actions.WatcherConfig{Client: nodes, NodeName: m.Name, Handler: h, Log: log})
	if err != nil {
		return err
	}
	errs := make(chan error, 1)
	go func() { errs <- w.Run(ctx) }()
	return errors.Join(a.Run(ctx), <-errs)
}

// simExecutor carries out requests on the simulated node.
type simExecutor struct {
	m   *Member
	ctx context.Context // the fleet's: a reboot outlives the agent that asked for it
}

func (e simExecutor) Reboot(context.Context) error {
	if e.m.FailActions.Load() {
		return errors.New("simulated failure: logind refused the reboot")
	}
	e.m.Reboots.Add(1)
	down := e.m.fleet.cfg.RebootDown
	if e.m.NeverBack.Load() {
		down = 24 * time.Hour
	}
	return e.m.Sim.Reboot(context.WithoutCancel(e.ctx), down)
}

func (e simExecutor) RestartKubelet(context.Context) error {
	if e.m.FailActions.Load() {
		return errors.New("simulated failure: kubelet.service failed to restart")
	}
	e.m.KubeletRestarts.Add(1)
	e.m.Sim.RestartKubelet()
	return nil
}

// startSharedPods starts the pod informer the nodes share, as the admin,
// on the nodes' API server.
func startSharedPods(ctx context.Context, cfg Config) (*kubeletsim.SharedPods, error) {
	rc := cfg.CP.AdminConfig()
	if cfg.APIServer != "" {
		rc.Host = cfg.APIServer
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	shared, err := kubeletsim.NewSharedPods(client)
	if err != nil {
		return nil, err
	}
	if err := shared.Start(ctx); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return shared, nil
}

// allowDiscovery lets nodes read OIDC discovery. The in-process agents act
// with their node's identity (a client certificate, which an issuer change
// does not invalidate); a real agent's service account has this through the
// default binding for service accounts.
func allowDiscovery(ctx context.Context, cp *controlplane.ControlPlane) error {
	admin, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tokenroll-fleet-issuer-discovery"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("fleet: letting nodes read OIDC discovery: %w", err)
	}
	return nil
}

// allowPublished lets nodes list and watch the ConfigMap the coordinator
// publishes the issuer in, in namespace: the rule deploy's Role
// tokenroll-agent gives the agent's service account. The Node authorizer
// has no opinion on a ConfigMap no pod of the node uses, so RBAC decides.
func allowPublished(ctx context.Context, cp *controlplane.ControlPlane, namespace string) error {
	admin, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	const name = "tokenroll-fleet-published-issuer"
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{protocol.IssuerConfigMapName}, Verbs: []string{"list", "watch"},
	}}}
	if _, err := admin.RbacV1().Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("fleet: letting nodes watch the published issuer in namespace %s (create the namespace first): %w", namespace, err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}},
	}
	if _, err := admin.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("fleet: letting nodes watch the published issuer in namespace %s: %w", namespace, err)
	}
	return nil
}
