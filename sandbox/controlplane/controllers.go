package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Names of kube-controller-manager's controllers, as its --controllers flag
// spells them, for ControllersConfig.Controllers.
const (
	ReplicaSetController          = "replicaset-controller"
	DeploymentController          = "deployment-controller"
	GarbageCollectorController    = "garbage-collector-controller"
	RootCAPublisherController     = "root-ca-certificate-publisher-controller"
	ServiceAccountController      = "serviceaccount-controller"
	NamespaceController           = "namespace-controller"
	NodeLifecycleController       = "node-lifecycle-controller"
	TaintEvictionController       = "taint-eviction-controller"
	PodGarbageCollectorController = "pod-garbage-collector-controller"
	DisruptionController          = "disruption-controller"
)

// ControllersConfig says which of a cluster's controllers StartControllers
// runs against the control plane.
type ControllersConfig struct {
	// Binaries are kube-controller-manager and kube-scheduler (default:
	// FindControllerBinaries("")).
	Binaries ControllerBinaries
	// Controllers is kube-controller-manager's --controllers list. Only
	// these run, so that a test pays for what it uses. Empty: no controller
	// manager runs.
	Controllers []string
	// Scheduler runs kube-scheduler, which binds pods to nodes. It needs
	// NodeLifecycleController, which lifts the not-ready taint new Nodes
	// get.
	Scheduler bool
	// ControllerManagerArgs are appended to kube-controller-manager's
	// command line (a test's shorter --node-monitor-grace-period, say).
	ControllerManagerArgs []string
}

// component is one controller program and what it needs to start.
type component struct {
	name string
	// user is the identity its client certificate carries; the API
	// server's bootstrap RBAC policy grants it the component's rights.
	user  string
	bin   string
	ready string // the path that answers "ok" once it serves
	args  []string
}

// StartControllers starts the controllers cfg names, each with its own
// identity (system:kube-controller-manager, system:kube-scheduler) against
// the load-balanced API server address, serving its health checks on
// loopback, and waits until each answers them. They run until Stop. On error
// nothing it started is left running.
func (cp *ControlPlane) StartControllers(ctx context.Context, cfg ControllersConfig) (err error) {
	if len(cfg.Controllers) == 0 && !cfg.Scheduler {
		return errors.New("controlplane: ControllersConfig names no controller and no scheduler; nothing to start")
	}
	for _, c := range cfg.Controllers {
		if c == "" || strings.ContainsAny(c, ", ") {
			return fmt.Errorf("controlplane: ControllersConfig.Controllers holds %q; want one controller name per entry", c)
		}
	}
	if cfg.Scheduler && !slices.Contains(cfg.Controllers, NodeLifecycleController) {
		return fmt.Errorf("controlplane: ControllersConfig.Scheduler needs %s in Controllers: the API server taints every new Node not-ready until that controller sees it Ready, and the scheduler places no pod on it before", NodeLifecycleController)
	}
	if cfg.Binaries == (ControllerBinaries{}) {
		if cfg.Binaries, err = FindControllerBinaries(""); err != nil {
			return err
		}
	}
	cp.mu.Lock()
	started := len(cp.controllers) > 0
	cp.mu.Unlock()
	if started {
		return errors.New("controlplane: the controllers are already running; StartControllers starts them once")
	}
	defer func() {
		if err != nil {
			cp.stopControllers()
		}
	}()
	var comps []component
	if len(cfg.Controllers) > 0 {
		comps = append(comps, component{
			name: "kube-controller-manager", user: "system:kube-controller-manager", bin: cfg.Binaries.ControllerManager, ready: "/healthz",
			args: append([]string{
				"--controllers=" + strings.Join(cfg.Controllers, ","),
				// As kubeadm runs it: each controller acts as a service
				// account of its own in kube-system, with the bootstrap
				// policy's role for that controller.
				"--use-service-account-credentials=true",
				// What kube-root-ca.crt publishes in every namespace.
				"--root-ca-file=" + cp.pki("server-ca.crt"),
				"--service-account-private-key-file=" + cp.pki("sa-signing.key"),
				"--profiling=false",
			}, cfg.ControllerManagerArgs...),
		})
	}
	if cfg.Scheduler {
		comps = append(comps, component{name: "kube-scheduler", user: "system:kube-scheduler", bin: cfg.Binaries.Scheduler, ready: "/readyz"})
	}
	for _, c := range comps {
		if err := cp.startComponent(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) startComponent(ctx context.Context, c component) error {
	pair, err := cp.clientCA.issue(c.user, nil, false, 365*24*time.Hour)
	if err != nil {
		return err
	}
	kubeconfig := cp.pki(c.name + ".kubeconfig")
	if err := WriteKubeconfig(kubeconfig, cp.configFor(cp.URL(), pair)); err != nil {
		return fmt.Errorf("writing the kubeconfig of %s: %w", c.name, err)
	}
	serving, err := cp.serverCA.issue(c.name, nil, true, 365*24*time.Hour)
	if err != nil {
		return err
	}
	certFile, keyFile := cp.pki(c.name+"-serving.crt"), cp.pki(c.name+"-serving.key")
	if err := writeFile(certFile, serving.CertPEM); err != nil {
		return err
	}
	if err := writeFile(keyFile, serving.KeyPEM); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(cp.serverCA.cert)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	defer hc.CloseIdleConnections()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		args := append([]string{
			"--kubeconfig=" + kubeconfig,
			// Delegated authentication (by TokenReview) and authorization
			// of its own endpoints, as kubeadm sets them up, without the
			// client and front-proxy CAs the API servers do not publish:
			// looking them up only logs their absence every few seconds.
			"--authentication-kubeconfig=" + kubeconfig,
			"--authorization-kubeconfig=" + kubeconfig,
			"--authentication-skip-lookup=true",
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--tls-cert-file=" + certFile,
			"--tls-private-key-file=" + keyFile,
			// One of each: a lease to win buys nothing, and a lease lost
			// while a test restarts every API server would end the process.
			"--leader-elect=false",
		}, c.args...)
		proc, err := startProcess(c.name, c.bin, args, filepath.Join(cp.dir, "logs", c.name+".log"))
		if err != nil {
			return err
		}
		url := "https://" + hostPort(port) + c.ready
		lastErr = waitReady(ctx, proc, cp.cfg.StartTimeout, func(ctx context.Context) bool {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := hc.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
			return resp.StatusCode == http.StatusOK && string(body) == "ok"
		})
		if lastErr == nil {
			cp.mu.Lock()
			cp.controllers = append(cp.controllers, proc)
			cp.mu.Unlock()
			return nil
		}
		proc.stop(10 * time.Second)
		if ctx.Err() != nil || !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	return fmt.Errorf("starting %s: %w", c.name, lastErr)
}

// ControllerLogPath is where a controller program started by
// StartControllers ("kube-controller-manager", "kube-scheduler") logs.
func (cp *ControlPlane) ControllerLogPath(name string) string {
	return filepath.Join(cp.dir, "logs", name+".log")
}

// stopControllers ends the controller programs, before the API servers
// they talk to.
func (cp *ControlPlane) stopControllers() {
	cp.mu.Lock()
	procs := cp.controllers
	cp.controllers = nil
	cp.mu.Unlock()
	for _, p := range procs {
		p.stop(10 * time.Second)
	}
}
