// Package app is tokenroll-coordinator, the leader-elected process a
// Deployment runs: it waits for the API server's revision to settle, plans
// which nodes need work and runs the node protocol one node at a time.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/apiretry"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/version"
	"github.com/tokenroll/tokenroll/metrics"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/protocol"
)

// NewCommand builds the tokenroll-coordinator command.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	opts := newCoordinatorOptions()
	return cli.NewSingle("tokenroll-coordinator", "Run the leader-elected coordinator (Deployment)",
		"The coordinator holds a Lease, waits for the API server's revision to settle, plans\nwhich nodes need work and runs cordon, drain, act, verify, uncordon one node at a time.",
		opts, opts.run, stdout, stderr)
}

// coordinatorOptions configure tokenroll-coordinator.
type coordinatorOptions struct {
	// Audit configures where the API servers' audit events come from (a
	// webhook, audit logs), which app detection reads.
	Audit *audit.Options
	// Kubeconfig is empty in a cluster.
	Kubeconfig string
	// Namespace holds the Lease.
	Namespace string
	// LeaseName names the leader-election Lease.
	LeaseName string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader
	// election timings.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Gate is the revision gate provider.
	Gate string
	// Strategy is the default remediation.
	Strategy string
	// MaxUnavailable is a count or a percentage of nodes;
	// DeadlineMaxUnavailable the ceiling it may be raised to to meet the
	// previous issuer's trust deadline ("": never raised).
	MaxUnavailable, DeadlineMaxUnavailable string
	// MaxKubeletRestarts bounds auto's kubelet restarts without a cordon,
	// a count or a percentage of nodes.
	MaxKubeletRestarts string
	// MetricsBindAddress serves /metrics, /healthz and /readyz.
	MetricsBindAddress string
	// Profiling also serves /debug/pprof/ on MetricsBindAddress.
	Profiling bool
	// DrainTimeout, ActionTimeout and VerifyTimeout bound the steps;
	// Settle pauses after each node; GateSettle is how long the revision
	// gate must stay open before new nodes start.
	DrainTimeout, ActionTimeout, VerifyTimeout, Settle, GateSettle time.Duration
	// TrustMargin, AgentWait and IssuerRefresh tune the planner.
	TrustMargin, AgentWait, IssuerRefresh time.Duration
	// Auto plans rollouts from the agents' reports.
	Auto bool
	// DryRun records what every rollout would do, and does nothing.
	DryRun bool
	// DrainForce evicts pods no controller recreates.
	DrainForce bool
	// RolloutPolicies reads the RolloutPolicy resources: each pool's
	// limits, windows, blockers and webhooks. On by default; without
	// their CRD the coordinator says so and follows the flags.
	RolloutPolicies bool
	// RolloutHistory is how many finished TokenRollouts are kept.
	RolloutHistory int
	// KuredLock is kured's DaemonSet, NAMESPACE/NAME ("": kured ignored).
	KuredLock string
	// QPS and Burst limit the coordinator's API requests.
	QPS   float32
	Burst int
	// AppDetection follows every pod and judges what audit events say of
	// its app; AppStaleGrace, AppFailingGrace and AppWindow tune it.
	AppDetection                              bool
	AppStaleGrace, AppFailingGrace, AppWindow time.Duration
	// PodName is this replica's Pod, which the leader labels for the
	// audit webhook's Service.
	PodName string
}

func newCoordinatorOptions() *coordinatorOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "tokenroll"
	}
	return &coordinatorOptions{
		Namespace: ns, LeaseName: "tokenroll-coordinator",
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Gate: "auto", Strategy: string(coordinator.Auto), MaxUnavailable: "1", MaxKubeletRestarts: coordinator.DefaultMaxKubeletRestarts.String(), MetricsBindAddress: ":8080",
		DrainTimeout: 10 * time.Minute, ActionTimeout: 15 * time.Minute, VerifyTimeout: 5 * time.Minute, GateSettle: 2 * time.Minute,
		TrustMargin: time.Hour, AgentWait: 15 * time.Minute, IssuerRefresh: time.Minute, Auto: true, QPS: 20, Burst: 40, RolloutHistory: coordinator.DefaultHistory,
		KuredLock: coordinator.DefaultKuredLock.String(), AppDetection: true, RolloutPolicies: true,
		AppStaleGrace: apps.DefaultOptions().Grace, AppFailingGrace: apps.DefaultOptions().FailingGrace, AppWindow: apps.DefaultOptions().Window,
		Audit: audit.NewOptions(), PodName: os.Getenv("POD_NAME"),
	}
}

func (o *coordinatorOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty means the pod's service account.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the leader-election Lease (default $POD_NAMESPACE or tokenroll).")
	fs.StringVar(&o.LeaseName, "lease-name", o.LeaseName, "Name of the leader-election Lease.")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "How long a leader's Lease is valid without renewal.")
	fs.DurationVar(&o.RenewDeadline, "renew-deadline", o.RenewDeadline, "How long the leader keeps trying to renew before it gives up leadership.")
	fs.DurationVar(&o.RetryPeriod, "retry-period", o.RetryPeriod, "Time between leader-election attempts.")
	fs.StringVar(&o.Gate, "gate", o.Gate, "Revision gate: "+strings.Join(coordinator.GateNames(), ", ")+".")
	fs.StringVar(&o.Strategy, "strategy", o.Strategy, "Remediation: "+strings.Join(coordinator.StrategyNames(), ", ")+". auto climbs, per node, from evidence: kubelet restart, then evict only the pods whose apps still present stale credentials (app detection), a reboot only if the kubelet restart did not refresh the files; without an audit source it evicts the pods holding tokens of an untrusted issuer.")
	fs.StringVar(&o.MaxUnavailable, "max-unavailable", o.MaxUnavailable, "Most nodes disrupted at once, as a number or a percentage (counting nodes already NotReady or cordoned).")
	fs.StringVar(&o.DeadlineMaxUnavailable, "deadline-max-unavailable", o.DeadlineMaxUnavailable, "Ceiling, as a number or a percentage, up to which the coordinator raises --max-unavailable when a rollout is expected to end after the previous issuer stops being trusted (from the time its nodes took so far); it says so in a log line, an Event and tokenroll status. Empty: never raised.")
	fs.StringVar(&o.MaxKubeletRestarts, "max-kubelet-restarts", o.MaxKubeletRestarts, "Once the API servers trust no previous issuer, auto restarts kubelets without a cordon and outside --max-unavailable: one first, then, once that one has worked, at most this many at once, as a number or a percentage of all nodes. It bounds the burst of lists and token requests the restarted kubelets send the API servers.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address serving /metrics, /healthz and /readyz.")
	fs.BoolVar(&o.Profiling, "profiling", o.Profiling, "Serve Go's net/http/pprof profiles under /debug/pprof/ on --metrics-bind-address. They show stack traces and the command line (no token contents) to whoever reaches that port.")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "Longest a drain (or a pod restart's evictions) may take before the rollout halts.")
	fs.DurationVar(&o.ActionTimeout, "action-timeout", o.ActionTimeout, "Longest the agent's action may take (a reboot: until the node is back Ready) before the rollout halts.")
	fs.DurationVar(&o.VerifyTimeout, "verify-timeout", o.VerifyTimeout, "Longest the checks after an action may take (tokens fresh, replicas ready) before the rollout halts.")
	fs.DurationVar(&o.Settle, "settle", o.Settle, "Pause after each verified node before the next one starts.")
	fs.DurationVar(&o.GateSettle, "gate-settle", o.GateSettle, "How long the revision gate must have stayed open before a new node starts (a new leader counts from its start); nodes already started when the gate closes finish or are released once. Not waited for once the API servers trust no previous issuer: its tokens fail already, and waiting only prolongs the failures.")
	fs.DurationVar(&o.TrustMargin, "trust-margin", o.TrustMargin, "A node whose old-issuer tokens all refresh at least this long before the old issuer's trust ends is left alone.")
	fs.DurationVar(&o.AgentWait, "agent-wait", o.AgentWait, "After an issuer change, how long to wait for the agents to report under the new issuer before planning without them.")
	fs.DurationVar(&o.IssuerRefresh, "issuer-refresh-interval", o.IssuerRefresh, "How often OIDC discovery is read while the gate is open (it is also read whenever the gate opens).")
	fs.BoolVar(&o.Auto, "auto", o.Auto, "Start rollouts from what the agents report (stale or old-issuer tokens, required reboots); false leaves it to `tokenroll rollout start`.")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "Make every rollout a dry run: record what would be done to each node (tokenroll status shows it); cordon, drain and request nothing.")
	fs.BoolVar(&o.DrainForce, "drain-force", o.DrainForce, "Let a drain evict pods that no controller recreates (they are lost); without it such a pod halts the rollout.")
	fs.StringVar(&o.KuredLock, "kured-lock", o.KuredLock, "kured's DaemonSet, NAMESPACE/NAME: a node holding kured's reboot lock (annotation "+coordinator.AnnotationKuredLock+") is never cordoned or acted on and counts against --max-unavailable; while the lock cannot be read no node starts. Empty: ignore kured.")
	fs.IntVar(&o.RolloutHistory, "rollout-history", o.RolloutHistory, "Finished TokenRollouts kept as history; the oldest beyond it are deleted when a rollout starts.")
	fs.BoolVar(&o.RolloutPolicies, "rollout-policies", o.RolloutPolicies, "Read the RolloutPolicy resources: the nodes each selects follow its maxUnavailable, deadlineMaxUnavailable, zones, windows, blockers, health gate, dry run and webhooks, and the coordinator writes each policy's status; the nodes no policy covers follow the flags. When their CRD is not installed, the coordinator says so (a log line and an Event), follows the flags, and reads the policies once the CRD appears. false: never read them.")
	fs.BoolVar(&o.AppDetection, "app-detection", o.AppDetection, "Follow every pod (an informer on the leader) and, from the API server's audit events, report pods whose apps present a replaced token (app-stale) or fail to authenticate (app-failing).")
	fs.DurationVar(&o.AppStaleGrace, "app-stale-grace", o.AppStaleGrace, "A pod is app-stale when its app presents a token this long after the kubelet replaced it; must be longer than client-go's 1-minute reload of a token file.")
	fs.DurationVar(&o.AppFailingGrace, "app-failing-grace", o.AppFailingGrace, "A pod is app-failing when its requests go on failing authentication this long after the kubelet gave it a new token during the failures, with none succeeding (failures with the token it had when they began count only past --app-stale-grace); --strategy auto evicts it. client-go reads the token file again on a 401, so an app that reloads stops failing within a request. At most --app-stale-grace.")
	fs.DurationVar(&o.AppWindow, "app-window", o.AppWindow, "A pod with no authenticated request in this window is unobserved (never counted healthy); app-stale and app-failing end when their evidence is this old. Longer than --app-stale-grace.")
	fs.StringVar(&o.PodName, "pod-name", o.PodName, "This replica's Pod in --namespace (default $POD_NAME). With --audit-webhook-listen, the leader labels it "+coordinator.LabelAuditReceiver+"=true, which the audit webhook's Service selects, and a replica that does not lead answers the API servers' batches with 503 so they are sent again; empty: no label (one replica, or the webhook reached another way).")
	fs.Float32Var(&o.QPS, "kube-api-qps", o.QPS, "Steady API requests per second the coordinator may make.")
	fs.IntVar(&o.Burst, "kube-api-burst", o.Burst, "API requests the coordinator may make in a burst.")
	o.Audit.AddFlags(fs)
}

func (o *coordinatorOptions) Validate() error {
	var errs []error
	errs = append(errs, cli.CheckFile("kubeconfig", o.Kubeconfig))
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required"))
	}
	if o.LeaseName == "" {
		errs = append(errs, errors.New("--lease-name is required"))
	}
	if o.RolloutHistory < 1 {
		errs = append(errs, fmt.Errorf("--rollout-history=%d must be at least 1: the last finished rollout is what tokenroll status shows", o.RolloutHistory))
	}
	if o.LeaseDuration <= o.RenewDeadline {
		errs = append(errs, fmt.Errorf("--lease-duration=%s must be longer than --renew-deadline=%s", o.LeaseDuration, o.RenewDeadline))
	}
	// client-go's leader election requires renew-deadline > 1.2 * retry-period.
	if o.RetryPeriod <= 0 || float64(o.RenewDeadline) <= 1.2*float64(o.RetryPeriod) {
		errs = append(errs, fmt.Errorf("--renew-deadline=%s must be more than 1.2 times --retry-period=%s, which must be positive", o.RenewDeadline, o.RetryPeriod))
	}
	errs = append(errs,
		cli.CheckOneOf("gate", o.Gate, coordinator.GateNames()...),
		cli.CheckOneOf("strategy", o.Strategy, coordinator.StrategyNames()...),
		checkMaxUnavailable("max-unavailable", o.MaxUnavailable),
		checkDeadlineMaxUnavailable(o.MaxUnavailable, o.DeadlineMaxUnavailable),
		checkMaxUnavailable("max-kubelet-restarts", o.MaxKubeletRestarts),
		checkKuredLock(o.KuredLock),
		cli.CheckAddr("metrics-bind-address", o.MetricsBindAddress),
		cli.CheckPositive("drain-timeout", o.DrainTimeout, time.Second),
		cli.CheckPositive("action-timeout", o.ActionTimeout, time.Second),
		cli.CheckPositive("verify-timeout", o.VerifyTimeout, time.Second),
		cli.CheckPositive("settle", o.Settle, 0),
		cli.CheckPositive("gate-settle", o.GateSettle, 0),
		cli.CheckPositive("trust-margin", o.TrustMargin, 0),
		cli.CheckPositive("agent-wait", o.AgentWait, 0),
		cli.CheckPositive("issuer-refresh-interval", o.IssuerRefresh, time.Second))
	if o.AppDetection {
		if o.AppStaleGrace <= time.Minute {
			errs = append(errs, fmt.Errorf("--app-stale-grace=%s must be longer than client-go's 1-minute reload of a token file, or an app that reloads looks stale", o.AppStaleGrace))
		}
		if o.AppFailingGrace <= 0 || o.AppFailingGrace > o.AppStaleGrace {
			errs = append(errs, fmt.Errorf("--app-failing-grace=%s must be positive and at most --app-stale-grace=%s", o.AppFailingGrace, o.AppStaleGrace))
		}
		if o.AppWindow <= o.AppStaleGrace {
			errs = append(errs, fmt.Errorf("--app-window=%s must be longer than --app-stale-grace=%s", o.AppWindow, o.AppStaleGrace))
		}
	}
	if o.QPS <= 0 || o.Burst < 1 {
		errs = append(errs, fmt.Errorf("--kube-api-qps=%v and --kube-api-burst=%d must be positive", o.QPS, o.Burst))
	}
	if o.PodName != "" {
		for _, msg := range validation.IsDNS1123Subdomain(o.PodName) {
			errs = append(errs, fmt.Errorf("--pod-name=%q: %s", o.PodName, msg))
		}
	}
	errs = append(errs, o.Audit.Validate())
	if o.Audit.Enabled() && !o.AppDetection {
		errs = append(errs, errors.New("--audit-webhook-listen and --audit-log feed app detection: drop them, or leave --app-detection on"))
	}
	return errors.Join(errs...)
}

// podForWebhook is the Pod the leader labels: only with a webhook to route
// to, and app detection to keep what it receives.
func (o *coordinatorOptions) podForWebhook() string {
	if o.Audit.WebhookListen == "" || !o.AppDetection {
		return ""
	}
	return o.PodName
}

func checkMaxUnavailable(flag, v string) error {
	if _, err := coordinator.ParseMaxUnavailable(v); err != nil {
		return fmt.Errorf("--%s=%q: %w", flag, v, err)
	}
	return nil
}

// checkDeadlineMaxUnavailable checks the ceiling, and that it is not below
// --max-unavailable when both are counts or both percentages (a count and
// a percentage compare only on a given fleet: there, a ceiling below it
// raises nothing).
func checkDeadlineMaxUnavailable(base, ceiling string) error {
	if ceiling == "" {
		return nil
	}
	if err := checkMaxUnavailable("deadline-max-unavailable", ceiling); err != nil {
		return err
	}
	b, errB := coordinator.ParseMaxUnavailable(base)
	c, _ := coordinator.ParseMaxUnavailable(ceiling)
	if errB == nil && b.Type == c.Type {
		bv, _ := strconv.Atoi(strings.TrimSuffix(b.String(), "%"))
		cv, _ := strconv.Atoi(strings.TrimSuffix(c.String(), "%"))
		if cv < bv {
			return fmt.Errorf("--deadline-max-unavailable=%q is below --max-unavailable=%q: it is a ceiling above it; drop it to never raise", ceiling, base)
		}
	}
	return nil
}

func checkKuredLock(v string) error {
	ref, err := coordinator.ParseKuredLockRef(v)
	if err != nil {
		return fmt.Errorf("--kured-lock=%q: %w", v, err)
	}
	if ref.Name == "" {
		return nil
	}
	var errs []error
	for _, msg := range validation.IsDNS1123Label(ref.Namespace) {
		errs = append(errs, fmt.Errorf("--kured-lock=%q: namespace: %s", v, msg))
	}
	for _, msg := range validation.IsDNS1123Subdomain(ref.Name) {
		errs = append(errs, fmt.Errorf("--kured-lock=%q: name: %s", v, msg))
	}
	return errors.Join(errs...)
}

func (o *coordinatorOptions) run(ctx context.Context, e cli.Env) error {
	cfg, err := cli.ComponentRestConfig(o.Kubeconfig, "tokenroll-coordinator/"+version.Version)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = o.QPS, o.Burst
	client, election, err := newClients(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry("coordinator")
	srv, err := metrics.NewServer(o.MetricsBindAddress, reg, e.Log)
	if err != nil {
		return err
	}
	if o.Profiling {
		srv.EnableProfiling()
	}
	gate, err := coordinator.NewGate(ctx, o.Gate, client, dyn)
	if err != nil {
		return err
	}
	kuredLock, err := coordinator.ParseKuredLockRef(o.KuredLock)
	if err != nil {
		return err
	}
	var deadlineMax intstr.IntOrString
	if o.DeadlineMaxUnavailable != "" {
		deadlineMax = intstr.Parse(o.DeadlineMaxUnavailable)
	}
	var appOpts *apps.Options
	if o.AppDetection {
		appOpts = &apps.Options{Grace: o.AppStaleGrace, FailingGrace: o.AppFailingGrace, Window: o.AppWindow, Interval: apps.DefaultOptions().Interval}
	}
	api, err := versioned.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var policies versioned.Interface
	if o.RolloutPolicies {
		policies = api
	}
	c, err := coordinator.New(coordinator.Config{
		Client: client, Namespace: o.Namespace, Gate: gate, Strategy: protocol.Strategy(o.Strategy),
		MaxUnavailable: intstr.Parse(o.MaxUnavailable), DeadlineMaxUnavailable: deadlineMax, MaxKubeletRestarts: intstr.Parse(o.MaxKubeletRestarts), DrainTimeout: o.DrainTimeout, ActionTimeout: o.ActionTimeout,
		VerifyTimeout: o.VerifyTimeout, Settle: o.Settle, GateSettle: o.GateSettle, TrustMargin: o.TrustMargin, AgentWait: o.AgentWait,
		IssuerRefresh: o.IssuerRefresh, PublishIssuer: true, Auto: o.Auto, DryRun: o.DryRun, KuredLock: kuredLock, Drainer: coordinator.KubectlDrainer{Client: client, Force: o.DrainForce, Log: e.Log, Retry: apiretry.Default()},
		Registry: reg, Log: e.Log, Apps: appOpts, PodName: o.podForWebhook(), LeaseName: o.LeaseName, Policies: policies, Rollouts: api, History: o.RolloutHistory,
	})
	if err != nil {
		return err
	}
	id := coordinator.Identity()
	e.Log.Info("coordinator starting", zap.String("identity", id), zap.String("gate", gate.State().Provider),
		zap.String("strategy", o.Strategy), zap.String("maxUnavailable", o.MaxUnavailable), zap.String("deadlineMaxUnavailable", o.DeadlineMaxUnavailable), zap.String("maxKubeletRestarts", o.MaxKubeletRestarts), zap.String("metrics", srv.Addr()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(ctx) }()
	// Every replica reads the audit sources; only the leader's detector
	// keeps what they deliver. A standby's webhook refuses batches (503,
	// c.Accepting) rather than drop them, and the leader labels its Pod so
	// that the webhook's Service routes them to it (--pod-name); a log is
	// read by every replica, so nothing is lost there.
	sources, err := o.Audit.NewSources(c, reg, e.Log.Named("audit"), clock.RealClock{})
	if err != nil {
		cancel()
		return errors.Join(fmt.Errorf("audit sources: %w", err), <-srvErr)
	}
	if pod := o.podForWebhook(); pod != "" {
		// A replica that led before it restarted may still carry the
		// label: until it leads again, batches must not come here.
		if err := coordinator.MarkAuditReceiver(ctx, client, o.Namespace, pod, false); err != nil {
			e.Log.Error("the audit webhook's Service may route batches to this replica, which does not lead (it answers them 503)", zap.Error(err))
		}
	}
	srcErr := make(chan error, len(sources))
	for _, src := range sources {
		e.Log.Info("reading audit events", zap.String("source", src.Name()))
		go func() {
			err := src.Run(ctx)
			if err != nil && ctx.Err() == nil {
				e.Log.Error("audit source stopped; app detection sees no more of its events", zap.String("source", src.Name()), zap.Error(err))
				srcErr <- fmt.Errorf("audit source %s: %w", src.Name(), err)
				return
			}
			srcErr <- nil
		}()
	}
	srv.SetReady(true) // a standby replica is ready too: it is waiting for the Lease
	// A leader that has not renewed its Lease for 20 s past its expiry (the
	// tolerance kube-controller-manager uses) fails /healthz, and is restarted.
	leaderHealth := leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	srv.AddHealthCheck(leaderHealth.Name(), leaderHealth.Check)
	runErr := coordinator.RunElected(ctx, coordinator.LeaderConfig{
		Client: election, Namespace: o.Namespace, LeaseName: o.LeaseName, Identity: id,
		LeaseDuration: o.LeaseDuration, RenewDeadline: o.RenewDeadline, RetryPeriod: o.RetryPeriod, Log: e.Log,
		Healthz: leaderHealth,
	}, c.Lead)
	cancel()
	for range sources {
		runErr = errors.Join(runErr, <-srcErr)
	}
	return errors.Join(runErr, <-srvErr)
}

// newClients returns the coordinator's client and one for leader election
// alone, each with a rate limiter of its own (as kube-controller-manager
// and kube-scheduler do): a rollout that fills the coordinator's request
// budget (a wave of cordons and their Events, queued behind --kube-api-qps)
// must not hold a Lease renewal back past --renew-deadline, or the leader
// would lose its Lease in the middle of its busiest moment.
func newClients(cfg *rest.Config) (client, election kubernetes.Interface, err error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	le := rest.CopyConfig(cfg)
	le.RateLimiter = nil
	le.UserAgent = cfg.UserAgent + " leader-election"
	e, err := kubernetes.NewForConfig(le)
	if err != nil {
		return nil, nil, err
	}
	return c, e, nil
}
