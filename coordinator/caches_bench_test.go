package coordinator

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenroll/tokenroll/coordinator/apps"
	apifake "github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned/fake"
	"github.com/tokenroll/tokenroll/protocol"
)

// podsPerNode is the benchmark fleet's density: 150,000 pods on 5,000
// nodes.
const podsPerNode = 30

// wire round-trips an object through the API server's protobuf encoding,
// so every string of what the informers receive is its own allocation, as
// when a client decodes a response.
type wire struct{ s *protobuf.Serializer }

func newWire() wire { return wire{protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)} }

func (w wire) roundTrip(tb testing.TB, obj kruntime.Object) kruntime.Object {
	raw, err := kruntime.Encode(w.s, obj)
	if err != nil {
		tb.Fatal(err)
	}
	out, _, err := w.s.Decode(raw, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// managed is a managedFields entry as the API server keeps one: fields is
// the size of its FieldsV1 (a few hundred bytes to a few KiB per manager).
func managed(manager, sub string, fields int, at time.Time) metav1.ManagedFieldsEntry {
	raw := make([]byte, 0, fields)
	raw = append(raw, `{"f:metadata":{"f:labels":{`...)
	for i := 0; len(raw) < fields-8; i++ {
		raw = append(raw, fmt.Sprintf(`"f:k%d":{},`, i)...)
	}
	raw = append(raw, `"f:x":{}}}}`...)
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		Time: &metav1.Time{Time: at}, FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(string(raw)), Subresource: sub}
}

// realisticNode is node i as the API server returns it on a cloud: the
// usual labels and annotations, its agent's report of 30 pods' tokens,
// capacity, five conditions, addresses, node info, 40 images and the
// managed fields of the kubelet, the node controller and the agent.
func realisticNode(i int, rv int) *corev1.Node {
	name := fmt.Sprintf("ip-10-%d-%d-%d.eu-west-1.compute.internal", i>>16&255, i>>8&255, i&255)
	ids := map[string][]string{}
	for p := range podsPerNode {
		ids[fmt.Sprintf("%08x-0000-4000-8000-%012x", i, p)] = []string{fmt.Sprintf("%016x@%d", uint64(i)<<20|uint64(p), t0.Unix())}
	}
	rep := protocol.TokenReport{Issuer: newIssuer, Tokens: podsPerNode, Issuers: []protocol.IssuerTokens{{Issuer: newIssuer, Tokens: podsPerNode}}, TokenIDs: ids}
	raw, _ := json.Marshal(rep)
	q := resource.MustParse
	n := &corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(fmt.Sprintf("%08x-1111-4000-8000-%012x", i, i)), ResourceVersion: strconv.Itoa(rv),
			CreationTimestamp: metav1.NewTime(t0.Add(-30 * 24 * time.Hour)),
			Labels: map[string]string{"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
				"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/instance-type": "m6i.2xlarge",
				"node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/region": "eu-west-1",
				"topology.kubernetes.io/zone": fmt.Sprintf("eu-west-1%c", 'a'+i%3), "failure-domain.beta.kubernetes.io/zone": fmt.Sprintf("eu-west-1%c", 'a'+i%3),
				"node-role.kubernetes.io/worker": ""},
			Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
				"csi.volume.kubernetes.io/nodeid": fmt.Sprintf(`{"ebs.csi.aws.com":"i-%017x"}`, i),
				protocol.AnnotationTokens:         string(raw)},
			ManagedFields: []metav1.ManagedFieldsEntry{managed("kubelet", "", 1500, t0), managed("kubelet", "status", 3000, t0),
				managed("kube-controller-manager", "", 400, t0), managed("tokenroll-agent", "", 300, t0)}},
		Spec: corev1.NodeSpec{PodCIDR: "100.64.0.0/24", PodCIDRs: []string{"100.64.0.0/24"}, ProviderID: fmt.Sprintf("aws:///eu-west-1a/i-%017x", i)},
		Status: corev1.NodeStatus{
			Capacity: corev1.ResourceList{corev1.ResourceCPU: q("8"), corev1.ResourceMemory: q("32408856Ki"), corev1.ResourcePods: q("110"),
				corev1.ResourceEphemeralStorage: q("104845292Ki"), "hugepages-1Gi": q("0"), "hugepages-2Mi": q("0"), "attachable-volumes-aws-ebs": q("25")},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: q("7910m"), corev1.ResourceMemory: q("31391000Ki"), corev1.ResourcePods: q("110"),
				corev1.ResourceEphemeralStorage: q("95551679124"), "hugepages-1Gi": q("0"), "hugepages-2Mi": q("0"), "attachable-volumes-aws-ebs": q("25")},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)},
				{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalDNS, Address: name}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{MachineID: fmt.Sprintf("ec2%029x", i), SystemUUID: fmt.Sprintf("ec2%029x", i), BootID: fmt.Sprintf("%08x-2222-4000-8000-%012x", i, i),
				KernelVersion: "6.1.112-124.190.amzn2023.x86_64", OSImage: "Amazon Linux 2023.6.20241031", ContainerRuntimeVersion: "containerd://1.7.23",
				KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	for _, c := range []struct {
		t      corev1.NodeConditionType
		s      corev1.ConditionStatus
		reason string
	}{{corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"}, {corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"},
		{corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"}, {corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"},
		{protocol.ConditionTokensStale, corev1.ConditionFalse, "TokensFresh"}} {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: c.t, Status: c.s, Reason: c.reason,
			Message: "kubelet has sufficient resources", LastHeartbeatTime: metav1.NewTime(t0), LastTransitionTime: metav1.NewTime(t0.Add(-time.Hour))})
	}
	for k := range 40 {
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{SizeBytes: int64(1e7 + k),
			Names: []string{fmt.Sprintf("registry.example.com/team-%d/app@sha256:%064x", k, k), fmt.Sprintf("registry.example.com/team-%d/app:v1.%d", k, k)}})
	}
	return n
}

// realisticPod is pod p of node i as the API server returns it: a
// Deployment's replica, owned by its ReplicaSet, with the kube-api-access
// projected volume every pod gets (token, ca.crt, namespace), a ConfigMap
// volume, one container with probes, environment and resources, the
// default tolerations, five conditions, a running container's status and
// the managed fields of the ReplicaSet controller and the kubelet.
func realisticPod(node string, i, p int) *corev1.Pod {
	ns := fmt.Sprintf("team-%03d", (i*podsPerNode+p)%500)
	deploy := fmt.Sprintf("service-%d", p%10)
	hash := "7d9f8c6b5"
	name := fmt.Sprintf("%s-%s-%05x", deploy, hash, i*podsPerNode+p)
	exp := int64(3607)
	ip := fmt.Sprintf("100.%d.%d.%d", 64+i>>8&63, i&255, p)
	mode := int32(420)
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, GenerateName: deploy + "-" + hash + "-", Namespace: ns,
			UID: types.UID(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, p)), ResourceVersion: strconv.Itoa(1000000 + i*podsPerNode + p),
			CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour)),
			Labels:            map[string]string{"app.kubernetes.io/name": deploy, "app.kubernetes.io/part-of": "shop", "pod-template-hash": hash},
			Annotations:       map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-11-20T10:00:00Z", "prometheus.io/scrape": "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: deploy + "-" + hash,
				UID: types.UID(fmt.Sprintf("rs-%s-%s", ns, deploy)), Controller: new(true), BlockOwnerDeletion: new(true)}},
			ManagedFields: []metav1.ManagedFieldsEntry{managed("kube-controller-manager", "", 2500, t0), managed("kubelet", "status", 2000, t0)}},
		Spec: corev1.PodSpec{
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: deploy + "-config"}, DefaultMode: &mode}}},
				{Name: "kube-api-access-" + hash[:5], VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: &mode, Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &exp, Path: "token"}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
				}}}},
			},
			Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/shop/" + deploy + ":v2.14.1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "DATABASE_URL", Value: "postgres://db.shop.svc:5432/shop"}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
				VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}, {Name: "kube-api-access-" + hash[:5], MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTP}},
					PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3},
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent}},
			RestartPolicy: corev1.RestartPolicyAlways, TerminationGracePeriodSeconds: new(int64(30)), DNSPolicy: corev1.DNSClusterFirst,
			ServiceAccountName: "default", DeprecatedServiceAccount: "default", NodeName: node, SchedulerName: "default-scheduler",
			SecurityContext: &corev1.PodSecurityContext{}, EnableServiceLinks: new(true), PreemptionPolicy: new(corev1.PreemptLowerPriority), Priority: new(int32(0)),
			Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: new(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: new(int64(300))}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "10.0.0.1", HostIPs: []corev1.HostIP{{IP: "10.0.0.1"}}, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			StartTime: &metav1.Time{Time: t0.Add(-time.Hour)}, QOSClass: corev1.PodQOSBurstable,
			Conditions: []corev1.PodCondition{{Type: "PodReadyToStartContainers", Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)},
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0)}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, Started: new(true), RestartCount: 0,
				Image: "registry.example.com/shop/" + deploy + ":v2.14.1", ImageID: fmt.Sprintf("registry.example.com/shop/%s@sha256:%064x", deploy, p),
				ContainerID: fmt.Sprintf("containerd://%064x", i<<8|p), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(t0)}}}}},
	}
}

// fleetClient is a fake clientset serving a fleet's Nodes and Pods fresh
// from the wire on every list, and watches the benchmark drives.
type fleetClient struct {
	*fake.Clientset
	nodeWatch, podWatch *watch.FakeWatcher
}

func newFleetClient(tb testing.TB, nodes int) *fleetClient {
	w := newWire()
	c := &fleetClient{Clientset: fake.NewSimpleClientset(), nodeWatch: watch.NewFakeWithChanSize(100, false), podWatch: watch.NewFakeWithChanSize(100, false)}
	c.PrependReactor("list", "nodes", func(clienttesting.Action) (bool, kruntime.Object, error) {
		l := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "1"}}
		for i := range nodes {
			l.Items = append(l.Items, *w.roundTrip(tb, realisticNode(i, 1)).(*corev1.Node))
		}
		return true, l, nil
	})
	c.PrependReactor("list", "pods", func(clienttesting.Action) (bool, kruntime.Object, error) {
		l := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "1"}}
		for i := range nodes {
			node := realisticNode(i, 1).Name
			for p := range podsPerNode {
				l.Items = append(l.Items, *w.roundTrip(tb, realisticPod(node, i, p)).(*corev1.Pod))
			}
		}
		return true, l, nil
	})
	c.PrependWatchReactor("nodes", func(clienttesting.Action) (bool, watch.Interface, error) { return true, c.nodeWatch, nil })
	c.PrependWatchReactor("pods", func(clienttesting.Action) (bool, watch.Interface, error) { return true, c.podWatch, nil })
	return c
}

// seenCache records the name of the last Node its handler gave it, so
// that the benchmark tells its flushNodes sentinel's sync from the others.
type seenCache struct {
	cache.MutationCache
	last atomic.Value
}

func (c *seenCache) OnAddOrUpdate(obj kruntime.Object) {
	if n, ok := obj.(*corev1.Node); ok {
		c.last.Store(n.Name)
	}
	c.MutationCache.OnAddOrUpdate(obj)
}

func (c *seenCache) OnDelete(obj kruntime.Object) {
	if n, ok := obj.(*corev1.Node); ok {
		c.last.Store(n.Name)
	}
	c.MutationCache.OnDelete(obj)
}

// flushNode is the name of the benchmark's sentinel Node.
const flushNode = "flush.tokenroll.test"

var (
	cachesHeapProfile  = flag.String("caches.heapprofile", "", "BenchmarkCaches writes the heap profile of what the caches retain to this file")
	cachesChurnProfile = flag.String("caches.churnprofile", "", "BenchmarkCaches writes the CPU profile of the pod churn alone to this file (not with -cpuprofile)")
)

// retained is the heap in use after collecting garbage.
func retained() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkCaches measures what a leading coordinator keeps per Node and
// per Pod, and what it spends at idle, over a fleet the API server's
// protobuf encoding delivers (realistic Nodes and Pods: managed fields,
// images, projected token volumes, owners, conditions): the term's Node
// informer with its handlers and read-your-writes cache, one sync's plan,
// and app detection's pod informer feeding its detector. It reports
// retained heap per node and per pod (after garbage collection), the
// CPU of one idle evaluation of every pod (every 10 s), and of one Node
// update that moves only the kubelet's heartbeat (every node every
// 5 minutes), decoding included, as the informer receives it.
// Run: go test -run '^$' -bench Caches -benchtime 1x -cpu 1 ./coordinator/
func BenchmarkCaches(b *testing.B) {
	for _, nodes := range []int{1000} {
		b.Run(fmt.Sprintf("nodes=%d/pods=%d", nodes, nodes*podsPerNode), func(b *testing.B) {
			for range b.N {
				benchCaches(b, nodes)
			}
		})
	}
}

func benchCaches(b *testing.B, nodes int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newFleetClient(b, nodes)
	clock := clocktesting.NewFakeClock(t0)
	gate := NewFakeGate(GateState{Provider: GateNone, Open: true, Message: "no revision gate", TrustKnown: true, Trusted: []TrustedIssuer{{Name: newIssuer}}})
	c, err := New(Config{Client: client, Rollouts: apifake.NewSimpleClientset(), Namespace: testNS, Gate: gate, Strategy: KubeletRestart,
		MaxUnavailable: intstr.FromString("10%"), DrainTimeout: time.Minute, ActionTimeout: time.Minute, VerifyTimeout: time.Minute,
		IssuerRefresh: time.Hour, TrustMargin: time.Hour, Apps: new(apps.DefaultOptions()), Log: zap.NewNop(), Registry: prometheus.NewRegistry(), Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	c.issuer, c.discovered, c.issuerRead = newIssuer, newIssuer, t0
	c.observedIssuer, c.observedIssuerAt = newIssuer, t0.Add(-time.Hour)
	heap0 := retained()

	// The term's Node informer, with the handlers Lead gives it.
	nodeFactory := nodeInformerFactory(client)
	nodeInf := nodeFactory.Core().V1().Nodes().Informer()
	t := c.newTerm(klog.Background(), nodeInf.GetStore(), cache.NewStore(cache.MetaNamespaceKeyFunc))
	defer t.queue.ShutDown()
	open := true
	t.sourceOpen = &open
	// syncs counts the syncs the Node handler asks for, flushes the
	// flushNodes sentinels it has handled.
	var syncs, flushes atomic.Int64
	seen := &seenCache{MutationCache: t.nodes}
	enqueue := func() {
		if seen.last.Load() == flushNode {
			flushes.Add(1)
			return
		}
		syncs.Add(1)
	}
	vols := newVolumeFeed(c)
	var handled []cache.InformerSynced
	for _, h := range []cache.ResourceEventHandler{nodeOnChange(seen, t.parsed, enqueue), cache.ResourceEventHandlerFuncs{UpdateFunc: t.nodeUpdated},
		cache.ResourceEventHandlerFuncs{AddFunc: vols.node, UpdateFunc: func(_, n any) { vols.node(n) }}} {
		reg, err := nodeInf.AddEventHandler(h)
		if err != nil {
			b.Fatal(err)
		}
		handled = append(handled, reg.HasSynced)
	}
	t.index.track()
	nodeFactory.Start(ctx.Done())
	defer func() { cancel(); nodeFactory.Shutdown() }()
	if !cache.WaitForCacheSync(ctx.Done(), handled...) {
		b.Fatal("nodes not synced")
	}
	if _, err := t.sync(ctx); err != nil {
		b.Fatal(err)
	}
	heapNodes := retained()

	d := apps.NewDetector(apps.Config{Grace: 2 * time.Minute, Window: 15 * time.Minute, RepeatEvents: time.Hour, Clock: clock})
	c.detector.Store(d)
	synced, stop := apps.FollowPods(ctx, client, d)
	defer func() { cancel(); stop() }()
	if !cache.WaitForCacheSync(ctx.Done(), synced) {
		b.Fatal("pods not synced")
	}
	if got := d.Pods(); got != nodes*podsPerNode {
		b.Fatalf("the detector follows %d pods, want %d", got, nodes*podsPerNode)
	}
	for _, n := range nodeInf.GetStore().List() {
		vols.node(n)
	}
	d.Evaluate()
	heapPods := retained()
	if *cachesHeapProfile != "" {
		f, err := os.Create(*cachesHeapProfile)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}

	// Idle evaluations: nothing changed but the clock.
	const evaluations = 20
	cpu0 := cpuTime(b)
	for range evaluations {
		clock.Step(10 * time.Second)
		d.Evaluate()
	}
	evalCPU := (cpuTime(b) - cpu0) / evaluations

	// Heartbeats: each Node's kubelet posts its status, moving only the
	// heartbeat times; the informer decodes each from the wire.
	w := newWire()
	beats := min(nodes, 1000)
	var raws [][]byte
	for i := range beats {
		n := realisticNode(i, 2)
		for k := range n.Status.Conditions {
			n.Status.Conditions[k].LastHeartbeatTime = metav1.NewTime(t0.Add(5 * time.Minute))
		}
		raw, err := kruntime.Encode(w.s, n)
		if err != nil {
			b.Fatal(err)
		}
		raws = append(raws, raw)
	}
	// flushNodes returns once the Node handler has handled every update
	// fed before: it feeds a Node added then deleted, each asking for a
	// sync once all before it are handled, which enqueue counts apart.
	flushNodes := func() {
		n := flushes.Load()
		f := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: flushNode, ResourceVersion: "1"}}
		client.nodeWatch.Add(f)
		client.nodeWatch.Delete(f)
		for flushes.Load() < n+2 {
			time.Sleep(time.Millisecond)
		}
	}
	syncs.Store(0)
	cpu0 = cpuTime(b)
	for _, raw := range raws {
		obj, _, err := w.s.Decode(raw, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		client.nodeWatch.Modify(obj)
	}
	flushNodes()
	beatCPU := (cpuTime(b) - cpu0) / time.Duration(beats)
	if n := syncs.Load(); n != 0 {
		b.Errorf("%d heartbeats asked for %d syncs, want none", beats, n)
	}

	// Pod churn: pods replaced as a Deployment's rollout or a
	// rescheduling replaces them, each replacement the watch events the
	// pod informer receives for it: the old pod marked for deletion, then
	// deleted; its replacement added Pending without a node, bound to the
	// node, then Running with its IP and conditions. The detector judges
	// what changed at its next evaluation, every 10 s; at 10 replacements
	// per node-hour that is 10*nodes/360 replacements per evaluation.
	const replacements = 1000
	perEval := max(1, 10*nodes/360)
	var churn [][]byte
	for r := range replacements {
		i, p := r%nodes, r/nodes%podsPerNode
		node := realisticNode(i, 1).Name
		old := realisticPod(node, i, p)
		rv := 2000000 + r*10
		old.ResourceVersion = strconv.Itoa(rv)
		old.DeletionTimestamp, old.DeletionGracePeriodSeconds = &metav1.Time{Time: t0.Add(time.Minute)}, new(int64(30))
		created := realisticPod(node, i, p)
		created.Name = created.GenerateName + fmt.Sprintf("r%04x", r)
		created.UID = types.UID(fmt.Sprintf("%08x-5555-4000-8000-%012x", i, r))
		created.CreationTimestamp = metav1.NewTime(t0.Add(time.Minute))
		created.ManagedFields = created.ManagedFields[:1]
		running := created.Status
		created.Spec.NodeName = ""
		created.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBurstable}
		bound := created.DeepCopy()
		bound.Spec.NodeName = node
		bound.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(t0.Add(time.Minute))}}
		up := bound.DeepCopy()
		up.Status = running
		up.ManagedFields = realisticPod(node, i, p).ManagedFields
		for k, o := range []*corev1.Pod{old, created, bound, up, old} {
			o.ResourceVersion = strconv.Itoa(rv + k)
			raw, err := kruntime.Encode(w.s, o)
			if err != nil {
				b.Fatal(err)
			}
			churn = append(churn, raw)
		}
	}
	// A pod added after the churn: once the detector holds it, the
	// informer has applied every event before it.
	sentinel := realisticPod(realisticNode(0, 1).Name, nodes, 0)
	sentinel.ResourceVersion = strconv.Itoa(2000000 + replacements*10)
	decode := func(raw []byte) kruntime.Object {
		obj, _, err := w.s.Decode(raw, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		return obj
	}
	if *cachesChurnProfile != "" {
		f, err := os.Create(*cachesChurnProfile)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				b.Error(err)
			}
		}()
	}
	syncs.Store(0)
	var churnEvalCPU time.Duration
	cpu0 = cpuTime(b)
	for r := range replacements {
		for k, raw := range churn[r*5 : r*5+5] {
			switch k {
			case 1:
				client.podWatch.Add(decode(raw))
			case 4:
				client.podWatch.Delete(decode(raw))
			default:
				client.podWatch.Modify(decode(raw))
			}
		}
		if (r+1)%perEval == 0 || r == replacements-1 {
			client.podWatch.Add(w.roundTrip(b, sentinel))
			for d.Pods() != nodes*podsPerNode+1 {
				time.Sleep(time.Millisecond)
			}
			client.podWatch.Delete(w.roundTrip(b, sentinel))
			for d.Pods() != nodes*podsPerNode {
				time.Sleep(time.Millisecond)
			}
			clock.Step(10 * time.Second)
			e0 := cpuTime(b)
			d.Evaluate()
			churnEvalCPU += cpuTime(b) - e0
		}
	}
	if *cachesChurnProfile != "" {
		pprof.StopCPUProfile()
	}
	// Less the evaluations' idle share, which evalCPU counts.
	evals := time.Duration((replacements + perEval - 1) / perEval)
	churnCPU := (cpuTime(b) - cpu0 - evals*evalCPU) / replacements
	flushNodes()
	churnSyncs := syncs.Load()
	if churnSyncs != 0 {
		b.Errorf("%d pod replacements asked for %d syncs, want none", replacements, churnSyncs)
	}

	// The Node side of churn: pods coming and going change a node's
	// tokens report (its token count and TokenIDs), which its agent
	// rewrites at most hourly; each rewrite is a Node update the informer
	// decodes. Each asks for a sync (none is run here: the queue is not
	// served); what one sync of this fleet costs is measured apart.
	var reports [][]byte
	for i := range beats {
		n := realisticNode(i, 3)
		rep, err := protocol.ParseTokenReport(n.Annotations[protocol.AnnotationTokens])
		if err != nil {
			b.Fatal(err)
		}
		delete(rep.TokenIDs, fmt.Sprintf("%08x-0000-4000-8000-%012x", i, 0))
		rep.TokenIDs[fmt.Sprintf("%08x-5555-4000-8000-%012x", i, i)] = []string{fmt.Sprintf("%016x@%d", uint64(i)<<20|0xfffff, t0.Add(time.Minute).Unix())}
		raw, _ := json.Marshal(rep)
		n.Annotations[protocol.AnnotationTokens] = string(raw)
		if raw, err = kruntime.Encode(w.s, n); err != nil {
			b.Fatal(err)
		}
		reports = append(reports, raw)
	}
	syncs.Store(0)
	cpu0 = cpuTime(b)
	for _, raw := range reports {
		client.nodeWatch.Modify(decode(raw))
	}
	flushNodes()
	reportCPU := (cpuTime(b) - cpu0) / time.Duration(beats)
	reportSyncs := syncs.Load()
	const syncRuns = 5
	cpu0 = cpuTime(b)
	for range syncRuns {
		if _, err := t.sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
	syncCPU := (cpuTime(b) - cpu0) / syncRuns

	perNode := float64(heapNodes-heap0) / float64(nodes)
	perPod := float64(heapPods-heapNodes) / float64(nodes*podsPerNode)
	b.ReportMetric(perNode, "B/node")
	b.ReportMetric(perPod, "B/pod")
	b.ReportMetric((perNode*5000+perPod*150000)/(1<<20), "MiB-heap@5000")
	b.ReportMetric(float64(evalCPU.Microseconds()), "eval-cpu-us")
	b.ReportMetric(float64(beatCPU.Microseconds()), "heartbeat-cpu-us")
	b.ReportMetric(float64(churnCPU.Microseconds()), "churn-cpu-us")
	b.ReportMetric(float64((churnEvalCPU / evals).Microseconds()), "churn-eval-cpu-us")
	b.ReportMetric(float64(churnSyncs), "churn-syncs")
	b.ReportMetric(float64(reportCPU.Microseconds()), "report-cpu-us")
	b.ReportMetric(float64(reportSyncs)/float64(beats), "report-syncs/report")
	b.ReportMetric(float64(syncCPU.Microseconds()), "sync-cpu-us")
	// At 5,000 nodes and 150,000 pods per hour of idle: 360 evaluations
	// (scaled from this fleet's pods), 12 heartbeats per node, 10 pod
	// replacements per node (the scale benchmark's churn: 50,000, each
	// with the evaluation share it causes, at this fleet's size), and the
	// one report rewrite per node that churn brings, with the syncs it
	// asks for (a sync's cost scaled from this fleet's nodes; at a sync
	// every ~0.7 s, the queue merges next to none).
	b.ReportMetric(evalCPU.Seconds()*360*150000/float64(nodes*podsPerNode)+beatCPU.Seconds()*12*5000+churnCPU.Seconds()*10*5000+
		reportCPU.Seconds()*5000+float64(reportSyncs)/float64(beats)*5000*syncCPU.Seconds()*5000/float64(nodes), "idle-cpu-s/h@5000")
}
