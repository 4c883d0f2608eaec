package coordinator_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/tokenroll/tokenroll/audit"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	deployaudit "github.com/tokenroll/tokenroll/deploy/audit"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/test/benchkit"
)

// servingCert makes a CA and a serving certificate for 127.0.0.1 signed by
// it; it returns the CA's PEM and the certificate's and key's files.
func servingCert(t *testing.T, dir string) (caPEM []byte, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "audit-webhook-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "tokenroll-audit"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for p, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kd}} {
		if err := os.WriteFile(p, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), certFile, keyFile
}

// serviceProxy stands for the audit webhook's Service and kube-proxy: each
// connection goes to a Pod of namespace ns that carries
// LabelAuditReceiver=true, read through the API server when the
// connection comes (none: the connection is closed, as a Service without
// endpoints refuses it). backends maps a Pod's name to its replica's
// webhook address.
func serviceProxy(t *testing.T, ln net.Listener, client kubernetes.Interface, ns string, backends map[string]string) {
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				pods, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: coordinator.LabelAuditReceiver + "=true"})
				if err != nil || len(pods.Items) == 0 {
					return
				}
				addr := backends[pods.Items[0].Name]
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, conn); done <- struct{}{} }()
				go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
}

// Two coordinator replicas, each serving the audit webhook, behind a
// Service that selects the Pod labelled LabelAuditReceiver: the API
// server's batches reach the leader's detector, the standby keeps none,
// and when the leader goes the label and the batches move to the other.
func TestAuditWebhookReachesTheLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real control plane (run without -short)")
	}
	t.Parallel() // as startEnvWith
	dir := t.TempDir()
	caPEM, certFile, keyFile := servingCert(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := controlplane.StartForTest(t, controlplane.Config{APIServers: 1, AuditPolicy: deployaudit.Policy,
		AuditWebhookURL: "https://" + ln.Addr().String() + "/audit", AuditWebhookCA: caPEM})
	clientCA := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(clientCA, cp.AuditWebhookClientCA(), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	api := versioned.NewForConfigOrDie(cp.AdminConfig())
	if err := benchkit.InstallCRDs(ctx, cp.AdminConfig()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{ns, "team"} {
		if err := cp.PrepareNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	log := testLogger(t)

	type replica struct {
		name   string
		reg    *prometheus.Registry
		cancel context.CancelFunc
		done   chan struct{}
	}
	backends := map[string]string{}
	var replicas []*replica
	for _, name := range []string{"coordinator-a", "coordinator-b"} {
		if _, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "coordinator", Image: "registry.example/tokenroll:1"}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		o := audit.NewOptions()
		o.WebhookListen, o.WebhookCert, o.WebhookKey, o.WebhookClientCA = "127.0.0.1:0", certFile, keyFile, clientCA
		reg := prometheus.NewRegistry()
		appOpts := apps.DefaultOptions()
		c, err := coordinator.New(coordinator.Config{Client: admin, Rollouts: api, Namespace: ns, Gate: mustGate(t, ctx, coordinator.GateNone, admin),
			Strategy: coordinator.KubeletRestart, MaxUnavailable: intstr.FromInt32(1), DrainTimeout: time.Minute, ActionTimeout: time.Minute,
			VerifyTimeout: time.Minute, TrustMargin: time.Hour, IssuerRefresh: time.Second, Registry: reg, Log: log.Named(name),
			Apps: &appOpts, PodName: name})
		if err != nil {
			t.Fatal(err)
		}
		srcs, err := o.NewSources(c, reg, log.Named(name), clock.RealClock{})
		if err != nil {
			t.Fatal(err)
		}
		backends[name] = srcs[0].(*audit.Webhook).Addr()
		rctx, rcancel := context.WithCancel(ctx)
		r := &replica{name: name, reg: reg, cancel: rcancel, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			srcDone := make(chan struct{})
			go func() { _ = srcs[0].Run(rctx); close(srcDone) }()
			_ = coordinator.RunElected(rctx, coordinator.LeaderConfig{Client: admin, Namespace: ns, LeaseName: leaseName, Identity: name,
				LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond, Log: log.Named(name)}, c.Lead)
			<-srcDone
		}()
		t.Cleanup(func() { rcancel(); <-r.done })
		replicas = append(replicas, r)
	}
	serviceProxy(t, ln, admin, ns, backends)

	// An app presenting a pod-bound token, which the API server audits.
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := admin.CoreV1().Pods("team").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app-1"},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podCfg, err := cp.PodServiceAccountConfig(ctx, pod, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	app := kubernetes.NewForConfigOrDie(podCfg)
	presented := func(r *replica) float64 {
		return counterValue(t, r.reg, "tokenroll_audit_events_total", map[string]string{"source": "webhook", "kind": "presented"})
	}
	labelled := func() []string {
		pods, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: coordinator.LabelAuditReceiver + "=true"})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range pods.Items {
			names = append(names, p.Name)
		}
		return names
	}
	// awaitLeaderGets makes requests until the label is on leader alone and
	// leader's detector took more than before presented events.
	awaitLeaderGets := func(leader *replica, before float64) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			_, _ = app.CoreV1().ConfigMaps("team").List(ctx, metav1.ListOptions{})
			got := labelled()
			return len(got) == 1 && got[0] == leader.name && presented(leader) > before, nil
		})
		if err != nil {
			t.Fatalf("%s leads, but the label is on %v and its detector took %v presented events (%v before)", leader.name, labelled(), presented(leader), before)
		}
	}

	var leader, standby *replica
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		got := labelled()
		if len(got) != 1 {
			return false, nil
		}
		for i, r := range replicas {
			if r.name == got[0] {
				leader, standby = r, replicas[1-i]
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("no replica labelled its Pod: %v", labelled())
	}
	awaitLeaderGets(leader, 0)
	if n := presented(standby); n != 0 {
		t.Errorf("the standby %s delivered %v presented events; a standby keeps none", standby.name, n)
	}

	// The leader goes: the label and the batches move to the other. The
	// API server may already have delivered it batches it held back from
	// the old leader, so what counts is events taken after this point.
	leader.cancel()
	<-leader.done
	awaitLeaderGets(standby, presented(standby))
}

// counterValue sums the series of counter name in reg that carry labels.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue series
				}
			}
			v += m.GetCounter().GetValue()
		}
	}
	return v
}
