package audit

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	deployaudit "github.com/tokenroll/tokenroll/deploy/audit"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

// boundClaims are the claims of a pod-bound token the test compares with
// what the audit events say. The token itself is never printed.
type boundClaims struct {
	JTI        string `json:"jti"`
	Kubernetes struct {
		Namespace string `json:"namespace"`
		Pod       struct {
			Name string    `json:"name"`
			UID  types.UID `json:"uid"`
		} `json:"pod"`
		Node struct {
			Name string `json:"name"`
		} `json:"node"`
	} `json:"kubernetes.io"`
}

func claimsOf(t *testing.T, token string) boundClaims {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatal("the TokenRequest's token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal("the token's payload is not base64url")
	}
	var c boundClaims
	if err := json.Unmarshal(payload, &c); err != nil || c.JTI == "" {
		t.Fatal("the token's payload has no jti")
	}
	return c
}

// TestAuditFromARealAPIServer runs two kube-apiservers with the shipped
// audit policy, a log each and the webhook backend pointed at a webhook
// source, and checks that both sources see what a pod-bound token, the
// TokenRequest that made it and a refused token leave in the audit.
func TestAuditFromARealAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real control plane (run without -short)")
	}
	webhookRec, logRec := &recorder{}, &recorder{}
	wopts, serverCA := webhookOptions(t, nil)
	cp := controlplane.StartForTest(t, controlplane.Config{
		APIServers:      2,
		AuditPolicy:     deployaudit.Policy,
		AuditWebhookURL: "https://" + wopts.WebhookListen + "/audit",
		AuditWebhookCA:  serverCA.pem,
	})
	writeTemp(t, filepath.Dir(wopts.WebhookClientCA), filepath.Base(wopts.WebhookClientCA), cp.AuditWebhookClientCA())
	wm, _ := startSources(t, wopts, webhookRec)
	lopts := NewOptions()
	lopts.Logs = []string{cp.AuditLogPath(0), cp.AuditLogPath(1)}
	lopts.LogCheckpointDir = filepath.Join(t.TempDir(), "checkpoints")
	lopts.LogPollInterval = 100 * time.Millisecond
	lm, _ := startSources(t, lopts, logRec)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cp.AdminConfig())
	if err := cp.PrepareNamespace(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := admin.CoreV1().Pods("team").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app-1"},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podCfg, err := cp.PodServiceAccountConfig(ctx, pod, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	claims := claimsOf(t, podCfg.BearerToken)
	if claims.Kubernetes.Pod.UID != pod.UID || claims.Kubernetes.Node.Name != "node-a" {
		t.Fatalf("the token is bound to pod %s on node %q, want %s on node-a", claims.Kubernetes.Pod.UID, claims.Kubernetes.Node.Name, pod.UID)
	}

	// The app's request: refused by RBAC, but authenticated.
	app := kubernetes.NewForConfigOrDie(podCfg)
	for range 4 { // through the load balancer, so both API servers likely see one
		_, _ = app.CoreV1().ConfigMaps("team").List(ctx, metav1.ListOptions{})
	}
	// A request whose token is refused.
	bad := rest.AnonymousClientConfig(podCfg)
	bad.BearerToken = "not-a-token"
	_, err = kubernetes.NewForConfigOrDie(bad).CoreV1().ConfigMaps("team").List(ctx, metav1.ListOptions{})
	if err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("a garbage token: %v, want Unauthorized", err)
	}

	wantPresented := Event{Kind: Presented, User: "system:serviceaccount:team:default", JTI: claims.JTI,
		Pod: PodRef{Namespace: "team", Name: "app-1", UID: pod.UID, Node: "node-a"}}
	wantIssued := PodRef{Namespace: "team", Name: "app-1", UID: pod.UID}
	loopback := netip.MustParseAddr("127.0.0.1")
	check := func(rec *recorder) (missing []string) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		var presented, issued, failed bool
		for _, ev := range rec.evs {
			switch ev.Kind {
			case Presented:
				if ev.JTI == wantPresented.JTI {
					if ev.User != wantPresented.User || ev.Pod != wantPresented.Pod || ev.Code != 403 || ev.SourceIP != loopback {
						t.Errorf("Presented %+v, want %+v with code 403 from %s", ev, wantPresented, loopback)
					}
					presented = true
				}
			case Issued:
				if ev.JTI == claims.JTI {
					if ev.Pod != wantIssued || ev.User != "tokenroll-admin" || ev.Code != 201 {
						t.Errorf("Issued %+v, want pod %+v by tokenroll-admin", ev, wantIssued)
					}
					issued = true
				}
			case AuthFailed:
				if ev.SourceIP == loopback && ev.Code == 401 && ev.User == "" {
					failed = true
				}
			}
		}
		for what, seen := range map[string]bool{"Presented": presented, "Issued": issued, "AuthFailed": failed} {
			if !seen {
				missing = append(missing, what)
			}
		}
		return missing
	}
	for name, rec := range map[string]*recorder{"webhook": webhookRec, "log": logRec} {
		var missing []string
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			missing = check(rec)
			return len(missing) == 0, nil
		})
		if err != nil {
			t.Errorf("the %s source did not see %v (it saw %d events)", name, missing, len(rec.ids()))
		}
	}
	for name, m := range map[string]*Metrics{SourceWebhook: wm, SourceLog: lm} {
		for _, r := range []SkipReason{SkipMalformed, SkipTooLarge, SkipUnsupported, SkipInvalid} {
			if n := testutil.ToFloat64(m.skipped.WithLabelValues(name, string(r))); n != 0 {
				t.Errorf("%s: %v events skipped as %s from a real API server", name, n, r)
			}
		}
	}
	if n := testutil.ToFloat64(wm.webhookRequests.WithLabelValues(resultAccepted)); n == 0 {
		t.Error("no webhook batch accepted")
	}
	t.Logf("webhook: %d events, log: %d events", len(webhookRec.ids()), len(logRec.ids()))
}
