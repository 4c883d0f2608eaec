// Package controlplane runs a real local Kubernetes control plane (etcd and
// one or more kube-apiservers, built from pinned modules by build.sh) on
// loopback, with real TLS and service-account signing, for tests and the
// sandbox.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// DefaultIssuer is the issuer a control plane signs with unless told otherwise.
const DefaultIssuer = "https://kubernetes.default.svc"

// DefaultAPIAudiences is the --api-audiences value: fixed, as OpenShift sets
// it, so that changing the issuer does not change the audience of the tokens
// pods use to reach the API server.
var DefaultAPIAudiences = []string{"https://kubernetes.default.svc"}

// Config says what control plane to start.
type Config struct {
	// Binaries are the etcd and kube-apiserver programs; see FindBinaries.
	Binaries Binaries
	// Dir holds certificates, data and logs. Empty: a new temporary directory,
	// removed by Stop.
	Dir string
	// APIServers is how many kube-apiservers share the one etcd (default 1).
	APIServers int
	// Issuers is the --service-account-issuer list; the first signs
	// (default DefaultIssuer).
	Issuers []string
	// APIAudiences is --api-audiences (default DefaultAPIAudiences).
	APIAudiences []string
	// ExtraArgs are appended to every kube-apiserver's command line.
	ExtraArgs []string
	// StartTimeout bounds the wait for each server to become ready
	// (default 90s).
	StartTimeout time.Duration
	// AuditPolicy, when set, is the audit policy (an audit.k8s.io/v1
	// Policy) every kube-apiserver runs with, each writing its audit log
	// to AuditLogPath(i).
	AuditPolicy []byte
	// AuditWebhookURL, with AuditPolicy, makes every kube-apiserver also
	// send its audit events in batches to this HTTPS URL, trusting
	// AuditWebhookCA (PEM) for the server's certificate and presenting a
	// client certificate signed by the authority AuditWebhookClientCA
	// returns.
	AuditWebhookURL string
	AuditWebhookCA  []byte
}

// ControlPlane is a running etcd and its kube-apiservers behind a local load
// balancer.
type ControlPlane struct {
	cfg        Config
	dir        string
	removeDir  bool
	serverCA   *authority
	clientCA   *authority
	auditCA    *authority
	serving    keyPair
	etcd       *process
	etcdURL    string
	lb         *balancer
	adminPair  keyPair
	stopOnce   sync.Once
	mu         sync.Mutex
	apiservers []*apiServer
	// controllers are kube-controller-manager and kube-scheduler, when
	// StartControllers started them.
	controllers []*process
}

type apiServer struct {
	index   int
	port    int
	issuers []string
	proc    *process
}

// Start brings up etcd and the kube-apiservers and waits until every server
// answers /readyz. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (_ *ControlPlane, err error) {
	if cfg.APIServers <= 0 {
		cfg.APIServers = 1
	}
	if len(cfg.Issuers) == 0 {
		cfg.Issuers = []string{DefaultIssuer}
	}
	if len(cfg.APIAudiences) == 0 {
		cfg.APIAudiences = DefaultAPIAudiences
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 90 * time.Second
	}
	if cfg.Binaries.Etcd == "" || cfg.Binaries.KubeAPIServer == "" {
		return nil, errors.New("controlplane: Config.Binaries is empty; use FindBinaries")
	}
	if cfg.AuditWebhookURL != "" && (len(cfg.AuditPolicy) == 0 || len(cfg.AuditWebhookCA) == 0) {
		return nil, errors.New("controlplane: Config.AuditWebhookURL needs AuditPolicy and AuditWebhookCA")
	}
	cp := &ControlPlane{cfg: cfg, dir: cfg.Dir}
	if cp.dir == "" {
		if cp.dir, err = os.MkdirTemp("", "tokenroll-controlplane-"); err != nil {
			return nil, err
		}
		cp.removeDir = true
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	for _, d := range []string{"pki", "logs", "etcd"} {
		if err := os.MkdirAll(filepath.Join(cp.dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := cp.makePKI(); err != nil {
		return nil, err
	}
	if err := cp.writeAuditConfig(); err != nil {
		return nil, err
	}
	if err := cp.startEtcd(ctx); err != nil {
		return nil, err
	}
	if cp.lb, err = newBalancer(); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.APIServers; i++ {
		if err := cp.startAPIServer(ctx, i, cfg.Issuers); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

func (cp *ControlPlane) pki(name string) string { return filepath.Join(cp.dir, "pki", name) }

func (cp *ControlPlane) makePKI() error {
	var err error
	if cp.serverCA, err = newAuthority("tokenroll-sandbox-server-ca", 365*24*time.Hour); err != nil {
		return err
	}
	if cp.clientCA, err = newAuthority("tokenroll-sandbox-client-ca", 365*24*time.Hour); err != nil {
		return err
	}
	if cp.serving, err = cp.serverCA.issue("kube-apiserver", nil, true, 365*24*time.Hour); err != nil {
		return err
	}
	if cp.adminPair, err = cp.clientCA.issue("tokenroll-admin", []string{"system:masters"}, false, 365*24*time.Hour); err != nil {
		return err
	}
	saKey, err := newSigningKey()
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		"server-ca.crt":  cp.serverCA.certPEM,
		"client-ca.crt":  cp.clientCA.certPEM,
		"apiserver.crt":  cp.serving.CertPEM,
		"apiserver.key":  cp.serving.KeyPEM,
		"sa-signing.key": saKey,
	} {
		if err := writeFile(cp.pki(name), data); err != nil {
			return err
		}
	}
	return nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		client, err := freePort()
		if err != nil {
			return err
		}
		peer, err := freePort()
		if err != nil {
			return err
		}
		clientURL := "http://" + hostPort(client)
		peerURL := "http://" + hostPort(peer)
		args := []string{
			"--name=default",
			"--data-dir=" + filepath.Join(cp.dir, "etcd"),
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=default=" + peerURL,
			"--log-level=warn",
			// A throwaway store: durability buys nothing and costs seconds.
			"--unsafe-no-fsync",
		}
		proc, err := startProcess("etcd", cp.cfg.Binaries.Etcd, args, filepath.Join(cp.dir, "logs", "etcd.log"))
		if err != nil {
			return err
		}
		hc := &http.Client{Timeout: 2 * time.Second}
		lastErr = waitReady(ctx, proc, cp.cfg.StartTimeout, func(ctx context.Context) bool {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
			resp, err := hc.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		if lastErr == nil {
			cp.etcd, cp.etcdURL = proc, clientURL
			return nil
		}
		proc.stop(5 * time.Second)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("starting etcd: %w", lastErr)
}

// waitReady polls ready until it holds, the process exits, or the timeout
// passes. Polling is the only way to learn a child process is serving.
func waitReady(ctx context.Context, p *process, timeout time.Duration, ready func(context.Context) bool) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if done, _ := p.exited(); done {
			return false, p.exitError()
		}
		return ready(ctx), nil
	})
	if err != nil && wait.Interrupted(err) {
		return fmt.Errorf("%s not ready after %s; last lines of %s:\n%s", p.name, timeout, p.logPath, p.logTail(20))
	}
	return err
}

// writeAuditConfig writes the audit policy and, for a webhook, its
// kubeconfig with a client certificate of its own authority, so a webhook
// trusting that authority trusts nothing else of the control plane's.
func (cp *ControlPlane) writeAuditConfig() error {
	if len(cp.cfg.AuditPolicy) == 0 {
		return nil
	}
	if err := writeFile(cp.pki("audit-policy.yaml"), cp.cfg.AuditPolicy); err != nil {
		return err
	}
	if cp.cfg.AuditWebhookURL == "" {
		return nil
	}
	var err error
	if cp.auditCA, err = newAuthority("tokenroll-sandbox-audit-webhook-client-ca", 365*24*time.Hour); err != nil {
		return err
	}
	pair, err := cp.auditCA.issue("kube-apiserver-audit", nil, false, 365*24*time.Hour)
	if err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["audit"] = &clientcmdapi.Cluster{Server: cp.cfg.AuditWebhookURL, CertificateAuthorityData: cp.cfg.AuditWebhookCA}
	kc.AuthInfos["kube-apiserver"] = &clientcmdapi.AuthInfo{ClientCertificateData: pair.CertPEM, ClientKeyData: pair.KeyPEM}
	kc.Contexts["audit"] = &clientcmdapi.Context{Cluster: "audit", AuthInfo: "kube-apiserver"}
	kc.CurrentContext = "audit"
	return clientcmd.WriteToFile(*kc, cp.pki("audit-webhook.kubeconfig"))
}

// AuditLogPath is API server i's audit log (JSON lines), when
// Config.AuditPolicy is set.
func (cp *ControlPlane) AuditLogPath(i int) string {
	return filepath.Join(cp.dir, "logs", fmt.Sprintf("kube-apiserver-%d-audit.log", i))
}

// AuditWebhookClientCA is the PEM certificate of the authority that signs
// the API servers' audit webhook client certificate; nil without
// Config.AuditWebhookURL.
func (cp *ControlPlane) AuditWebhookClientCA() []byte {
	if cp.auditCA == nil {
		return nil
	}
	return slices.Clone(cp.auditCA.certPEM)
}

func (cp *ControlPlane) auditArgs(i int) []string {
	if len(cp.cfg.AuditPolicy) == 0 {
		return nil
	}
	args := []string{
		"--audit-policy-file=" + cp.pki("audit-policy.yaml"),
		"--audit-log-path=" + cp.AuditLogPath(i),
		"--audit-log-format=json",
	}
	if cp.cfg.AuditWebhookURL != "" {
		args = append(args,
			"--audit-webhook-config-file="+cp.pki("audit-webhook.kubeconfig"),
			"--audit-webhook-mode=batch",
			// The default, 30 s, is for production; a test waits for
			// its events.
			"--audit-webhook-batch-max-wait=500ms")
	}
	return args
}

func (cp *ControlPlane) apiserverArgs(i, port int, issuers []string) []string {
	args := []string{
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + cp.pki("apiserver.crt"),
		"--tls-private-key-file=" + cp.pki("apiserver.key"),
		"--client-ca-file=" + cp.pki("client-ca.crt"),
		"--service-account-key-file=" + cp.pki("sa-signing.key"),
		"--service-account-signing-key-file=" + cp.pki("sa-signing.key"),
		"--api-audiences=" + strings.Join(cp.cfg.APIAudiences, ","),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// The kubernetes Service's endpoints would name 127.0.0.1, which the
		// API server refuses; nothing here routes through the Service.
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--cert-dir=" + filepath.Join(cp.dir, "pki", "apiserver-"+strconv.Itoa(port)),
		"--profiling=false",
	}
	for _, iss := range issuers {
		args = append(args, "--service-account-issuer="+iss)
	}
	args = append(args, cp.auditArgs(i)...)
	return append(args, cp.cfg.ExtraArgs...)
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, i int, issuers []string) error {
	if len(issuers) == 0 {
		return fmt.Errorf("kube-apiserver %d: at least one issuer is required", i)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		logPath := filepath.Join(cp.dir, "logs", fmt.Sprintf("kube-apiserver-%d.log", i))
		proc, err := startProcess(fmt.Sprintf("kube-apiserver-%d", i), cp.cfg.Binaries.KubeAPIServer, cp.apiserverArgs(i, port, issuers), logPath)
		if err != nil {
			return err
		}
		direct := cp.adminConfigAt("https://" + hostPort(port))
		direct.Timeout = 5 * time.Second
		client, err := kubernetes.NewForConfig(direct)
		if err != nil {
			proc.stop(5 * time.Second)
			return err
		}
		lastErr = waitReady(ctx, proc, cp.cfg.StartTimeout, func(ctx context.Context) bool {
			body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			return err == nil && string(body) == "ok"
		})
		if lastErr == nil {
			cp.mu.Lock()
			for len(cp.apiservers) <= i {
				cp.apiservers = append(cp.apiservers, nil)
			}
			cp.apiservers[i] = &apiServer{index: i, port: port, issuers: slices.Clone(issuers), proc: proc}
			cp.mu.Unlock()
			cp.lb.set(i, hostPort(port))
			return nil
		}
		proc.stop(10 * time.Second)
		if ctx.Err() != nil || !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	return fmt.Errorf("starting kube-apiserver %d: %w", i, lastErr)
}

// RestartAPIServer stops API server i and starts it again with a new
// --service-account-issuer list, as a revision rollout does on one
// control-plane node. The load balancer sends no new connection to it while
// it is down.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context, i int, issuers []string) error {
	cp.mu.Lock()
	if i < 0 || i >= len(cp.apiservers) || cp.apiservers[i] == nil {
		cp.mu.Unlock()
		return fmt.Errorf("no kube-apiserver %d (this control plane has %d)", i, len(cp.apiservers))
	}
	old := cp.apiservers[i]
	cp.apiservers[i] = nil
	cp.mu.Unlock()
	cp.lb.set(i, "")
	// Cut the clients' connections first, as a node going down would: a
	// kube-apiserver waits for open watches when it shuts down.
	cp.lb.closeBackend(hostPort(old.port))
	old.proc.stop(20 * time.Second)
	return cp.startAPIServer(ctx, i, issuers)
}

// APIServers is how many API servers the control plane has.
func (cp *ControlPlane) APIServers() int { return cp.cfg.APIServers }

// Issuers returns API server i's --service-account-issuer list, or nil while
// it is down.
func (cp *ControlPlane) Issuers(i int) []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if i < 0 || i >= len(cp.apiservers) || cp.apiservers[i] == nil {
		return nil
	}
	return slices.Clone(cp.apiservers[i].issuers)
}

// Dir is where certificates, data and logs live.
func (cp *ControlPlane) Dir() string { return cp.dir }

// LogPath is API server i's log file.
func (cp *ControlPlane) LogPath(i int) string {
	return filepath.Join(cp.dir, "logs", fmt.Sprintf("kube-apiserver-%d.log", i))
}

// URL is the load-balanced address every client uses.
func (cp *ControlPlane) URL() string { return "https://" + cp.lb.addr() }

// APIServerURL is API server i's own address, bypassing the load balancer.
func (cp *ControlPlane) APIServerURL(i int) string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if i < 0 || i >= len(cp.apiservers) || cp.apiservers[i] == nil {
		return ""
	}
	return "https://" + hostPort(cp.apiservers[i].port)
}

// CACert is the PEM certificate of the authority that signed the API
// servers' serving certificate (what kube-root-ca.crt holds in a cluster).
func (cp *ControlPlane) CACert() []byte { return slices.Clone(cp.serverCA.certPEM) }

func (cp *ControlPlane) configFor(host string, pair keyPair) *rest.Config {
	return &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   cp.serverCA.certPEM,
			CertData: pair.CertPEM,
			KeyData:  pair.KeyPEM,
		},
		QPS:   200,
		Burst: 400,
	}
}

func (cp *ControlPlane) adminConfigAt(host string) *rest.Config {
	return cp.configFor(host, cp.adminPair)
}

// AdminConfig is a client configuration in system:masters.
func (cp *ControlPlane) AdminConfig() *rest.Config { return cp.adminConfigAt(cp.URL()) }

// UserConfig is a client configuration for a user with the given groups,
// authenticated by a client certificate.
func (cp *ControlPlane) UserConfig(user string, groups ...string) (*rest.Config, error) {
	pair, err := cp.clientCA.issue(user, groups, false, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	return cp.configFor(cp.URL(), pair), nil
}

// NodeConfig is the identity a kubelet has: system:node:NAME in system:nodes,
// subject to the Node authorizer and NodeRestriction.
func (cp *ControlPlane) NodeConfig(node string) (*rest.Config, error) {
	return cp.UserConfig("system:node:"+node, "system:nodes")
}

// ServiceAccountConfig is a client configuration that authenticates with a
// real bound token for namespace/name, minted by the TokenRequest API. The
// service account is created if missing.
func (cp *ControlPlane) ServiceAccountConfig(ctx context.Context, namespace, name string, expiration time.Duration) (*rest.Config, error) {
	return cp.serviceAccountConfig(ctx, namespace, name, nil, expiration)
}

// PodServiceAccountConfig is what a pod's process has: a token for the
// pod's service account bound to the pod, so the API server knows the node
// it runs on (the authentication.kubernetes.io/node-name extra). The pod
// must exist and be scheduled.
func (cp *ControlPlane) PodServiceAccountConfig(ctx context.Context, pod *corev1.Pod, expiration time.Duration) (*rest.Config, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	ref := &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	return cp.serviceAccountConfig(ctx, pod.Namespace, sa, ref, expiration)
}

func (cp *ControlPlane) serviceAccountConfig(ctx context.Context, namespace, name string, bound *authenticationv1.BoundObjectReference, expiration time.Duration) (*rest.Config, error) {
	client, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return nil, err
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	if _, err := client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating service account %s/%s: %w", namespace, name, err)
	}
	secs := int64(expiration / time.Second)
	tr, err := client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs, BoundObjectRef: bound},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	return &rest.Config{
		Host:            cp.URL(),
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.serverCA.certPEM},
		BearerToken:     tr.Status.Token,
		QPS:             200,
		Burst:           400,
	}, nil
}

// WriteKubeconfig writes cfg as a kubeconfig file (mode 0600) for kubectl,
// tokenroll and anything else that reads one.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["sandbox"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["sandbox"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: "user"}
	kc.CurrentContext = "sandbox"
	return clientcmd.WriteToFile(*kc, path)
}

// Stop ends every process and removes a temporary directory. It is safe to
// call more than once and from a test's Cleanup.
func (cp *ControlPlane) Stop() {
	cp.stopOnce.Do(func() {
		cp.stopControllers()
		cp.mu.Lock()
		servers := slices.Clone(cp.apiservers)
		cp.mu.Unlock()
		var wg sync.WaitGroup
		for _, s := range servers {
			if s != nil {
				wg.Add(1)
				go func() { defer wg.Done(); s.proc.stop(15 * time.Second) }()
			}
		}
		wg.Wait()
		if cp.lb != nil {
			cp.lb.close()
		}
		if cp.etcd != nil {
			cp.etcd.stop(10 * time.Second)
		}
		if cp.removeDir {
			os.RemoveAll(cp.dir)
		}
	})
}
