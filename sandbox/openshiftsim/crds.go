package openshiftsim

import (
	"context"
	"embed"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
)

//go:embed crds/*.yaml
var crdFiles embed.FS

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// crdTimeout bounds the wait for each CRD to be established and served.
const crdTimeout = 2 * time.Minute

// servedProbes is how many list requests in a row, each on a new connection,
// must succeed before a CRD counts as served. Behind the sandbox's load
// balancer each new connection goes to the next API server, so this asks
// every one of a few servers at least once.
const servedProbes = 6

// InstallCRDs creates or updates the KubeAPIServer
// (kubeapiservers.operator.openshift.io) and Authentication
// (authentications.config.openshift.io) CRDs and waits until both are
// established and served. Calling it again is harmless.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	crds, err := loadCRDs()
	if err != nil {
		return err
	}
	return InstallCRDObjects(ctx, cfg, crds)
}

// InstallCRDObjects creates or updates the CRDs crds and waits until each
// is established and served by every API server (tokenroll's own go
// through it too).
func InstallCRDObjects(ctx context.Context, cfg *rest.Config, crds []*unstructured.Unstructured) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("installing CRDs: %w", err)
	}
	for _, crd := range crds {
		if err := applyCRD(ctx, dyn, crd); err != nil {
			return err
		}
	}
	for _, crd := range crds {
		if err := waitEstablished(ctx, dyn, crd.GetName()); err != nil {
			return err
		}
		if err := waitServed(ctx, cfg, crd); err != nil {
			return err
		}
	}
	return nil
}

func loadCRDs() ([]*unstructured.Unstructured, error) {
	entries, err := crdFiles.ReadDir("crds")
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, e := range entries {
		name := path.Join("crds", e.Name())
		data, err := crdFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal(data, &obj); err != nil {
			return nil, fmt.Errorf("parsing embedded CRD %s: %w", name, err)
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out, nil
}

func applyCRD(ctx context.Context, dyn dynamic.Interface, crd *unstructured.Unstructured) error {
	client := dyn.Resource(crdResource)
	_, err := client.Create(ctx, crd, metav1.CreateOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating CRD %s: %w", crd.GetName(), err)
	}
	// Bring an existing definition up to ours, keeping its metadata.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		existing, err := client.Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		existing.Object["spec"] = crd.Object["spec"]
		_, err = client.Update(ctx, existing, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("updating CRD %s: %w", crd.GetName(), err)
	}
	return nil
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, crdTimeout, true, func(ctx context.Context) (bool, error) {
		crd, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, unless(transient, err)
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		established, accepted := false, false
		for _, c := range conds {
			m, _ := c.(map[string]any)
			switch m["type"] {
			case "Established":
				established = m["status"] == "True"
			case "NamesAccepted":
				accepted = m["status"] == "True"
				if !accepted {
					last = fmt.Sprintf("NamesAccepted is %v: %v", m["status"], m["message"])
				}
			}
		}
		return established && accepted, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for CRD %s to be established (last: %s): %w", name, last, err)
	}
	return nil
}

// waitServed lists the CRD's resource through new connections until enough
// in a row succeed: Established is set once, but every API server learns of
// the CRD on its own.
func waitServed(ctx context.Context, cfg *rest.Config, crd *unstructured.Unstructured) error {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	var version string
	if len(versions) > 0 {
		version, _, _ = unstructured.NestedString(versions[0].(map[string]any), "name")
	}
	gvr := schema.GroupVersionResource{Group: group, Version: version, Resource: plural}

	probe := rest.CopyConfig(cfg)
	// A proxy function (here: none) keeps client-go from sharing one cached
	// transport, so every probe opens its own connection.
	probe.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	probe.Timeout = 10 * time.Second

	ok := 0
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, crdTimeout, true, func(ctx context.Context) (bool, error) {
		hc, err := rest.HTTPClientFor(probe)
		if err != nil {
			return false, err
		}
		defer hc.CloseIdleConnections()
		dyn, err := dynamic.NewForConfigAndClient(probe, hc)
		if err != nil {
			return false, err
		}
		if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			// NotFound: this server does not serve the resource yet.
			ok, last = 0, err
			return false, unless(func(err error) bool { return apierrors.IsNotFound(err) || transient(err) }, err)
		}
		ok++
		return ok >= servedProbes, nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("CRD %s is established but not yet served by every API server; last error: %w", crd.GetName(), last)
	}
	if err != nil {
		return fmt.Errorf("CRD %s is established but not yet served by every API server: %w", crd.GetName(), err)
	}
	return nil
}

// unless returns nil when retry says err is worth another try, else err.
func unless(retry func(error) bool, err error) error {
	if retry(err) {
		return nil
	}
	return err
}
