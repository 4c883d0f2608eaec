// Command render prints the objects the deploy manifests make, as one YAML
// stream, using the kustomize and Helm libraries (the same code as
// `kustomize build` and `helm template`), and lints the Helm chart.
//
//	render kustomize DIR
//	render helm CHART_DIR [--namespace NS] [--release NAME] [-f values.yaml]... [--set k=v]...
//	render helm-lint CHART_DIR [-f values.yaml]...
//	render vap-typecheck KUBECONFIG < policy.yaml
//
// vap-typecheck type-checks a ValidatingAdmissionPolicy's CEL against the
// API server's OpenAPI schemas, as kube-controller-manager's policy status
// controller does (the test control plane runs none), and prints the
// warnings as JSON; any warning is an error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kubeVersion is the cluster version charts are rendered for: the test
// control plane's.
const kubeVersion = "v1.37.2"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func run(args []string, out io.Writer) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: render kustomize DIR | render helm CHART_DIR [flags] | render helm-lint CHART_DIR [flags]")
	}
	switch args[0] {
	case "kustomize":
		return kustomize(args[1], out)
	case "vap-typecheck":
		return typecheck(args[1], os.Stdin, out)
	case "helm", "helm-lint":
		fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
		var files, sets multi
		fs.Var(&files, "f", "values file (repeatable)")
		fs.Var(&sets, "set", "key=value (repeatable)")
		namespace := fs.String("namespace", "tokenroll", "release namespace")
		release := fs.String("release", "tokenroll", "release name")
		if err := fs.Parse(args[2:]); err != nil {
			return err
		}
		opts := values.Options{ValueFiles: files, Values: sets}
		vals, err := opts.MergeValues(getter.Providers{})
		if err != nil {
			return fmt.Errorf("reading values: %w", err)
		}
		if args[0] == "helm-lint" {
			return lint(args[1], *namespace, vals, out)
		}
		return helmTemplate(args[1], *release, *namespace, vals, out)
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func kustomize(dir string, out io.Writer) error {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	y, err := res.AsYaml()
	if err != nil {
		return err
	}
	_, err = out.Write(y)
	return err
}

// helmTemplate is `helm template`: a client-only dry-run install.
func helmTemplate(dir, release, namespace string, vals map[string]any, out io.Writer) error {
	chart, err := loader.Load(dir)
	if err != nil {
		return fmt.Errorf("loading chart %s: %w", dir, err)
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return err
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.IncludeCRDs = true
	install.ReleaseName = release
	install.Namespace = namespace
	install.KubeVersion = kv
	rel, err := install.Run(chart, vals)
	if err != nil {
		return fmt.Errorf("helm template %s: %w", dir, err)
	}
	_, err = io.WriteString(out, rel.Manifest)
	return err
}

func lint(dir, namespace string, vals map[string]any, out io.Writer) error {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = namespace
	res := l.Run([]string{dir}, vals)
	for _, m := range res.Messages {
		fmt.Fprintln(out, m.Error())
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("helm lint %s: %d problem(s)", dir, len(res.Errors))
	}
	return nil
}

func typecheck(kubeconfig string, in io.Reader, out io.Writer) error {
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	if err := yaml.NewYAMLOrJSONDecoder(in, 4096).Decode(&policy); err != nil {
		return fmt.Errorf("reading the policy: %w", err)
	}
	if policy.Kind != "ValidatingAdmissionPolicy" {
		return fmt.Errorf("not a ValidatingAdmissionPolicy: %s", policy.Kind)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	checker := validating.TypeChecker{
		SchemaResolver: &resolver.ClientDiscoveryResolver{Discovery: dc},
		RestMapper:     restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
	}
	warnings := checker.Check(&policy)
	if warnings == nil {
		warnings = []admissionregistrationv1.ExpressionWarning{}
	}
	b, err := json.Marshal(warnings)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, string(b))
	if len(warnings) > 0 {
		return fmt.Errorf("%d type-checking warning(s)", len(warnings))
	}
	return nil
}
