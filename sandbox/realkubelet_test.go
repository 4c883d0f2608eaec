package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/agent"
	"github.com/tokenroll/tokenroll/agent/nodeclient"
	"github.com/tokenroll/tokenroll/agent/podsapi"
	"github.com/tokenroll/tokenroll/agent/scan"
	"github.com/tokenroll/tokenroll/agent/token"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
	"github.com/tokenroll/tokenroll/sandbox/kubeletsim"
	"github.com/tokenroll/tokenroll/sandbox/openshiftsim"
)

// capDACReadSearch is CAP_DAC_READ_SEARCH, the one capability the agent's
// scanner container keeps.
const capDACReadSearch = 2

// Pods the real-kubelet test adds to the node beside the sandbox's
// workloads: both run as a user of their own, as tenants' pods do, so the
// kubelet gives their tokens to that user. The probe pod's volume also
// projects the probe ConfigMap: changing it makes the kubelet rewrite the
// volume at its next sync of the pod, which shows when a sync happened.
const (
	probePod, ownerPod, probeConfigMap = "probe", "owner", "probe"
	probeUser, probeGroup, ownerUser   = 1000, 2000, 1001
	simNode                            = "sim-1"
	extraTokens                        = 3 // probe: its probe volume and kube-api-access; owner: kube-api-access
)

func probePods(node, namespace string) []*corev1.Pod {
	container := []corev1.Container{{Name: "app", Image: "app"}}
	return []*corev1.Pod{{
		ObjectMeta: metav1.ObjectMeta{Name: probePod, Namespace: namespace},
		Spec: corev1.PodSpec{NodeName: node,
			Containers:      []corev1.Container{{Name: "app", Image: "app", VolumeMounts: []corev1.VolumeMount{{Name: "probe", MountPath: "/var/run/probe"}}}},
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](probeUser), FSGroup: ptr.To[int64](probeGroup)},
			Volumes: []corev1.Volume{{Name: "probe", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](3600)}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: probeConfigMap}}},
			}}}}},
		},
	}, {
		ObjectMeta: metav1.ObjectMeta{Name: ownerPod, Namespace: namespace},
		Spec: corev1.PodSpec{NodeName: node, Containers: container,
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](ownerUser)}},
	}}
}

// diskToken is what a token file on the node holds, read directly: its
// issuer and a digest to tell a new token from a rewritten one.
type diskToken struct {
	issuer string
	sum    [sha256.Size]byte
}

// diskTokens reads every serviceAccountToken projection of the API server's
// pods on node from node's kubelet root, keyed namespace/pod/volume/path;
// a missing file is left out.
func diskTokens(ctx context.Context, client kubernetes.Interface, root, node string) (map[string]diskToken, error) {
	pods, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	out := map[string]diskToken{}
	for _, p := range pods.Items {
		for _, v := range p.Spec.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken == nil {
					continue
				}
				data, err := os.ReadFile(filepath.Join(root, "pods", string(p.UID), scan.ProjectedDir, v.Name, src.ServiceAccountToken.Path))
				if os.IsNotExist(err) {
					continue
				}
				if err != nil {
					return nil, err
				}
				key := p.Namespace + "/" + p.Name + "/" + v.Name + "/" + src.ServiceAccountToken.Path
				parts := strings.Split(string(data), ".")
				var claims struct {
					Iss string `json:"iss"`
				}
				if len(parts) != 3 {
					return nil, fmt.Errorf("%s is not a JWT", key)
				}
				payload, err := base64.RawURLEncoding.DecodeString(parts[1])
				if err == nil {
					err = json.Unmarshal(payload, &claims)
				}
				if err != nil {
					return nil, fmt.Errorf("%s: decoding the claims: %w", key, err)
				}
				out[key] = diskToken{issuer: claims.Iss, sum: sha256.Sum256(data)}
			}
		}
	}
	return out, nil
}

func issuerCounts(files map[string]diskToken) map[string]int {
	out := map[string]int{}
	for _, f := range files {
		out[f.issuer]++
	}
	return out
}

// poll calls check every interval until it reports done, failing the test
// with check's last word when timeout passes.
func poll(t *testing.T, ctx context.Context, what string, timeout, interval time.Duration, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (last: %s)", what, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// cliAgrees checks `tokenroll scan` against the files: every token file is
// in its report with the file's issuer, fresh when that is iss and
// issuer-mismatch when not.
func cliAgrees(rep *scan.Report, files map[string]diskToken, iss string) error {
	seen := map[string]bool{}
	for _, tok := range rep.Tokens {
		if tok.State == protocol.StateOrphaned || tok.State == protocol.StateForeign {
			continue
		}
		key := tok.Namespace + "/" + tok.Pod + "/" + tok.Volume + "/" + tok.Path
		f, ok := files[key]
		switch {
		case !ok:
			return fmt.Errorf("tokenroll scan reports %s (%s), which the node's pods do not hold", key, tok.State)
		case tok.Issuer != f.issuer:
			return fmt.Errorf("tokenroll scan reports %s from %q; the file is from %q", key, tok.Issuer, f.issuer)
		case f.issuer == iss && tok.State != protocol.StateFresh, f.issuer != iss && tok.State != protocol.StateIssuerMismatch:
			return fmt.Errorf("tokenroll scan judges %s (from %s, expected issuer %s) %s", key, f.issuer, iss, tok.State)
		}
		seen[key] = true
	}
	if len(seen) != len(files) {
		return fmt.Errorf("tokenroll scan reports %d of the %d token files", len(seen), len(files))
	}
	return nil
}

// agentAgrees checks the agent's report on the Node against the files: the
// expected issuer, the issuer-mismatch count and each old issuer's count.
// The expected issuer's own count may lag: the agent rewrites it only when
// something the coordinator acts on changes, or after a while.
func agentAgrees(rep protocol.TokenReport, files map[string]diskToken, iss string) error {
	counts := issuerCounts(files)
	if rep.Issuer != iss {
		return fmt.Errorf("the agent's report expects issuer %q, not %q", rep.Issuer, iss)
	}
	if !rep.Complete() {
		return fmt.Errorf("the agent's report has no complete pod list (%s)", rep.PodsAPI)
	}
	if got, want := rep.Stale[protocol.StateIssuerMismatch], len(files)-counts[iss]; got != want || rep.StaleTotal() != want {
		return fmt.Errorf("the agent reports %v stale; the files hold %d tokens from another issuer than %s", rep.Stale, want, iss)
	}
	reported := map[string]int{}
	for _, it := range rep.Issuers {
		if it.Issuer != iss {
			reported[it.Issuer] = it.Tokens
		}
	}
	delete(counts, iss)
	if !maps.Equal(reported, counts) {
		return fmt.Errorf("the agent reports old issuers %v; the files hold %v", reported, counts)
	}
	return nil
}

func readReport(ctx context.Context, client kubernetes.Interface, node string) (*corev1.Node, protocol.TokenReport, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, protocol.TokenReport{}, err
	}
	rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
	return n, rep, err
}

// authenticates reports whether the API server accepts token, and as whom.
func authenticates(ctx context.Context, cp *controlplane.ControlPlane, token []byte) (bool, error) {
	client, err := kubernetes.NewForConfig(&rest.Config{Host: cp.URL(), BearerToken: string(token), TLSClientConfig: rest.TLSClientConfig{CAData: cp.CACert()}})
	if err != nil {
		return false, err
	}
	_, err = client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsUnauthorized(err):
		return false, nil
	}
	return false, err
}

// What tokenroll rests on, checked against the real kubelet code on one
// node, in order, on one control plane:
//   - tokens given to a pod's runAsUser/fsGroup are read by the agent and
//     by `tokenroll scan` with CAP_DAC_READ_SEARCH alone, and without it
//     are never judged fresh;
//   - after an issuer change, the running kubelet keeps its old-issuer
//     tokens through its pod syncs, even when it rewrites a volume because
//     another source changed; the agent's report and `tokenroll scan` say
//     so, and the coordinator does not count a kubelet restart verified on
//     such a volume;
//   - once the old issuer's trust window ends, the token on disk is refused
//     until the kubelet restarts; a restarted kubelet writes every pod's
//     tokens under the new issuer within 10 s, and they are accepted;
//   - while a restarted kubelet's Pods API refuses connections or is
//     initializing, the coordinator's verification of the restart does not
//     pass, even with every file fresh.
func TestRealKubelet(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a control plane and the real kubelet (run without -short)")
	}
	// Missing binaries fail the test, so CI cannot pass without running it.
	if _, err := controlplane.FindKubeletBinaries(""); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the real kubelet test runs as root: the kubelet gives token files to the pods' users")
	}
	// Two API server restarts, each bounded by the operator's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute+2*openshiftsim.DefaultRestartTimeout)
	defer cancel()
	const issuerA, issuerB = "https://old.test", "https://new.test"
	// Long enough for two of the kubelet's 10 s syncs after the change.
	const trustWindow = 30 * time.Second
	// Short: the kubelet's unix sockets live under the node roots.
	dir, err := os.MkdirTemp("", "tr-kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("TOKENROLL_KEEP") != "" {
			return
		}
		_ = os.RemoveAll(dir)
	})
	// The sandbox's log (the operator's restarts, the nodes) and the API
	// server's end up in the test's output when it fails, the directory
	// being gone by then.
	logPath := filepath.Join(dir, "sandbox.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.Lock(logFile), zap.DebugLevel))
	sb, err := Start(ctx, Config{Dir: dir, Nodes: 1, APIServers: 1, Issuer: issuerA, TrustWindow: trustWindow, Kubelet: KubeletReal, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the end of %s:\n%s", logPath, logTail(logPath, 40))
			t.Logf("the end of %s:\n%s", sb.CP.LogPath(0), logTail(sb.CP.LogPath(0), 40))
		}
	})
	node := sb.Nodes[0].(*realNode)
	name, root := node.Name(), node.Root()

	// A simulated node beside the real one, with the same pods, for the
	// conformance checks.
	const simNamespace = "sim"
	simCfg, err := sb.CP.NodeConfig(simNode)
	if err != nil {
		t.Fatal(err)
	}
	sim, err := kubeletsim.New(kubeletsim.Config{Name: simNode, Root: filepath.Join(dir, "nodes", simNode), RESTConfig: simCfg,
		SyncInterval: 10 * time.Second, RestartGap: kubeletsim.RealRestartGap})
	if err != nil {
		t.Fatal(err)
	}
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() { defer close(simDone); _ = sim.Run(simCtx) }()
	defer func() { stopSim(); <-simDone }()
	if err := sb.CP.PrepareNamespace(ctx, simNamespace); err != nil {
		t.Fatal(err)
	}
	<-sim.Registered()

	var probeUID string
	ownUser := map[string]bool{}
	podUIDs := map[string]string{} // node/pod
	for _, on := range []struct{ node, namespace string }{{name, NamespaceApps}, {simNode, simNamespace}} {
		if _, err := sb.Admin.CoreV1().ConfigMaps(on.namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: probeConfigMap}, Data: map[string]string{"generation": "0"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, p := range probePods(on.node, on.namespace) {
			created, err := sb.Admin.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			podUIDs[on.node+"/"+p.Name] = string(created.UID)
			if on.node == name {
				ownUser[string(created.UID)] = true
			}
		}
	}
	probeUID = podUIDs[name+"/"+probePod]
	const allTokens = TokensPerNode + extraTokens
	// files reads the node's tokens, the API server's pod list retried
	// for a minute: an issuer change restarts it.
	files := func(t *testing.T) map[string]diskToken {
		t.Helper()
		var f map[string]diskToken
		poll(t, ctx, "the token files of "+name+"'s pods", time.Minute, 200*time.Millisecond, func() (bool, string) {
			var err error
			f, err = diskTokens(ctx, sb.Admin, root, name)
			return err == nil, fmt.Sprint(err)
		})
		return f
	}
	allFrom := func(iss string) func() (bool, string) {
		return func() (bool, string) {
			// The API server restarts with an issuer change: a refused
			// list is a poll to make again, not a failure.
			f, err := diskTokens(ctx, sb.Admin, root, name)
			if err != nil {
				return false, err.Error()
			}
			c := issuerCounts(f)
			return c[iss] == allTokens, fmt.Sprintf("token files by issuer: %v: %v", c, slices.Sorted(maps.Keys(f)))
		}
	}
	poll(t, ctx, "every pod's tokens on disk", time.Minute, 200*time.Millisecond, allFrom(issuerA))

	t.Run("the agent reads runAsUser and fsGroup tokens with CAP_DAC_READ_SEARCH alone", func(t *testing.T) {
		args := []string{"--node-name=" + name, "--kubelet-root=" + root, "--kubeconfig=" + sb.NodeKubeconfig(name),
			"--interval=1s", "--issuer-refresh-interval=10s", "--metrics-bind-address=127.0.0.1:0", "--reboot-sentinel=", "--log-format=json"}
		for _, c := range []struct {
			caps string
			keep []int
			// stale is what the agent's report on the Node must count:
			// without the capability, the tokens of the pods with their
			// own user are unreadable, never fresh.
			stale map[protocol.State]int
		}{
			{"no capability", nil, map[protocol.State]int{protocol.StateInvalid: extraTokens}},
			{"CAP_DAC_READ_SEARCH alone", []int{capDACReadSearch}, nil},
		} {
			stop := startAgent(t, ctx, args, c.keep...)
			poll(t, ctx, "the agent's report with "+c.caps, 30*time.Second, 100*time.Millisecond, func() (bool, string) {
				_, rep, err := readReport(ctx, sb.Admin, name)
				if err != nil {
					return false, err.Error()
				}
				return rep.Issuer == issuerA && rep.Complete() && rep.Tokens == allTokens && maps.Equal(rep.Stale, c.stale),
					fmt.Sprintf("issuer %q, Pods API %q, %d tokens, stale %v", rep.Issuer, rep.PodsAPI, rep.Tokens, rep.Stale)
			})
			stop()
		}
	})
	if t.Failed() {
		return
	}

	// The agent, in this process, as the DaemonSet runs it but scanning
	// every 200 ms and reading the issuer every 500 ms.
	nodeCfg, err := sb.CP.NodeConfig(name)
	if err != nil {
		t.Fatal(err)
	}
	nodes, discovery, err := nodeclient.New(nodeCfg)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{NodeName: name, KubeletRoot: root, Client: nodes, Discovery: discovery,
		Interval: 200 * time.Millisecond, IssuerRefresh: 500 * time.Millisecond, Grace: token.DefaultGrace, MaxTokenSeries: 100})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	agentCtx, stopAgent := context.WithCancel(ctx)
	go func() { defer close(agentDone); _ = ag.Run(agentCtx) }()
	defer func() { stopAgent(); <-agentDone }()

	// agree waits until the agent's report agrees with the files, then runs
	// `tokenroll scan` as the agent's scanner container runs and checks it.
	agree := func(iss string) {
		t.Helper()
		f := files(t)
		poll(t, ctx, "the agent's report agreeing with the token files", 10*time.Second, 100*time.Millisecond, func() (bool, string) {
			_, rep, err := readReport(ctx, sb.Admin, name)
			if err == nil {
				err = agentAgrees(rep, f, iss)
			}
			return err == nil, fmt.Sprint(err)
		})
		if err := cliAgrees(scanAsAgent(t, root, name, iss, capDACReadSearch), f, iss); err != nil {
			t.Fatal(err)
		}
	}
	agree(issuerA)

	t.Run("runAsUser and fsGroup tokens need CAP_DAC_READ_SEARCH", func(t *testing.T) {
		rep := scanAsAgent(t, root, name, issuerA)
		var unreadable int
		for _, tok := range rep.Tokens {
			switch {
			case ownUser[tok.PodUID] && tok.State == protocol.StateInvalid:
				unreadable++
			case ownUser[tok.PodUID]:
				t.Errorf("without CAP_DAC_READ_SEARCH the scan judges %s/%s/%s %s; it cannot read it: want invalid", tok.PodUID, tok.Volume, tok.Path, tok.State)
			case tok.State != protocol.StateFresh:
				t.Errorf("without CAP_DAC_READ_SEARCH %s %s/%s is %s (%s); want fresh: root reads it as its owner", tok.Pod, tok.Volume, tok.Path, tok.State, tok.Reason)
			}
		}
		if unreadable != extraTokens {
			t.Errorf("without CAP_DAC_READ_SEARCH %d tokens are invalid; want the %d of the pods with their own user (%v)", unreadable, extraTokens, rep.Summary)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("kubeletsim lays out pods as the real kubelet", func(t *testing.T) {
		poll(t, ctx, "the simulated node's tokens on disk", 30*time.Second, 100*time.Millisecond, func() (bool, string) {
			f, err := diskTokens(ctx, sb.Admin, sim.Root(), simNode)
			return err == nil && len(f) == extraTokens, fmt.Sprintf("%d token files %v", len(f), err)
		})
		for _, pod := range []string{probePod, ownerPod} {
			real, err := podLayout(root, podUIDs[name+"/"+pod])
			if err != nil {
				t.Fatal(err)
			}
			simulated, err := podLayout(sim.Root(), podUIDs[simNode+"/"+pod])
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(real, simulated) {
				t.Errorf("pod %s: the kubelets' layouts differ\nreal:\n  %s\nkubeletsim:\n  %s", pod, strings.Join(real, "\n  "), strings.Join(simulated, "\n  "))
			}
		}
	})

	t.Run("issuer change, the old issuer kept then dropped", func(t *testing.T) {
		if err := openshiftsim.SetIssuer(ctx, sb.Dynamic, issuerB); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		// The operator restarts the API server: bounded by its own timeout.
		poll(t, ctx, "the API server signing with "+issuerB, openshiftsim.DefaultRestartTimeout, 200*time.Millisecond, func() (bool, string) {
			iss, err := issuer.Discover(ctx, sb.Admin.Discovery().RESTClient())
			return err == nil && iss == issuerB, fmt.Sprintf("%q %v", iss, err)
		})
		t.Logf("the API server signs with %s %s after the change", issuerB, time.Since(changed).Round(100*time.Millisecond))
		probeToken := filepath.Join(root, "pods", probeUID, scan.ProjectedDir, "probe", "token")
		accepted := func(want bool, when string) {
			t.Helper()
			data, err := os.ReadFile(probeToken)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := authenticates(ctx, sb.CP, data); err != nil || ok != want {
				t.Fatalf("%s: the API server accepts the probe pod's token on disk: %v (%v); want %v", when, ok, err, want)
			}
		}
		accepted(true, "the old issuer kept")
		before := files(t)
		// Two of the kubelet's syncs of the probe pod, each seen as the
		// new ConfigMap data in its volume: the kubelet rewrote the volume
		// and kept every token it had.
		// The simulated node must do the same (conformance).
		simFiles := func(t *testing.T) map[string]diskToken {
			t.Helper()
			var f map[string]diskToken
			poll(t, ctx, "the token files of "+simNode+"'s pods", time.Minute, 200*time.Millisecond, func() (bool, string) {
				var err error
				f, err = diskTokens(ctx, sb.Admin, sim.Root(), simNode)
				return err == nil, fmt.Sprint(err)
			})
			return f
		}
		type onNode struct {
			kubelet, namespace, volume string
			files                      func(*testing.T) map[string]diskToken
			before                     map[string]diskToken
		}
		nodes := []onNode{
			{"the real kubelet", NamespaceApps, filepath.Join(root, "pods", probeUID, scan.ProjectedDir, "probe"), files, before},
			{"kubeletsim", simNamespace, filepath.Join(sim.Root(), "pods", podUIDs[simNode+"/"+probePod], scan.ProjectedDir, "probe"), simFiles, simFiles(t)},
		}
		for gen := 1; gen <= 2; gen++ {
			want := fmt.Sprint(gen)
			dataBefore := map[string]string{}
			for _, on := range nodes {
				dataBefore[on.kubelet], _ = os.Readlink(filepath.Join(on.volume, "..data"))
				if _, err := sb.Admin.CoreV1().ConfigMaps(on.namespace).Update(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: probeConfigMap}, Data: map[string]string{"generation": want}}, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, on := range nodes {
				poll(t, ctx, on.kubelet+" syncing the probe pod", time.Minute, 100*time.Millisecond, func() (bool, string) {
					got, err := os.ReadFile(filepath.Join(on.volume, "generation"))
					return err == nil && string(got) == want, fmt.Sprintf("generation %q %v", got, err)
				})
				if dataAfter, _ := os.Readlink(filepath.Join(on.volume, "..data")); dataAfter == dataBefore[on.kubelet] {
					t.Fatalf("%s: the probe volume shows the new ConfigMap data without a new ..data (%s)", on.kubelet, dataAfter)
				}
				if after := on.files(t); !maps.Equal(after, on.before) {
					t.Fatalf("sync %d: %s changed a token before its refresh time: issuers %v, were %v", gen, on.kubelet, issuerCounts(after), issuerCounts(on.before))
				}
			}
		}
		agree(issuerB)
		// The probe volume was rewritten with the cached token: the
		// coordinator must not take it for a restarted kubelet's work.
		n, _, err := readReport(ctx, sb.Admin, name)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := coordinator.KubeletRestartVerified(n, issuerB); ok {
			t.Fatal("the coordinator verifies a kubelet restart on a node whose volumes were rewritten with old-issuer tokens")
		}

		// The trust window ends: the operator drops the old issuer.
		poll(t, ctx, "the operator dropping "+issuerA, trustWindow+openshiftsim.DefaultRestartTimeout, 200*time.Millisecond, func() (bool, string) {
			got := sb.CP.Issuers(0)
			if !slices.Equal(got, []string{issuerB}) {
				return false, fmt.Sprintf("the API server trusts %v", got)
			}
			_, err := issuer.Discover(ctx, sb.Admin.Discovery().RESTClient())
			return err == nil, fmt.Sprint(err)
		})
		t.Logf("the operator dropped %s %s after the change", issuerA, time.Since(changed).Round(time.Second))
		if after := files(t); !maps.Equal(after, before) {
			t.Fatalf("the running kubelet changed a token before its refresh time: issuers %v, were %v", issuerCounts(after), issuerCounts(before))
		}
		accepted(false, "the old issuer dropped, before the kubelet restart")

		restarted := time.Now()
		if err := node.RestartKubelet(); err != nil {
			t.Fatal(err)
		}
		poll(t, ctx, "every token under "+issuerB+" after the kubelet restart", 10*time.Second, 100*time.Millisecond, allFrom(issuerB))
		t.Logf("every token from %s %s after the kubelet restart", issuerB, time.Since(restarted).Round(100*time.Millisecond))
		accepted(true, "after the kubelet restart")
		agree(issuerB)
	})
	if t.Failed() {
		return
	}

	t.Run("restart gap", func(t *testing.T) {
		// Every file is fresh under the signing issuer now: only the Pods
		// API's answer can keep the verification from passing while the
		// restarted kubelet does not list its pods.
		// Every version of the Node: a watch the API server ends is
		// started again where it stopped.
		var lastRV string
		watchNode := func() apiwatch.Interface {
			t.Helper()
			w, err := sb.Admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: lastRV})
			if err != nil {
				t.Fatal(err)
			}
			return w
		}
		watcher := watchNode()
		defer func() { watcher.Stop() }()
		// What each kubelet's Pods API answers through its restart, in
		// order, asked directly (conformance).
		answers := map[string][]protocol.PodsAPI{}
		var mu sync.Mutex
		var asking, asked sync.WaitGroup
		// Each asks until it has seen its Pods API list again after
		// answering something else, or for 20 s.
		askCtx, stopAsking := context.WithTimeout(ctx, 20*time.Second)
		defer stopAsking()
		for _, n := range []Node{node, sim} {
			asking.Add(1)
			asked.Add(1)
			go func() {
				defer asking.Done()
				var seq []protocol.PodsAPI
				for askCtx.Err() == nil {
					_, answer, _ := podsapi.Ask(askCtx, n.PodsAPISocket())
					if askCtx.Err() == nil && (len(seq) == 0 || seq[len(seq)-1] != answer) {
						seq = append(seq, answer)
						if len(seq) == 1 {
							asked.Done()
						}
						if len(seq) > 1 && answer == protocol.PodsAPIListed {
							break
						}
					}
					time.Sleep(20 * time.Millisecond)
				}
				mu.Lock()
				answers[n.Name()] = seq
				mu.Unlock()
			}()
		}
		asked.Wait()
		sim.RestartKubelet()
		if err := node.RestartKubelet(); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(15 * time.Second)
		incomplete := map[protocol.PodsAPI]bool{}
		var lastWait string
	watch:
		for {
			select {
			case <-deadline:
				t.Fatalf("the coordinator did not verify the kubelet restart within 15s (last: %s); the agent's reports without a pod list: %v", lastWait, slices.Sorted(maps.Keys(incomplete)))
			case ev, ok := <-watcher.ResultChan():
				if !ok {
					watcher = watchNode()
					continue
				}
				n, isNode := ev.Object.(*corev1.Node)
				if !isNode {
					continue
				}
				lastRV = n.ResourceVersion
				rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
				if err != nil {
					t.Fatal(err)
				}
				var verified bool
				verified, lastWait = coordinator.KubeletRestartVerified(n, issuerB)
				if !rep.Complete() {
					incomplete[rep.PodsAPI] = true
					if verified {
						t.Fatalf("the coordinator verified the kubelet restart on the agent's report with the Pods API %s", rep.PodsAPI)
					}
				}
				if verified && len(incomplete) > 0 {
					break watch
				}
			}
		}
		asking.Wait()
		t.Logf("the agent reported the Pods API %v during the restart; asked directly, the real kubelet answered %v, kubeletsim %v",
			slices.Sorted(maps.Keys(incomplete)), answers[name], answers[simNode])
		// Both kubelets remove the stale socket just before listening
		// again: a client asking in that instant finds none (absent).
		// Whether one does is luck, so the comparison leaves it out.
		steps := func(seq []protocol.PodsAPI) []protocol.PodsAPI {
			return slices.Compact(slices.DeleteFunc(slices.Clone(seq), func(a protocol.PodsAPI) bool { return a == protocol.PodsAPIAbsent }))
		}
		want := []protocol.PodsAPI{protocol.PodsAPIListed, protocol.PodsAPIUnavailable, protocol.PodsAPIInitializing, protocol.PodsAPIListed}
		if got := steps(answers[name]); !slices.Equal(got, want) {
			t.Errorf("the real kubelet's Pods API answered %v through its restart; want %v", answers[name], want)
		}
		if got := steps(answers[simNode]); !slices.Equal(got, want) {
			t.Errorf("through a kubelet restart kubeletsim's Pods API answered %v, the real kubelet's %v", answers[simNode], answers[name])
		}
	})
}
