package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/internal/openshift"
	"github.com/tokenroll/tokenroll/internal/plural"
)

// Gate providers.
const (
	GateAuto       = "auto"
	GateOpenShift  = "openshift"
	GateStaticPods = "static-pods"
	GateNone       = "none"
)

// GateNames lists the --gate values: auto, then every provider.
func GateNames() []string { return []string{GateAuto, GateOpenShift, GateStaticPods, GateNone} }

// TrustedIssuer is an issuer the API servers accept, until Expires when
// that is known.
type TrustedIssuer struct {
	Name    string    `json:"name"`
	Expires time.Time `json:"expires,omitzero"`
}

// GateState is what the gate saw.
type GateState struct {
	Provider string `json:"provider"`
	Open     bool   `json:"open"`
	// Message says why, for people.
	Message string `json:"message"`
	// Revisions (openshift): the latest available, and the lowest and
	// highest any node runs.
	LatestRevision     int `json:"latestRevision,omitempty"`
	CurrentMinRevision int `json:"currentMinRevision,omitempty"`
	CurrentMaxRevision int `json:"currentMaxRevision,omitempty"`
	// Progressing is OpenShift's NodeInstallerProgressing condition, reason
	// and message.
	Progressing string `json:"progressing,omitempty"`
	// SigningIssuer is the issuer the gate's source says the API servers
	// sign with, when it knows (static-pods), and RequestedIssuer the one an
	// administrator asked for (openshift Authentication/cluster).
	SigningIssuer   string `json:"signingIssuer,omitempty"`
	RequestedIssuer string `json:"requestedIssuer,omitempty"`
	// Trusted lists the issuers accepted besides the signing one; TrustKnown
	// is false when the provider cannot tell (then none is assumed).
	Trusted    []TrustedIssuer `json:"trusted,omitempty"`
	TrustKnown bool            `json:"trustKnown"`
}

// WithDiscovery is g judged together with the issuer OIDC discovery
// serves: when the gate's source names a signing issuer and discovery
// another, the API servers do not agree on what they sign with, and the
// gate is closed with that reason.
func (g GateState) WithDiscovery(discovered string) GateState {
	if !g.Open || g.SigningIssuer == "" || discovered == "" || discovered == g.SigningIssuer {
		return g
	}
	g.Open = false
	g.Message = fmt.Sprintf("OIDC discovery (%s) says the API server signs with %s, the gate's source says %s: the API servers disagree or one of the two is stale; waiting until they agree",
		issuer.DiscoveryPath, discovered, g.SigningIssuer)
	return g
}

// Gate tells whether disruptive work may start.
type Gate interface {
	// Start begins watching; changed is called on every change. It returns
	// once the caches are synced, or with an error.
	Start(ctx context.Context, changed func()) error
	// State is the current verdict.
	State() GateState
}

// NewGate builds the provider named by kind; auto picks openshift when the
// KubeAPIServer API is served, static-pods when kube-system has
// kube-apiserver mirror pods on the nodes serving the kubernetes Service,
// none otherwise.
func NewGate(ctx context.Context, kind string, client kubernetes.Interface, dyn dynamic.Interface) (Gate, error) {
	if kind == GateAuto {
		var err error
		if kind, err = detectGate(ctx, client); err != nil {
			return nil, err
		}
	}
	switch kind {
	case GateOpenShift:
		if dyn == nil {
			return nil, errors.New("the openshift gate needs a dynamic client")
		}
		return &openshiftGate{dyn: dyn}, nil
	case GateStaticPods:
		return &staticPodsGate{client: client}, nil
	case GateNone:
		return noneGate{}, nil
	}
	return nil, fmt.Errorf("gate %q is not one of %s", kind, strings.Join(GateNames(), ", "))
}

func detectGate(ctx context.Context, client kubernetes.Interface) (string, error) {
	resources, err := client.Discovery().ServerResourcesForGroupVersion(openshift.KubeAPIServerResource.GroupVersion().String())
	if err == nil {
		for _, r := range resources.APIResources {
			if r.Name == openshift.KubeAPIServerResource.Resource {
				return GateOpenShift, nil
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("--gate=auto: asking the API server whether it serves %s: %w", openshift.KubeAPIServerResource.GroupVersion(), err)
	}
	pods, err := client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: apiserverPodSelector})
	if err != nil {
		return "", fmt.Errorf("--gate=auto: looking for kube-apiserver mirror pods in kube-system: %w (name the gate with --gate)", err)
	}
	eps, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: kubernetesServiceSelector})
	if err != nil {
		return "", fmt.Errorf("--gate=auto: reading the kubernetes Service's EndpointSlices in default: %w (name the gate with --gate)", err)
	}
	// A pod that only carries the label (anyone who may create pods in
	// kube-system can make one) does not choose the gate.
	addrs := endpointAddresses(ptrs(eps.Items))
	for _, p := range ptrs(pods.Items) {
		if trustedAPIServerPod(p, addrs) {
			return GateStaticPods, nil
		}
	}
	return GateNone, nil
}

func ptrs[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}

type noneGate struct{}

func (noneGate) Start(context.Context, func()) error { return nil }
func (noneGate) State() GateState {
	return GateState{Provider: GateNone, Open: true, Message: "no revision gate (--gate=none)"}
}

// openshiftGate reads KubeAPIServer/cluster and Authentication/cluster.
type openshiftGate struct {
	dyn       dynamic.Interface
	kas, auth cache.GenericLister
}

func (g *openshiftGate) Start(ctx context.Context, changed func()) error {
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(g.dyn, 0, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + openshift.ClusterName
	})
	kas := f.ForResource(openshift.KubeAPIServerResource)
	auth := f.ForResource(openshift.AuthenticationResource)
	for _, inf := range []cache.SharedIndexInformer{kas.Informer(), auth.Informer()} {
		if _, err := inf.AddEventHandler(onAnyChange(changed)); err != nil {
			return err
		}
	}
	g.kas, g.auth = kas.Lister(), auth.Lister()
	f.Start(ctx.Done())
	for r, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("openshift gate: the %s cache did not sync", r.Resource)
		}
	}
	return nil
}

func (g *openshiftGate) State() GateState {
	st := GateState{Provider: GateOpenShift, TrustKnown: true}
	if g.kas == nil || g.auth == nil {
		st.Message = "not started"
		return st
	}
	if a, err := g.auth.Get(openshift.ClusterName); err == nil {
		if u, ok := a.(*unstructured.Unstructured); ok {
			st.RequestedIssuer = openshift.RequestedIssuer(u)
		}
	}
	obj, err := g.kas.Get(openshift.ClusterName)
	if err != nil {
		st.Message = "KubeAPIServer/cluster not found: " + err.Error()
		return st
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		st.Message = "KubeAPIServer/cluster: unexpected object"
		return st
	}
	return openshiftState(u, st)
}

// openshiftState judges a KubeAPIServer: open when every node's current
// revision is the latest available one and no node has a target revision.
func openshiftState(u *unstructured.Unstructured, st GateState) GateState {
	kas, err := openshift.ParseKubeAPIServerStatus(u)
	if err != nil {
		st.Message = err.Error()
		return st
	}
	st.LatestRevision = int(kas.LatestAvailableRevision)
	var behind, installing []string
	for i, n := range kas.NodeStatuses {
		cur := int(n.CurrentRevision)
		if i == 0 || cur < st.CurrentMinRevision {
			st.CurrentMinRevision = cur
		}
		st.CurrentMaxRevision = max(st.CurrentMaxRevision, cur)
		if n.CurrentRevision != kas.LatestAvailableRevision {
			behind = append(behind, fmt.Sprintf("%s at %d", n.NodeName, cur))
		}
		if n.TargetRevision != 0 {
			installing = append(installing, fmt.Sprintf("%s to %d", n.NodeName, n.TargetRevision))
		}
	}
	if c, ok := kas.Condition(openshift.ConditionNodeInstallerProgressing); ok {
		st.Progressing = fmt.Sprintf("%s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message)
	}
	for _, it := range kas.ServiceAccountIssuers {
		if it.Name == "" {
			continue
		}
		ti := TrustedIssuer{Name: it.Name}
		if it.ExpirationTime != nil {
			ti.Expires = it.ExpirationTime.Time
		}
		st.Trusted = append(st.Trusted, ti)
	}
	switch {
	case len(kas.NodeStatuses) == 0:
		st.Message = "KubeAPIServer/cluster reports no nodes yet"
	case !kas.AtLatestRevision():
		st.Message = fmt.Sprintf("kube-apiserver revision %d rolling out: %s", kas.LatestAvailableRevision, strings.Join(append(behind, installing...), ", "))
	default:
		st.Open = true
		st.Message = fmt.Sprintf("%s at revision %d", nodeCount(len(kas.NodeStatuses)), kas.LatestAvailableRevision)
	}
	return st
}

// Selectors of what the static-pods gate reads.
const (
	apiserverPodSelector      = "component=kube-apiserver"
	kubernetesServiceSelector = discoveryv1.LabelServiceName + "=kubernetes"
	// mirrorPodAnnotation is set by the kubelet on the API object of a
	// static pod (a mirror pod).
	mirrorPodAnnotation = "kubernetes.io/config.mirror"
)

// staticPodsGate reads the kube-apiserver mirror pods of a kubeadm cluster,
// and the kubernetes Service's EndpointSlices: the API servers that serve
// the cluster are the ones it judges.
type staticPodsGate struct {
	client kubernetes.Interface
	mu     sync.Mutex
	pods   cache.Store
	slices cache.Store
}

func (g *staticPodsGate) Start(ctx context.Context, changed func()) error {
	pf := informers.NewSharedInformerFactoryWithOptions(g.client, 0, informers.WithNamespace(metav1.NamespaceSystem),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = apiserverPodSelector }))
	ef := informers.NewSharedInformerFactoryWithOptions(g.client, 0, informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = kubernetesServiceSelector }))
	podInf := pf.Core().V1().Pods().Informer()
	sliceInf := ef.Discovery().V1().EndpointSlices().Informer()
	for _, inf := range []cache.SharedIndexInformer{podInf, sliceInf} {
		if _, err := inf.AddEventHandler(onAnyChange(changed)); err != nil {
			return err
		}
	}
	g.mu.Lock()
	g.pods, g.slices = podInf.GetStore(), sliceInf.GetStore()
	g.mu.Unlock()
	pf.Start(ctx.Done())
	ef.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced) {
		return errors.New("static-pods gate: the kube-system pod cache did not sync")
	}
	if !cache.WaitForCacheSync(ctx.Done(), sliceInf.HasSynced) {
		return errors.New("static-pods gate: the cache of the kubernetes Service's EndpointSlices (namespace default) did not sync")
	}
	return nil
}

func (g *staticPodsGate) State() GateState {
	g.mu.Lock()
	podStore, sliceStore := g.pods, g.slices
	g.mu.Unlock()
	if podStore == nil || sliceStore == nil {
		return GateState{Provider: GateStaticPods, Message: "not started"}
	}
	var pods []*corev1.Pod
	for _, o := range podStore.List() {
		if p, ok := o.(*corev1.Pod); ok {
			pods = append(pods, p)
		}
	}
	var eps []*discoveryv1.EndpointSlice
	for _, o := range sliceStore.List() {
		if e, ok := o.(*discoveryv1.EndpointSlice); ok {
			eps = append(eps, e)
		}
	}
	return staticPodsState(pods, eps)
}

// endpointAddresses are the addresses of the API servers behind the
// kubernetes Service, but those its endpoints say are not ready.
func endpointAddresses(eps []*discoveryv1.EndpointSlice) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, e := range eps {
		if e.Namespace != metav1.NamespaceDefault || e.Labels[discoveryv1.LabelServiceName] != "kubernetes" {
			continue
		}
		for _, ep := range e.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					out[ip.Unmap()] = true
				}
			}
		}
	}
	return out
}

// hostAddresses are the pod's node's addresses, as its kubelet reports them
// in the pod's status (which the pod's creator cannot write).
func hostAddresses(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	add(p.Status.HostIP)
	for _, h := range p.Status.HostIPs {
		add(h.IP)
	}
	return out
}

// trustedAPIServerPod: a kube-apiserver mirror pod (the kubelet's
// annotation, owned by its Node, named after it) whose node's address backs
// the kubernetes Service. Anyone who may create pods in kube-system can
// forge the label, the annotation, the owner and the node name, but not the
// host addresses, which only the node's kubelet writes; and a kubelet
// deletes a mirror pod it has no static pod for.
func trustedAPIServerPod(p *corev1.Pod, addrs map[netip.Addr]bool) bool {
	node := p.Spec.NodeName
	if p.Namespace != metav1.NamespaceSystem || node == "" || p.Annotations[mirrorPodAnnotation] == "" || !strings.HasSuffix(p.Name, "-"+node) {
		return false
	}
	if !slices.ContainsFunc(p.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.APIVersion == "v1" && o.Kind == "Node" && o.Name == node
	}) {
		return false
	}
	return slices.ContainsFunc(hostAddresses(p), func(a netip.Addr) bool { return addrs[a] })
}

// staticPodsState is open when every API server behind the kubernetes
// Service has a kube-apiserver mirror pod, every such pod is Ready, and all
// sign with the same issuer (the first --service-account-issuer). Other
// pods labelled component=kube-apiserver neither open nor close it.
func staticPodsState(pods []*corev1.Pod, eps []*discoveryv1.EndpointSlice) GateState {
	st := GateState{Provider: GateStaticPods, TrustKnown: true}
	addrs := endpointAddresses(eps)
	if len(addrs) == 0 {
		st.Message = "the kubernetes Service (namespace default) has no ready endpoints in its EndpointSlices: which API servers serve the cluster is not known"
		return st
	}
	var trustedPods []*corev1.Pod
	covered := map[netip.Addr]bool{}
	ignored := 0
	for _, p := range pods {
		if !trustedAPIServerPod(p, addrs) {
			ignored++
			continue
		}
		trustedPods = append(trustedPods, p)
		for _, a := range hostAddresses(p) {
			covered[a] = true
		}
	}
	pods = trustedPods
	var uncovered []string
	for a := range addrs {
		if !covered[a] {
			uncovered = append(uncovered, a.String())
		}
	}
	sort.Strings(uncovered)
	ignoredNote := ""
	if ignored > 0 {
		ignoredNote = fmt.Sprintf(" (%s labelled %s ignored: not mirror pods on a node serving the kubernetes Service)", plural.Count(ignored, "other pod"), apiserverPodSelector)
	}
	if len(pods) == 0 {
		st.Message = fmt.Sprintf("no kube-apiserver mirror pods (%s) in kube-system on the nodes serving the kubernetes Service (%s)%s",
			apiserverPodSelector, strings.Join(uncovered, ", "), ignoredNote)
		return st
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	var problems []string
	if len(uncovered) > 0 {
		problems = append(problems, fmt.Sprintf("no kube-apiserver mirror pod on the node of the kubernetes Service's endpoint %s: its issuer is not known", strings.Join(uncovered, ", ")))
	}
	signing := map[string][]string{}
	var trusted []string
	for i, p := range pods {
		if !podReady(p) {
			problems = append(problems, p.Name+" not Ready")
		}
		issuers := apiserverIssuers(p)
		if len(issuers) == 0 {
			problems = append(problems, p.Name+" has no --service-account-issuer")
			continue
		}
		signing[issuers[0]] = append(signing[issuers[0]], p.Name)
		if i == 0 {
			trusted = issuers[1:]
		} else {
			trusted = slices.DeleteFunc(trusted, func(s string) bool { return !slices.Contains(issuers[1:], s) })
		}
	}
	if len(signing) > 1 {
		var parts []string
		for iss, names := range signing {
			parts = append(parts, fmt.Sprintf("%s sign with %s", strings.Join(names, ","), iss))
		}
		sort.Strings(parts)
		problems = append(problems, "issuer rolling out: "+strings.Join(parts, "; "))
	}
	for iss := range signing {
		st.SigningIssuer = iss
	}
	for _, t := range trusted {
		st.Trusted = append(st.Trusted, TrustedIssuer{Name: t})
	}
	if len(problems) > 0 {
		st.SigningIssuer = ""
		st.Message = strings.Join(problems, "; ") + ignoredNote
		return st
	}
	st.Open = true
	st.Message = fmt.Sprintf("%s Ready, all signing with %s%s", plural.Count(len(pods), "kube-apiserver pod"), st.SigningIssuer, ignoredNote)
	return st
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// apiserverIssuers reads --service-account-issuer (repeated, in order) from
// the kube-apiserver container's command and args.
func apiserverIssuers(p *corev1.Pod) []string {
	var out []string
	for _, c := range p.Spec.Containers {
		if c.Name != "kube-apiserver" && len(p.Spec.Containers) > 1 {
			continue
		}
		argv := append(slices.Clone(c.Command), c.Args...)
		for i := 0; i < len(argv); i++ {
			a := argv[i]
			switch {
			case strings.HasPrefix(a, "--service-account-issuer="):
				out = append(out, strings.TrimPrefix(a, "--service-account-issuer="))
			case a == "--service-account-issuer" && i+1 < len(argv):
				out = append(out, argv[i+1])
				i++
			}
		}
	}
	return out
}

func onAnyChange(f func()) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f() },
		UpdateFunc: func(any, any) { f() },
		DeleteFunc: func(any) { f() },
	}
}
