// Package nodeclient is the agent's API client: its own Node, the
// ConfigMap the coordinator publishes the issuer in, and a REST client of
// the same API server for OIDC discovery. It is built as
// client-go's generated core client is, over a scheme that knows the core
// group alone: the generated client's package registers every API group's
// types at start (k8s.io/client-go/kubernetes/scheme), and the agent, which
// runs on every node, would pay for them in resident memory.
package nodeclient

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/tokenroll/tokenroll/internal/apiretry"
)

// Nodes is what the agent does with Nodes: the part of client-go's typed
// NodeInterface it uses, so a fake clientset's CoreV1().Nodes() serves in
// tests.
type Nodes interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error)
}

// New returns a Nodes client for the API server cfg names, and its REST
// client (for absolute paths such as OIDC discovery). Content types, the
// user agent's default, the preference for protobuf and the requests are
// those of client-go's generated core client.
func New(cfg *rest.Config) (Nodes, rest.Interface, error) {
	s, err := coreScheme()
	if err != nil {
		return nil, nil, err
	}
	config := *cfg
	gv := corev1.SchemeGroupVersion
	config.GroupVersion = &gv
	config.APIPath = "/api"
	config.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(s, serializer.NewCodecFactory(s)).WithoutConversion()
	if config.UserAgent == "" {
		config.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	client, err := rest.RESTClientFor(&config)
	if err != nil {
		return nil, nil, err
	}
	return nodes{client: client, params: runtime.NewParameterCodec(s)}, client, nil
}

// coreScheme knows the core group and the options of its requests.
func coreScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	return s, nil
}

// ConfigMaps is what the agent does with ConfigMaps: list and watch the
// one the coordinator publishes the issuer in. A fake clientset's
// CoreV1().ConfigMaps(namespace) serves in tests.
type ConfigMaps interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.ConfigMapList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// NewConfigMaps returns the ConfigMaps of namespace, read through client,
// the REST client New returned.
func NewConfigMaps(client rest.Interface, namespace string) (ConfigMaps, error) {
	s, err := coreScheme()
	if err != nil {
		return nil, err
	}
	return configMaps{client: client, namespace: namespace, params: runtime.NewParameterCodec(s)}, nil
}

type configMaps struct {
	client    rest.Interface
	namespace string
	params    runtime.ParameterCodec
}

func (c configMaps) List(ctx context.Context, opts metav1.ListOptions) (*corev1.ConfigMapList, error) {
	result := &corev1.ConfigMapList{}
	err := c.client.Get().UseProtobufAsDefaultIfPreferred(true).Namespace(c.namespace).Resource("configmaps").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Do(ctx).Into(result)
	return result, err
}

func (c configMaps) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.client.Get().UseProtobufAsDefaultIfPreferred(true).Namespace(c.namespace).Resource("configmaps").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Watch(ctx)
}

// nodes makes the requests client-go's generated Node client makes (its
// generic implementation, k8s.io/client-go/gentype, shares a package with
// its fakes and would link client-go's test fixtures into the agent).
type nodes struct {
	client rest.Interface
	params runtime.ParameterCodec
}

func (c nodes) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	result := &corev1.Node{}
	err := c.client.Get().UseProtobufAsDefaultIfPreferred(true).Resource("nodes").Name(name).
		VersionedParams(&opts, c.params).Do(ctx).Into(result)
	return result, err
}

func (c nodes) List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	result := &corev1.NodeList{}
	err := c.client.Get().UseProtobufAsDefaultIfPreferred(true).Resource("nodes").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Do(ctx).Into(result)
	return result, err
}

func (c nodes) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.client.Get().UseProtobufAsDefaultIfPreferred(true).Resource("nodes").
		VersionedParams(&opts, c.params).Timeout(timeout(opts)).Watch(ctx)
}

func (c nodes) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	result := &corev1.Node{}
	err := c.client.Patch(pt).UseProtobufAsDefaultIfPreferred(true).Resource("nodes").Name(name).SubResource(subresources...).
		VersionedParams(&opts, c.params).Body(data).Do(ctx).Into(result)
	return result, err
}

func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

// Retrying is a Nodes whose writes ride out the API server's transient
// faults as Policy says. The agent's patches set values and carry no
// resourceVersion, so an attempt repeated after a lost answer writes the
// same again. Reads and watches are left to the informer, which retries
// them itself.
type Retrying struct {
	Nodes
	Policy apiretry.Policy
}

// Patch is Nodes.Patch, retried.
func (r Retrying) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	var out *corev1.Node
	err := r.Policy.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = r.Nodes.Patch(ctx, name, pt, data, opts, subresources...)
		return err
	})
	return out, err
}

// IsWatchListSemanticsUnSupported passes on what the wrapped client says
// of watch-list semantics (a fake clientset cannot serve them).
func (r Retrying) IsWatchListSemanticsUnSupported() bool {
	u, ok := r.Nodes.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}
