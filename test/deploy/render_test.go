package deploy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	agentapp "github.com/tokenroll/tokenroll/cmd/tokenroll-agent/app"
	coordinatorapp "github.com/tokenroll/tokenroll/cmd/tokenroll-coordinator/app"
	"github.com/tokenroll/tokenroll/coordinator"
	"github.com/tokenroll/tokenroll/coordinator/apps"
	"github.com/tokenroll/tokenroll/internal/cli"
	"github.com/tokenroll/tokenroll/internal/issuer"
	"github.com/tokenroll/tokenroll/protocol"
)

// TestRender renders every way of installing and checks the object sets:
// no duplicates, everything namespaced in the right namespace, and the
// pieces each installation must have.
func TestRender(t *testing.T) {
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			objs := render(t, r)
			seen := map[string]bool{}
			for _, o := range objs {
				k := objectKey(o)
				if seen[k] {
					t.Errorf("%s appears twice", k)
				}
				seen[k] = true
				// The Node events' Role and RoleBinding are in "default",
				// kured's lock's in kured's namespace (TestCoordinatorRBACNames).
				role := o.GetKind() == "Role" || o.GetKind() == "RoleBinding"
				nodeEvents := o.GetNamespace() == "default" && role
				kuredLock := role && strings.HasSuffix(o.GetName(), "-kured-lock")
				if ns := o.GetNamespace(); ns != "" && ns != r.namespace && !nodeEvents && !kuredLock {
					t.Errorf("%s is in namespace %q, want %q", k, ns, r.namespace)
				}
			}
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.GetKind()]++
			}
			for _, kind := range []string{"DaemonSet", "Deployment", "PodDisruptionBudget", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
				"ServiceAccount", "Service", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "CustomResourceDefinition"} {
				if kinds[kind] == 0 {
					t.Errorf("no %s", kind)
				}
			}
			monitored := strings.Contains(r.name, "monitoring") || strings.Contains(r.name, "openshift") || r.name == "helm-custom"
			for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
				if (kinds[kind] > 0) != monitored {
					t.Errorf("%d %s objects, want them only with monitoring", kinds[kind], kind)
				}
			}
			if (kinds["SecurityContextConstraints"] > 0) != strings.Contains(r.name, "openshift") {
				t.Errorf("%d SecurityContextConstraints, want one only on OpenShift", kinds["SecurityContextConstraints"])
			}
		})
	}
}

// TestHelmLint runs Helm's linter (strict) with the default and the custom
// values.
func TestHelmLint(t *testing.T) {
	runTool(t, "render", "helm-lint", "deploy/helm/tokenroll")
	runTool(t, "render", "helm-lint", "deploy/helm/tokenroll", "-f", customValues)
}

// TestHelmRejectsBadValues: values.schema.json stops a bad value before it
// reaches a cluster.
func TestHelmRejectsBadValues(t *testing.T) {
	for _, set := range []string{
		"coordinator.gate=openshit", "coordinator.strategy=drain", "coordinator.maxUnavailable=0", "coordinator.maxUnavailable=150%", "coordinator.kuredLock=kured",
		"agent.executor=ssh", "agent.tokenExpirationSeconds=3607", "agent.tokenExpirationSeconds=60", "agent.interval=30",
		"coordinator.drainTimeout=soon", "logLevel=trace", "agent.kubeletRoot=var/lib/kubelet", "coordinator.replicas=0",
		"agnet.interval=1m", "image.digest=latest",
	} {
		cmd := exec.Command(filepath.Join(tools(t), "render"), "helm", "deploy/helm/tokenroll", "--set", set)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "values don't meet the specifications of the schema") && !strings.Contains(string(out), "at '/") {
			t.Errorf("--set %s: %v, want the chart's schema to refuse it\n%s", set, err, out)
		}
	}
}

// TestHelmMatchesKustomize: with the release named tokenroll in namespace
// tokenroll, the chart renders exactly the kustomize objects (labels aside,
// and the Namespace, which Helm leaves to `--create-namespace` or the
// administrator).
func TestHelmMatchesKustomize(t *testing.T) {
	for _, pair := range [][2]string{
		{"kustomize-base", "helm-default"},
		{"kustomize-kubeadm", "helm-kubeadm"},
		{"kustomize-openshift", "helm-openshift"},
		{"kustomize-kubeadm-audit", "helm-kubeadm-audit"},
	} {
		t.Run(pair[1], func(t *testing.T) {
			k := normalizeForCompare(render(t, findRendering(pair[0])))
			h := normalizeForCompare(render(t, findRendering(pair[1])))
			for key, ko := range k {
				ho, ok := h[key]
				if !ok {
					t.Errorf("%s: in %s, not in %s", key, pair[0], pair[1])
					continue
				}
				if !reflect.DeepEqual(ko, ho) {
					t.Errorf("%s differs between %s and %s:\n%s", key, pair[0], pair[1], diffJSON(ko, ho))
				}
			}
			for key := range h {
				if _, ok := k[key]; !ok {
					t.Errorf("%s: in %s, not in %s", key, pair[1], pair[0])
				}
			}
		})
	}
}

// normalizeForCompare drops what legitimately differs between the two:
// object labels (Helm adds its own) and the Namespace.
func normalizeForCompare(objs []*unstructured.Unstructured) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue
		}
		o.SetLabels(nil)
		out[objectKey(o)] = o.Object
	}
	return out
}

// diffJSON shows the lines where a and b differ.
func diffJSON(a, b any) string {
	aj, _ := json.MarshalIndent(a, "", "  ")
	bj, _ := json.MarshalIndent(b, "", "  ")
	al, bl := strings.Split(string(aj), "\n"), strings.Split(string(bj), "\n")
	var out []string
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, fmt.Sprintf("line %d:\n  - %s\n  + %s", i+1, x, y))
		}
		if len(out) >= 10 {
			out = append(out, "...")
			break
		}
	}
	return strings.Join(out, "\n")
}

func toTyped[T any](t testing.TB, o *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &v, true); err != nil {
		t.Fatalf("%s: %v", objectKey(o), err)
	}
	return &v
}

func workloads(t testing.TB, r rendering) (*appsv1.DaemonSet, *appsv1.Deployment) {
	t.Helper()
	var ds *appsv1.DaemonSet
	var dep *appsv1.Deployment
	for _, o := range render(t, r) {
		switch o.GetKind() {
		case "DaemonSet":
			ds = toTyped[appsv1.DaemonSet](t, o)
		case "Deployment":
			dep = toTyped[appsv1.Deployment](t, o)
		}
	}
	if ds == nil || dep == nil {
		t.Fatalf("%s: no DaemonSet or no Deployment", r.name)
	}
	return ds, dep
}

// TestAgentPodSecurity checks, in every rendering, the agent's pod against
// what the design promises: a scanner that is root only to read tokens
// (every capability but DAC_READ_SEARCH dropped, the kubelet's pods and
// Pods API read-only, no D-Bus), an executor that is uid 64302 (the user the
// polkit rule confines) with no capability, no kubelet path and only the
// bus and its state; no host namespaces; a short-lived projected token.
func TestAgentPodSecurity(t *testing.T) {
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			ds, _ := workloads(t, r)
			spec := ds.Spec.Template.Spec
			if spec.HostNetwork || spec.HostPID || spec.HostIPC || spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
				t.Error("the agent uses a host namespace or shares its processes between containers")
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Error("the agent's pod automounts a service-account token")
			}
			psc := spec.SecurityContext
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Error("the agent's pod has no RuntimeDefault seccomp profile")
			}
			if psc != nil && (psc.RunAsUser != nil || psc.RunAsNonRoot != nil) {
				t.Error("the pod sets a user for both containers; each container sets its own")
			}
			if r.name != "helm-custom" && !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
				return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
			}) {
				t.Error("the agent does not tolerate every taint")
			}
			if len(spec.InitContainers) != 0 || len(spec.Containers) != 2 || spec.Containers[0].Name != "scanner" || spec.Containers[1].Name != "executor" {
				t.Fatalf("containers %v, init containers %d; want scanner and executor", containerNames(spec.Containers), len(spec.InitContainers))
			}
			scanner, executor := spec.Containers[0], spec.Containers[1]
			for _, c := range spec.Containers {
				sc := c.SecurityContext
				switch {
				case sc == nil:
					t.Fatalf("%s: no securityContext", c.Name)
				case sc.Privileged != nil && *sc.Privileged:
					t.Errorf("%s: privileged", c.Name)
				case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
					t.Errorf("%s: privilege escalation allowed", c.Name)
				case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
					t.Errorf("%s: root file system writable", c.Name)
				case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
					t.Errorf("%s: capabilities %+v, want every one dropped", c.Name, sc.Capabilities)
				}
				if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
					t.Errorf("%s: resources %+v: want cpu and memory requests and a memory limit", c.Name, c.Resources)
				}
				if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
					return e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" &&
						(e.ValueFrom.ResourceFieldRef.ContainerName == "" || e.ValueFrom.ResourceFieldRef.ContainerName == c.Name)
				}) {
					t.Errorf("%s: GOMEMLIMIT does not follow its limits.memory", c.Name)
				}
				if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
					return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
				}) {
					t.Errorf("%s: NODE_NAME is not the downward API's spec.nodeName", c.Name)
				}
			}
			if sc := scanner.SecurityContext; sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.Capabilities == nil ||
				!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"DAC_READ_SEARCH"}) {
				t.Errorf("scanner: user %v, capabilities added %v; want root with DAC_READ_SEARCH only", ptrValue(sc.RunAsUser), sc.Capabilities)
			}
			if sc := executor.SecurityContext; sc.RunAsUser == nil || *sc.RunAsUser != agentUID || sc.RunAsGroup == nil || *sc.RunAsGroup != agentUID ||
				sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
				t.Errorf("executor: user %v group %v nonRoot %v, capabilities added %v; want uid and gid %d (the polkit rule's), non-root, none added",
					ptrValue(sc.RunAsUser), ptrValue(sc.RunAsGroup), ptrValue(sc.RunAsNonRoot), sc.Capabilities, agentUID)
			}
			if got := flagValue(scanner.Args, "--run"); got != "scan" {
				t.Errorf("scanner: --run=%q, want scan", got)
			}
			if got := flagValue(executor.Args, "--run"); got != "act" {
				t.Errorf("executor: --run=%q, want act", got)
			}

			hostPaths := map[string]*corev1.HostPathVolumeSource{}
			var token *corev1.ServiceAccountTokenProjection
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					hostPaths[v.Name] = v.HostPath
				}
				if v.Projected != nil {
					for _, s := range v.Projected.Sources {
						if s.ServiceAccountToken != nil {
							token = s.ServiceAccountToken
						}
					}
				}
			}
			if len(hostPaths) != 4 || hostPaths["kubelet-pods"] == nil || hostPaths["kubelet-pods-api"] == nil || hostPaths["system-bus"] == nil || hostPaths["state"] == nil {
				t.Errorf("host paths %v, want exactly kubelet-pods, kubelet-pods-api, system-bus and state", hostPaths)
			}
			root := kubeletRootArg(scanner.Args)
			for name, hp := range hostPaths {
				if strings.HasPrefix(name, "kubelet-") && !strings.HasPrefix(hp.Path, root+"/") {
					t.Errorf("host path %s is %s, outside --kubelet-root %s", name, hp.Path, root)
				}
			}
			// Exactly these volumes in each container: a host path added to
			// the wrong one fails here.
			want := map[string][]string{
				"scanner":  {"kube-api-access", "kubelet-pods", "kubelet-pods-api", "tmp"},
				"executor": {"kube-api-access", "state", "system-bus"},
			}
			for _, c := range spec.Containers {
				var names []string
				for _, m := range c.VolumeMounts {
					names = append(names, m.Name)
				}
				slices.Sort(names)
				if !slices.Equal(names, want[c.Name]) {
					t.Errorf("%s mounts %v, want exactly %v", c.Name, names, want[c.Name])
				}
				for _, m := range c.VolumeMounts {
					switch m.Name {
					case "kubelet-pods":
						if !m.ReadOnly || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer ||
							m.MountPath != root+"/pods" {
							t.Errorf("pods mount %+v: want <kubelet-root>/pods read-only with HostToContainer propagation", m)
						}
					case "kubelet-pods-api":
						if !m.ReadOnly || m.MountPath != root+"/pods-api" {
							t.Errorf("Pods API mount %+v: want <kubelet-root>/pods-api read-only", m)
						}
					case "system-bus":
						if !m.ReadOnly {
							t.Error("the D-Bus socket directory is mounted read-write")
						}
						if bus := flagValue(c.Args, "--system-bus"); !strings.HasPrefix(bus, "unix:path="+m.MountPath+"/") {
							t.Errorf("executor: --system-bus=%s is not in the mounted %s", bus, m.MountPath)
						}
					case "state":
						if got := flagValue(c.Args, "--state-dir"); got != m.MountPath {
							t.Errorf("executor: --state-dir=%s, the state volume is at %s", got, m.MountPath)
						}
					case "kube-api-access":
						if m.MountPath != "/var/run/secrets/kubernetes.io/serviceaccount" || !m.ReadOnly {
							t.Errorf("token mount %+v: want read-only at the standard path", m)
						}
					}
				}
			}
			// The executor is not root: it reads its API token only if the
			// projected volume is readable by others.
			for _, v := range spec.Volumes {
				if v.Name == "kube-api-access" && (v.Projected == nil || v.Projected.DefaultMode == nil || *v.Projected.DefaultMode&0o004 == 0) {
					t.Error("the API token volume is not readable by the executor's user")
				}
			}
			if token == nil || token.ExpirationSeconds == nil || *token.ExpirationSeconds >= 3607 || *token.ExpirationSeconds < 600 || token.Path != "token" {
				t.Errorf("projected token %+v: want path token, 600 <= expirationSeconds < 3607 (3607 is stretched to a year)", token)
			}
			// Each container serves its own /metrics, /healthz and /readyz,
			// on a port the Service names, and its probes ask that port.
			ports := map[string]int32{}
			for _, c := range spec.Containers {
				if len(c.Ports) != 1 {
					t.Fatalf("%s: ports %v, want one", c.Name, c.Ports)
				}
				p := c.Ports[0]
				ports[p.Name] = p.ContainerPort
				if addr := flagValue(c.Args, "--metrics-bind-address"); addr != ":"+strconv.Itoa(int(p.ContainerPort)) {
					t.Errorf("%s: --metrics-bind-address=%s, port %s is %d", c.Name, addr, p.Name, p.ContainerPort)
				}
				for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
					if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.StrVal != p.Name {
						t.Errorf("%s: a probe %+v does not ask its own port %s", c.Name, probe, p.Name)
					}
				}
			}
			if len(ports) != 2 {
				t.Errorf("container ports %v: the containers share a port name", ports)
			}
			for _, o := range render(t, r) {
				if o.GetKind() != "Service" || o.GetLabels()["app.kubernetes.io/component"] != "agent" {
					continue
				}
				svc := toTyped[corev1.Service](t, o)
				got := map[string]bool{}
				for _, p := range svc.Spec.Ports {
					got[p.TargetPort.StrVal] = true
				}
				for name := range ports {
					if !got[name] {
						t.Errorf("Service %s does not expose the agent's port %s", svc.Name, name)
					}
				}
			}
		})
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func ptrValue[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// flagValue is the value of --name=value in args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// kubeletRootArg is the agent's --kubelet-root.
func kubeletRootArg(args []string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--kubelet-root="); ok {
			return v
		}
	}
	return "/var/lib/kubelet"
}

// TestCoordinatorPod checks the coordinator's Deployment: several replicas
// kept apart, non-root as the image's user, a PodDisruptionBudget.
func TestCoordinatorPod(t *testing.T) {
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			_, dep := workloads(t, r)
			if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
				t.Error("fewer than 2 coordinator replicas")
			}
			spec := dep.Spec.Template.Spec
			if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil {
				t.Error("no pod anti-affinity between replicas")
			}
			psc := spec.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
				t.Fatal("the coordinator may run as root")
			}
			openshift := strings.Contains(r.name, "openshift")
			if openshift != (psc.RunAsUser == nil) {
				t.Errorf("runAsUser %v: want 65532 (the image's user), none on OpenShift", psc.RunAsUser)
			}
			if psc.RunAsUser != nil && *psc.RunAsUser != imageUser(t) {
				t.Errorf("runAsUser %d, the image's user is %d", *psc.RunAsUser, imageUser(t))
			}
			sc := spec.Containers[0].SecurityContext
			// With the audit log source, root with DAC_READ_SEARCH alone:
			// the API server writes its log mode 0600.
			var wantAdd []corev1.Capability
			if auditLog := strings.HasSuffix(r.name, "-audit"); auditLog {
				wantAdd = []corev1.Capability{"DAC_READ_SEARCH"}
				if sc == nil || ptrValue(sc.RunAsUser) != any(int64(0)) || ptrValue(sc.RunAsNonRoot) != any(false) {
					t.Errorf("with the audit log, container securityContext %+v; want runAsUser 0", sc)
				}
			} else if sc != nil && (sc.RunAsUser != nil || sc.RunAsNonRoot != nil) {
				t.Errorf("the container sets its own user: %+v", sc)
			}
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil ||
				!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, wantAdd) {
				t.Errorf("container securityContext %+v", sc)
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Error("the coordinator's pod automounts a service-account token")
			}
			// GOMEMLIMIT leaves the tenth of the limit that is not heap.
			c := spec.Containers[0]
			i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" })
			if i < 0 {
				t.Fatal("the coordinator has no GOMEMLIMIT")
			}
			soft, err := resource.ParseQuantity(strings.TrimSuffix(c.Env[i].Value, "B"))
			if limit := c.Resources.Limits.Memory(); err != nil || limit.IsZero() || soft.Value() < limit.Value()*85/100 || soft.Value() > limit.Value()*95/100 {
				t.Errorf("GOMEMLIMIT %q (%v) with limits.memory %v: want 85 to 95%% of the limit", c.Env[i].Value, err, limit)
			}
			pdb := find(t, render(t, r), "PodDisruptionBudget", dep.Name)
			sel, _, _ := unstructured.NestedStringMap(pdb.Object, "spec", "selector", "matchLabels")
			if !reflect.DeepEqual(sel, dep.Spec.Selector.MatchLabels) {
				t.Errorf("PodDisruptionBudget selects %v, the Deployment's pods are %v", sel, dep.Spec.Selector.MatchLabels)
			}
		})
	}
}

var userLine = regexp.MustCompile(`(?m)^USER\s+(\d+)(?::\d+)?\s*$`)

// imageUser is the UID the Dockerfile's final stage runs as.
func imageUser(t testing.TB) int64 {
	m := userLine.FindAllSubmatch(readFile(t, "Dockerfile"), -1)
	if len(m) == 0 {
		t.Fatal("Dockerfile has no USER line")
	}
	uid, err := strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return uid
}

var imageVar = regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+):\$\(VERSION\)\s*$`)

// TestImage: the manifests name the image `make image` builds (the
// Makefile's IMAGE), at the chart's appVersion.
func TestImage(t *testing.T) {
	m := imageVar.FindSubmatch(readFile(t, "Makefile"))
	if m == nil {
		t.Fatal("Makefile: no IMAGE ?= REPOSITORY:$(VERSION) line")
	}
	repo := string(m[1])
	var appVersion string
	for _, line := range strings.Split(string(readFile(t, "deploy/helm/tokenroll/Chart.yaml")), "\n") {
		if v, ok := strings.CutPrefix(line, "appVersion: "); ok {
			appVersion = strings.Trim(v, `"`)
		}
	}
	want := repo + ":" + appVersion
	for _, r := range renderings {
		if r.name == "helm-custom" {
			continue
		}
		ds, dep := workloads(t, r)
		for _, img := range []string{ds.Spec.Template.Spec.Containers[0].Image, dep.Spec.Template.Spec.Containers[0].Image} {
			if img != want {
				t.Errorf("%s: image %s, want %s (Makefile IMAGE at the chart's appVersion)", r.name, img, want)
			}
		}
	}
}

// TestArgsParse parses every container's arguments with the flag set of
// the program its command runs, so a misspelt or removed flag, or a
// container running the wrong program, fails here, not in a crash-looping
// pod.
func TestArgsParse(t *testing.T) {
	programs := map[string]cli.NewCommand{"agent": agentapp.NewCommand, "coordinator": coordinatorapp.NewCommand}
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			ds, dep := workloads(t, r)
			program := map[string]string{"scanner": "agent", "executor": "agent", "coordinator": "coordinator"}
			for _, c := range append(slices.Clone(ds.Spec.Template.Spec.Containers), dep.Spec.Template.Spec.Containers[0]) {
				if want := []string{"/usr/local/bin/tokenroll-" + program[c.Name]}; !slices.Equal(c.Command, want) {
					t.Errorf("%s: command %q, want %q (the image's binary for it)", c.Name, c.Command, want)
				}
				args := make([]string, len(c.Args))
				for i, a := range c.Args {
					// What the kubelet substitutes from the container's env.
					args[i] = strings.NewReplacer("$(NODE_NAME)", "node-a", "$(POD_NAMESPACE)", r.namespace).Replace(a)
				}
				newCommand, ok := programs[program[c.Name]]
				if !ok {
					t.Fatalf("container %s: no tokenroll program of that name", c.Name)
				}
				cmd := newCommand(io.Discard, io.Discard)
				if err := cmd.ParseFlags(args); err != nil {
					t.Errorf("%s: %q: %v", c.Name, args, err)
				}
				if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
					t.Errorf("%s: %v", c.Name, err)
				}
			}
		})
	}
}

// TestCoordinatorRBACNames: the names the coordinator's Role limits it to
// are the ones its code uses (the legacy rollout ConfigMap it migrates, app detection's
// status ConfigMap, the published issuer, the Lease named by --lease-name),
// and the agent's Role grants the watch of the published issuer alone.
func TestCoordinatorRBACNames(t *testing.T) {
	for _, r := range renderings {
		objs := render(t, r)
		_, dep := workloads(t, r)
		var lease string
		for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
			if v, ok := strings.CutPrefix(a, "--lease-name="); ok {
				lease = v
			}
		}
		role := toTyped[rbacv1.Role](t, find(t, objs, "Role", dep.Name))
		names := map[string][]string{}
		for _, rule := range role.Rules {
			for _, res := range rule.Resources {
				names[res] = append(names[res], rule.ResourceNames...)
			}
		}
		if !slices.Equal(names["configmaps"], []string{coordinator.LegacyConfigMapName, apps.ConfigMapName, protocol.IssuerConfigMapName}) || !slices.Equal(names["leases"], []string{lease}) {
			t.Errorf("%s: Role %s names %v, want ConfigMaps %s, %s, %s and Lease %s", r.name, role.Name, names, coordinator.LegacyConfigMapName, apps.ConfigMapName, protocol.IssuerConfigMapName, lease)
		}
		// The agent: list and watch of the published issuer, in the
		// namespace its --coordinator-namespace names, and nothing else.
		ds, _ := workloads(t, r)
		agentRole := toTyped[rbacv1.Role](t, find(t, objs, "Role", ds.Name))
		wantAgent := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{protocol.IssuerConfigMapName}, Verbs: []string{"list", "watch"}}}
		if agentRole.Namespace != r.namespace || !reflect.DeepEqual(agentRole.Rules, wantAgent) {
			t.Errorf("%s: Role %s/%s rules %+v; want %+v in %s", r.name, agentRole.Namespace, agentRole.Name, agentRole.Rules, wantAgent, r.namespace)
		}
		ab := toTyped[rbacv1.RoleBinding](t, find(t, objs, "RoleBinding", ds.Name))
		if ab.RoleRef.Name != agentRole.Name || len(ab.Subjects) != 1 || ab.Subjects[0].Name != ds.Spec.Template.Spec.ServiceAccountName || ab.Subjects[0].Namespace != r.namespace {
			t.Errorf("%s: RoleBinding %s binds %+v to %+v; want the agent's service account bound to %s", r.name, ab.Name, ab.RoleRef, ab.Subjects, agentRole.Name)
		}
		if c := ds.Spec.Template.Spec.Containers[0]; c.Name != "scanner" || !slices.Contains(c.Args, "--coordinator-namespace=$(POD_NAMESPACE)") ||
			!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
			}) {
			t.Errorf("%s: the scanner (%s) does not watch the published issuer in its own namespace: args %q", r.name, c.Name, c.Args)
		}
		// kured's lock: list and watch of the one DaemonSet --kured-lock
		// names, in its namespace, and nothing else.
		var lock string
		for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
			if v, ok := strings.CutPrefix(a, "--kured-lock="); ok {
				lock = v
			}
		}
		ref, err := coordinator.ParseKuredLockRef(lock)
		if err != nil || ref.Name == "" {
			t.Errorf("%s: coordinator args %q: --kured-lock %q, want kured's DaemonSet (%v)", r.name, dep.Spec.Template.Spec.Containers[0].Args, lock, err)
			continue
		}
		kr := toTyped[rbacv1.Role](t, find(t, objs, "Role", dep.Name+"-kured-lock"))
		want := []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{ref.Name}, Verbs: []string{"list", "watch"}}}
		if kr.Namespace != ref.Namespace || !reflect.DeepEqual(kr.Rules, want) {
			t.Errorf("%s: Role %s/%s rules %+v; want %+v in %s", r.name, kr.Namespace, kr.Name, kr.Rules, want, ref.Namespace)
		}
		kb := toTyped[rbacv1.RoleBinding](t, find(t, objs, "RoleBinding", dep.Name+"-kured-lock"))
		if kb.Namespace != ref.Namespace || kb.RoleRef.Name != kr.Name || len(kb.Subjects) != 1 || kb.Subjects[0].Name != dep.Spec.Template.Spec.ServiceAccountName {
			t.Errorf("%s: RoleBinding %s/%s binds %+v to %+v; want the coordinator's service account bound to %s in %s", r.name, kb.Namespace, kb.Name, kb.RoleRef, kb.Subjects, kr.Name, ref.Namespace)
		}
	}
}

// TestNonResourceURLsAreTheOnesRead: the ClusterRoles grant get on OIDC
// discovery, which internal/issuer reads, and no other URL: not the signing
// keys (/openid/v1/jwks), as no signature is verified.
func TestNonResourceURLsAreTheOnesRead(t *testing.T) {
	for _, r := range renderings {
		roles := 0
		for _, o := range render(t, r) {
			if o.GetKind() != "ClusterRole" {
				continue
			}
			var urls []string
			for _, rule := range toTyped[rbacv1.ClusterRole](t, o).Rules {
				urls = append(urls, rule.NonResourceURLs...)
				if len(rule.NonResourceURLs) > 0 && !slices.Equal(rule.Verbs, []string{"get"}) {
					t.Errorf("%s: ClusterRole %s: verbs %v on %v, want get", r.name, o.GetName(), rule.Verbs, rule.NonResourceURLs)
				}
			}
			if len(urls) == 0 {
				continue
			}
			roles++
			if !slices.Equal(urls, []string{issuer.DiscoveryPath}) {
				t.Errorf("%s: ClusterRole %s grants %v, want only %s", r.name, o.GetName(), urls, issuer.DiscoveryPath)
			}
		}
		if roles != 3 {
			t.Errorf("%s: %d ClusterRoles grant OIDC discovery, want 3 (agent, coordinator, and the viewer's tokenroll status and preflight)", r.name, roles)
		}
	}
}

// TestGateAndStrategy: each installation sets the gate it is for.
func TestGateAndStrategy(t *testing.T) {
	want := map[string]string{
		"kustomize-base": "auto", "kustomize-kubeadm": "static-pods", "kustomize-openshift": "openshift",
		"kustomize-kubeadm-monitoring": "static-pods", "kustomize-kubeadm-audit": "static-pods", "helm-default": "auto", "helm-kubeadm": "static-pods", "helm-kubeadm-audit": "static-pods",
		"helm-openshift": "openshift", "helm-custom": "static-pods",
	}
	for _, r := range renderings {
		_, dep := workloads(t, r)
		if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--gate="+want[r.name]) {
			t.Errorf("%s: coordinator args %q, want --gate=%s", r.name, dep.Spec.Template.Spec.Containers[0].Args, want[r.name])
		}
	}
}

// TestCustomValuesBecomeFlags: each value of testdata/values-custom.yaml
// that has a flag reaches its container's arguments, so a value the
// templates forget fails here rather than being silently ignored.
func TestCustomValuesBecomeFlags(t *testing.T) {
	ds, dep := workloads(t, findRendering("helm-custom"))
	args := map[string][]string{"coordinator": dep.Spec.Template.Spec.Containers[0].Args}
	for _, c := range ds.Spec.Template.Spec.Containers {
		args[c.Name] = c.Args
	}
	want := map[string][]string{
		"scanner": {"--interval=1m", "--grace=10m", "--issuer-refresh-interval=5m", "--max-token-series=100",
			"--max-token-series-per-namespace=20"},
		"executor": {"--executor=command", "--dry-run", "--kubelet-unit=kubelet-custom.service", "--command-timeout=5m", "--max-request-age=30m"},
		"coordinator": {"--kured-lock=kube-system/ops-kured", "--deadline-max-unavailable=40%", "--max-kubelet-restarts=5%", "--lease-duration=30s", "--renew-deadline=20s", "--retry-period=5s",
			"--drain-timeout=15m", "--action-timeout=20m", "--verify-timeout=10m", "--settle=1m", "--trust-margin=2h",
			"--agent-wait=10m", "--issuer-refresh-interval=2m", "--gate-settle=5m", "--dry-run", "--auto=false", "--drain-force=true"},
	}
	for c, flags := range want {
		for _, f := range flags {
			if !slices.Contains(args[c], f) {
				t.Errorf("%s args %q: no %s", c, args[c], f)
			}
		}
	}
}
