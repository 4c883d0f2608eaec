// Package api_test proves the tokenroll.io/v1alpha1 CRDs against a real API
// server: they install and are served, the README's examples are accepted
// and defaulted, every invalid case is refused with its message, the status
// subresource and the shipped RBAC keep status to the coordinator, the
// printer columns come back through the Table API, and the generated
// clientset and informers can wait for a rollout's Complete condition.
// Tests that need the control plane skip under -short.
package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	pkgruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/tokenroll/tokenroll/coordinator"
	v1alpha1 "github.com/tokenroll/tokenroll/pkg/apis/tokenroll/v1alpha1"
	tokenrollac "github.com/tokenroll/tokenroll/pkg/generated/applyconfiguration/tokenroll/v1alpha1"
	"github.com/tokenroll/tokenroll/pkg/generated/clientset/versioned"
	"github.com/tokenroll/tokenroll/pkg/generated/informers/externalversions"
	"github.com/tokenroll/tokenroll/protocol"
	"github.com/tokenroll/tokenroll/sandbox/controlplane"
)

var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}()

func repoPath(rel string) string { return filepath.Join(repoRoot, filepath.FromSlash(rel)) }

// decodeFile reads the objects of a YAML stream.
func decodeFile(t testing.TB, rel string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(data)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return objs
}

func decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

const crdDir = "deploy/helm/tokenroll/crds"

// TestStrategyEnumIsTheCoordinators: the schema's strategies are the
// coordinator's registry, in its order, so a strategy added there and not
// here (or the reverse) fails.
func TestStrategyEnumIsTheCoordinators(t *testing.T) {
	for _, crd := range decodeFile(t, crdDir+"/tokenroll.io_rolloutpolicies.yaml") {
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		if len(versions) != 1 {
			t.Fatalf("%d versions, want v1alpha1 alone", len(versions))
		}
		enum, _, err := unstructured.NestedSlice(versions[0].(map[string]any), "schema", "openAPIV3Schema", "properties", "spec", "properties", "strategy", "enum")
		if err != nil || len(enum) == 0 {
			t.Fatalf("no strategy enum in the RolloutPolicy schema: %v", err)
		}
		var got []string
		for _, e := range enum {
			got = append(got, fmt.Sprint(e))
		}
		if want := coordinator.StrategyNames(); !slices.Equal(got, want) {
			t.Errorf("the schema's strategies are %v, the coordinator's %v", got, want)
		}
	}
	want := []string{string(v1alpha1.StrategyAuto), string(v1alpha1.StrategyKubeletRestart), string(v1alpha1.StrategyPodRestart), string(v1alpha1.StrategyReboot)}
	if !slices.Equal(want, coordinator.StrategyNames()) {
		t.Errorf("the API's Strategy constants are %v, the coordinator's strategies %v", want, coordinator.StrategyNames())
	}
}

// TestNodeStepEnumIsTheProtocols: a node result's step is the per-node
// protocol's step on the Node (or pending, before it has one), so a step
// renamed or added there fails here.
func TestNodeStepEnumIsTheProtocols(t *testing.T) {
	crd := decodeFile(t, crdDir+"/tokenroll.io_tokenrollouts.yaml")[0]
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	enum, _, err := unstructured.NestedSlice(versions[0].(map[string]any), "schema", "openAPIV3Schema", "properties", "status", "properties", "nodes", "items", "properties", "step", "enum")
	if err != nil || len(enum) == 0 {
		t.Fatalf("no step enum in the TokenRollout schema: %v", err)
	}
	var got []string
	for _, e := range enum {
		got = append(got, fmt.Sprint(e))
	}
	want := []string{"pending"}
	for _, s := range []protocol.Step{protocol.StepCordoned, protocol.StepActing, protocol.StepDone, protocol.StepHalted,
		protocol.StepUnresolved, protocol.StepExcluded, protocol.StepDryRun} {
		want = append(want, string(s))
	}
	if !slices.Equal(got, want) {
		t.Errorf("the schema's node steps are %v, the protocol's %v", got, want)
	}
}

// TestKustomizeCRDsAreTheChartsCRDs: kustomize cannot read the chart's
// crds/, so the base has a copy; it must be the same bytes.
func TestKustomizeCRDsAreTheChartsCRDs(t *testing.T) {
	files, err := filepath.Glob(repoPath(crdDir + "/*.yaml"))
	if err != nil || len(files) != 2 {
		t.Fatalf("CRDs in %s: %v %v, want two", crdDir, files, err)
	}
	for _, f := range files {
		a, _ := os.ReadFile(f)
		b, err := os.ReadFile(repoPath("deploy/kustomize/base/crds/" + filepath.Base(f)))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("deploy/kustomize/base/crds/%s differs from the chart's (%v): run hack/update-codegen.sh", filepath.Base(f), err)
		}
	}
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// env is the control plane with the CRDs installed, and the identities the
// tests act as.
type env struct {
	cp    *controlplane.ControlPlane
	admin versioned.Interface
	dyn   dynamic.Interface
	// editor is bound to ClusterRole tokenroll-editor, coordinator to the
	// coordinator's ClusterRole, both as shipped in the kustomize base.
	editor, coordinator versioned.Interface
	adminCfg            *rest.Config
}

func TestAPI(t *testing.T) {
	cp := controlplane.StartForTest(t, controlplane.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := &env{cp: cp, adminCfg: cp.AdminConfig()}
	e.admin = versioned.NewForConfigOrDie(e.adminCfg)
	e.dyn = dynamic.NewForConfigOrDie(e.adminCfg)

	t.Run("established", func(t *testing.T) { installCRDs(ctx, t, e) })
	if t.Failed() {
		return
	}
	e.bindRoles(ctx, t)

	t.Run("readme-examples", func(t *testing.T) { testREADMEExamples(ctx, t, e) })
	t.Run("defaults", func(t *testing.T) { testDefaults(ctx, t, e) })
	t.Run("invalid-policies", func(t *testing.T) { testInvalidPolicies(ctx, t, e) })
	t.Run("invalid-rollouts", func(t *testing.T) { testInvalidRollouts(ctx, t, e) })
	t.Run("transitions", func(t *testing.T) { testTransitions(ctx, t, e) })
	t.Run("status-is-the-coordinators", func(t *testing.T) { testStatusOwnership(ctx, t, e) })
	t.Run("server-side-apply", func(t *testing.T) { testServerSideApply(ctx, t, e) })
	t.Run("printer-columns", func(t *testing.T) { testPrinterColumns(ctx, t, e) })
	t.Run("wait-complete", func(t *testing.T) { testWaitComplete(ctx, t, e) })
}

// installCRDs creates the chart's CRDs and waits until they are
// Established and the API server serves the group.
func installCRDs(ctx context.Context, t *testing.T, e *env) {
	files, _ := filepath.Glob(repoPath(crdDir + "/*.yaml"))
	var names []string
	for _, f := range files {
		rel, _ := filepath.Rel(repoRoot, f)
		for _, o := range decodeFile(t, rel) {
			if _, err := e.dyn.Resource(crdResource).Create(ctx, o, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
				t.Fatalf("creating CRD %s from %s: %v", o.GetName(), rel, err)
			}
			names = append(names, o.GetName())
		}
	}
	if !slices.Equal(names, []string{"rolloutpolicies.tokenroll.io", "tokenrollouts.tokenroll.io"}) {
		t.Fatalf("CRDs %v, want rolloutpolicies and tokenrollouts", names)
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			crd, err := e.dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				// A CRD whose CEL the API server cannot compile or whose
				// cost is over budget is refused at creation; one whose
				// names clash is NamesAccepted=False here.
				if m["type"] == "NamesAccepted" && m["status"] == "False" {
					return false, fmt.Errorf("names not accepted: %v", m["message"])
				}
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
	}
	// Established precedes discovery by a moment: wait until a list works.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err1 := e.admin.TokenrollV1alpha1().TokenRollouts().List(ctx, metav1.ListOptions{})
		_, err2 := e.admin.TokenrollV1alpha1().RolloutPolicies().List(ctx, metav1.ListOptions{})
		return err1 == nil && err2 == nil, nil
	})
	if err != nil {
		t.Fatalf("the tokenroll.io resources are not served: %v", err)
	}
}

const (
	editorUser      = "alice"
	coordinatorUser = "tokenroll-coordinator-test"
)

// bindRoles creates the shipped ClusterRoles (tokenroll-editor from
// api-rbac.yaml, the coordinator's from coordinator-rbac.yaml) and binds
// each to a user of its own.
func (e *env) bindRoles(ctx context.Context, t *testing.T) {
	t.Helper()
	kube := kubernetes.NewForConfigOrDie(e.adminCfg)
	roles := map[string]string{
		"tokenroll-editor":      "deploy/kustomize/base/api-rbac.yaml",
		"tokenroll-coordinator": "deploy/kustomize/base/coordinator-rbac.yaml",
	}
	users := map[string]string{"tokenroll-editor": editorUser, "tokenroll-coordinator": coordinatorUser}
	for name, file := range roles {
		var role *rbacv1.ClusterRole
		for _, o := range decodeFile(t, file) {
			if o.GetKind() == "ClusterRole" && o.GetName() == name {
				role = &rbacv1.ClusterRole{}
				if err := pkgruntime.DefaultUnstructuredConverter.FromUnstructured(o.Object, role); err != nil {
					t.Fatal(err)
				}
			}
		}
		if role == nil {
			t.Fatalf("no ClusterRole %s in %s", name, file)
		}
		if _, err := kube.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: users[name]}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		user string
		into *versioned.Interface
	}{{editorUser, &e.editor}, {coordinatorUser, &e.coordinator}} {
		cfg, err := e.cp.UserConfig(c.user)
		if err != nil {
			t.Fatal(err)
		}
		*c.into = versioned.NewForConfigOrDie(cfg)
	}
	// RBAC takes effect once the authorizer's informers have the binding.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err1 := e.editor.TokenrollV1alpha1().TokenRollouts().List(ctx, metav1.ListOptions{})
		_, err2 := e.coordinator.TokenrollV1alpha1().TokenRollouts().List(ctx, metav1.ListOptions{})
		return err1 == nil && err2 == nil, nil
	})
	if err != nil {
		t.Fatalf("the bindings never took effect: %v", err)
	}
}

// readmeExamples are the YAML blocks of the README's API section.
func readmeExamples(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(repoPath("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## The tokenroll.io API (v1alpha1)\n")
	if !ok {
		t.Fatal("README.md has no section \"The tokenroll.io API (v1alpha1)\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var objs []*unstructured.Unstructured
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		o, err := decode([]byte(m[1]))
		if err != nil {
			t.Fatalf("a YAML example in the README: %v\n%s", err, m[1])
		}
		objs = append(objs, o...)
	}
	return objs
}

var (
	policies = schema.GroupVersionResource{Group: v1alpha1.GroupName, Version: "v1alpha1", Resource: "rolloutpolicies"}
	rollouts = schema.GroupVersionResource{Group: v1alpha1.GroupName, Version: "v1alpha1", Resource: "tokenrollouts"}
)

// testREADMEExamples: every example in the README is accepted as written
// (strict field validation: a misspelt field fails) and reads back through
// the typed client as written.
func testREADMEExamples(ctx context.Context, t *testing.T, e *env) {
	objs := readmeExamples(t)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	if kinds["RolloutPolicy"] == 0 || kinds["TokenRollout"] == 0 {
		t.Fatalf("the README's examples are %v; want a RolloutPolicy and a TokenRollout", kinds)
	}
	for _, o := range objs {
		gvr := policies
		if o.GetKind() == "TokenRollout" {
			gvr = rollouts
		}
		if _, err := e.dyn.Resource(gvr).Create(ctx, o, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Errorf("the README's %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	p, err := e.admin.TokenrollV1alpha1().RolloutPolicies().Get(ctx, "workers", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.String() != "10%" || len(p.Spec.Windows) != 1 || p.Spec.Windows[0].TimeZone != "Europe/Paris" ||
		p.Spec.Blockers == nil || p.Spec.Blockers.Alerts == nil || !slices.Equal(p.Spec.Blockers.Alerts.Ignore, []string{"Tokenroll.*"}) ||
		p.Spec.Drain == nil || p.Spec.Drain.Timeout == nil || p.Spec.Drain.Timeout.Duration != 15*time.Minute {
		t.Errorf("the README's policy reads back as %+v", p.Spec)
	}
}

// testDefaults: what an almost empty object becomes.
func testDefaults(ctx context.Context, t *testing.T, e *env) {
	p, err := e.admin.TokenrollV1alpha1().RolloutPolicies().Create(ctx, &v1alpha1.RolloutPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "defaults"},
		Spec: v1alpha1.RolloutPolicySpec{
			Windows:       []v1alpha1.MaintenanceWindow{{Start: "01:00", End: "05:00"}},
			Zones:         &v1alpha1.ZonePolicy{},
			Drain:         &v1alpha1.DrainOptions{},
			Blockers:      &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "http://prometheus:9090", Matchers: []v1alpha1.AlertMatcher{{Label: "severity", Value: "critical"}}}},
			Notifications: []v1alpha1.Notification{{Name: "hook", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "url"}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := p.Spec
	checks := []struct {
		what      string
		got, want any
	}{
		// No default: an omitted strategy or drain timeout is the
		// coordinator's flag.
		{"strategy", s.Strategy, v1alpha1.Strategy("")},
		{"maxUnavailable", s.MaxUnavailable, ptr.To(intstr.FromInt32(1))},
		{"a window's timeZone", s.Windows[0].TimeZone, "UTC"},
		{"zones.topologyKey", s.Zones.TopologyKey, "topology.kubernetes.io/zone"},
		{"zones.order", s.Zones.Order, v1alpha1.ZoneOrderSequential},
		{"drain.timeout", s.Drain.Timeout, (*metav1.Duration)(nil)},
		{"alerts.ignore", s.Blockers.Alerts.Ignore, []string{"Tokenroll.*"}},
		{"a matcher's operator", s.Blockers.Alerts.Matchers[0].Operator, v1alpha1.MatchOperator("=")},
		{"a notification's format", s.Notifications[0].Format, v1alpha1.NotificationJSON},
		{"deadlineMaxUnavailable", s.DeadlineMaxUnavailable, (*intstr.IntOrString)(nil)},
	}
	for _, c := range checks {
		if fmt.Sprintf("%#v", c.got) != fmt.Sprintf("%#v", c.want) {
			t.Errorf("%s defaults to %#v, want %#v", c.what, c.got, c.want)
		}
	}
	r, err := e.admin.TokenrollV1alpha1().TokenRollouts().Create(ctx, &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Spec.State != v1alpha1.StateRunning || r.Spec.Strategy != "" {
		t.Errorf("an empty rollout's spec is %+v, want state Running and no strategy override", r.Spec)
	}
}

func policy(name string, mutate func(*v1alpha1.RolloutPolicySpec)) *v1alpha1.RolloutPolicy {
	p := &v1alpha1.RolloutPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	mutate(&p.Spec)
	return p
}

func window(start, end, tz string) v1alpha1.MaintenanceWindow {
	return v1alpha1.MaintenanceWindow{Start: start, End: end, TimeZone: tz}
}

func intOrString(s string) *intstr.IntOrString {
	v := intstr.Parse(s)
	return &v
}

// expectInvalid checks that err is the API server's Invalid refusal
// containing want.
func expectInvalid(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: accepted, want it refused with %q", what, want)
	case !apierrors.IsInvalid(err):
		t.Errorf("%s: %v, want an Invalid refusal with %q", what, err, want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: refused with\n  %v\nwant the message to contain %q", what, err, want)
	}
}

// testInvalidPolicies: each bad policy is refused, saying why.
func testInvalidPolicies(ctx context.Context, t *testing.T, e *env) {
	tooMany := make([]v1alpha1.MaintenanceWindow, 17)
	for i := range tooMany {
		tooMany[i] = window("01:00", "02:00", "UTC")
	}
	cases := []struct {
		name   string
		mutate func(*v1alpha1.RolloutPolicySpec)
		want   string
	}{
		{"max-unavailable-zero", func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = intOrString("0") }, "maxUnavailable must be at least 1 node"},
		{"max-unavailable-negative", func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = intOrString("-2") }, "maxUnavailable must be at least 1 node"},
		{"max-unavailable-0-percent", func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = intOrString("0%") }, "percentage from 1% to 100%"},
		{"max-unavailable-150-percent", func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = intOrString("150%") }, "percentage from 1% to 100%"},
		{"max-unavailable-words", func(s *v1alpha1.RolloutPolicySpec) { s.MaxUnavailable = intOrString("ten") }, "percentage from 1% to 100%"},
		{"deadline-ceiling-below", func(s *v1alpha1.RolloutPolicySpec) {
			s.MaxUnavailable, s.DeadlineMaxUnavailable = intOrString("3"), intOrString("2")
		}, "it must be at least maxUnavailable"},
		{"deadline-ceiling-101-percent", func(s *v1alpha1.RolloutPolicySpec) { s.DeadlineMaxUnavailable = intOrString("101%") }, "deadlineMaxUnavailable as a string must be a percentage"},
		{"strategy-unknown", func(s *v1alpha1.RolloutPolicySpec) { s.Strategy = "drain" }, `Unsupported value: "drain"`},
		{"window-start-25h", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("25:00", "06:00", "UTC")}
		}, "start must be a time of day HH:MM"},
		{"window-start-no-zero", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("7:00", "09:00", "UTC")}
		}, "start must be a time of day HH:MM"},
		{"window-end-60-minutes", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("07:00", "09:60", "UTC")}
		}, "end must be a time of day HH:MM"},
		{"window-end-is-start", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("22:00", "22:00", "UTC")}
		}, "a window's end must differ from its start"},
		{"window-time-zone", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("22:00", "06:00", "Europe/Not a zone")}
		}, "timeZone must be an IANA time zone name"},
		{"window-time-zone-too-long", func(s *v1alpha1.RolloutPolicySpec) {
			s.Windows = []v1alpha1.MaintenanceWindow{window("22:00", "06:00", "Europe/"+strings.Repeat("x", 60))}
		}, "Too long"},
		{"window-day", func(s *v1alpha1.RolloutPolicySpec) {
			w := window("22:00", "06:00", "UTC")
			w.Days = []v1alpha1.Weekday{"Funday"}
			s.Windows = []v1alpha1.MaintenanceWindow{w}
		}, `Unsupported value: "Funday"`},
		{"window-day-twice", func(s *v1alpha1.RolloutPolicySpec) {
			w := window("22:00", "06:00", "UTC")
			w.Days = []v1alpha1.Weekday{"Monday", "Monday"}
			s.Windows = []v1alpha1.MaintenanceWindow{w}
		}, `Duplicate value: "Monday"`},
		{"windows-too-many", func(s *v1alpha1.RolloutPolicySpec) { s.Windows = tooMany }, "must have at most 16 items"},
		{"zone-limit-zero", func(s *v1alpha1.RolloutPolicySpec) { s.Zones = &v1alpha1.ZonePolicy{MaxUnavailable: ptr.To[int32](0)} }, "zones.maxUnavailable must be at least 1 node per zone; omit it for no limit per zone"},
		{"zone-topology-key", func(s *v1alpha1.RolloutPolicySpec) { s.Zones = &v1alpha1.ZonePolicy{TopologyKey: "not a key"} }, "topologyKey must be a label key"},
		{"zone-order", func(s *v1alpha1.RolloutPolicySpec) { s.Zones = &v1alpha1.ZonePolicy{Order: "Random"} }, `Unsupported value: "Random"`},
		{"prometheus-url-scheme", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "ftp://prometheus:9090"}}
		}, "prometheusURL must be an http or https URL"},
		{"prometheus-url-not-a-url", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "prometheus"}}
		}, "prometheusURL must be an http or https URL"},
		{"matcher-label", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "https://p", Matchers: []v1alpha1.AlertMatcher{{Label: "bad-label", Value: "x"}}}}
		}, "label must be a Prometheus label name"},
		{"matcher-operator", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "https://p", Matchers: []v1alpha1.AlertMatcher{{Label: "a", Operator: "~", Value: "x"}}}}
		}, `Unsupported value: "~"`},
		{"alert-name-too-long", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "https://p", AlertNames: []string{strings.Repeat("A", 257)}}}
		}, "Too long"},
		{"secret-name", func(s *v1alpha1.RolloutPolicySpec) {
			s.Blockers = &v1alpha1.Blockers{Alerts: &v1alpha1.AlertBlocker{PrometheusURL: "https://p", BearerTokenSecretRef: &v1alpha1.SecretKeyRef{Name: "Bad_Name", Key: "token"}}}
		}, "name must be a Secret's name"},
		{"secret-key", func(s *v1alpha1.RolloutPolicySpec) {
			s.Notifications = []v1alpha1.Notification{{Name: "hook", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "a/b"}}}
		}, "key must be a Secret data key"},
		{"notification-twice", func(s *v1alpha1.RolloutPolicySpec) {
			n := v1alpha1.Notification{Name: "hook", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "url"}}
			s.Notifications = []v1alpha1.Notification{n, n}
		}, `spec.notifications[1]: Duplicate value: {"name":"hook"}`},
		{"notification-event", func(s *v1alpha1.RolloutPolicySpec) {
			s.Notifications = []v1alpha1.Notification{{Name: "hook", URLSecretRef: v1alpha1.SecretKeyRef{Name: "hooks", Key: "url"}, Events: []v1alpha1.NotificationEvent{"NodeStarted"}}}
		}, `Unsupported value: "NodeStarted"`},
		{"health-gate-empty", func(s *v1alpha1.RolloutPolicySpec) { s.HealthGate = &v1alpha1.HealthGate{} },
			"a health gate must wait for something: set evictedPodsReady, nodesReady or both"},
		{"grace-period-negative", func(s *v1alpha1.RolloutPolicySpec) {
			s.Drain = &v1alpha1.DrainOptions{GracePeriodSeconds: ptr.To[int64](-1)}
		}, "should be greater than or equal to 0"},
	}
	for _, c := range cases {
		_, err := e.admin.TokenrollV1alpha1().RolloutPolicies().Create(ctx, policy("invalid-"+c.name, c.mutate), metav1.CreateOptions{})
		expectInvalid(t, c.name, err, c.want)
	}
	// Messages in the form the API server sends them, for one of them: the
	// field path and the message.
	_, err := e.admin.TokenrollV1alpha1().RolloutPolicies().Create(ctx, policy("invalid-path", func(s *v1alpha1.RolloutPolicySpec) {
		s.Windows = []v1alpha1.MaintenanceWindow{window("01:00", "02:00", "UTC"), window("22:00", "6:00", "UTC")}
	}), metav1.CreateOptions{})
	expectInvalid(t, "a bad second window", err, "spec.windows[1].end: Invalid value")
	// The drain timeout is a duration string.
	_, err = e.dyn.Resource(policies).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "tokenroll.io/v1alpha1", "kind": "RolloutPolicy", "metadata": map[string]any{"name": "invalid-timeout"},
		"spec": map[string]any{"drain": map[string]any{"timeout": "soon"}},
	}}, metav1.CreateOptions{})
	expectInvalid(t, "drain.timeout soon", err, "spec.drain.timeout")
}

func rollout(name string, spec v1alpha1.TokenRolloutSpec) *v1alpha1.TokenRollout {
	return &v1alpha1.TokenRollout{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

// testInvalidRollouts: a bad rollout is refused at creation.
func testInvalidRollouts(ctx context.Context, t *testing.T, e *env) {
	cases := []struct {
		name string
		spec v1alpha1.TokenRolloutSpec
		want string
	}{
		{"state", v1alpha1.TokenRolloutSpec{State: "Stopped"}, `Unsupported value: "Stopped"`},
		{"strategy", v1alpha1.TokenRolloutSpec{Strategy: "restart-everything"}, `Unsupported value: "restart-everything"`},
		{"policy-name", v1alpha1.TokenRolloutSpec{PolicyName: "Workers_1"}, "policyName must be a RolloutPolicy's name"},
		{"node-name-too-long", v1alpha1.TokenRolloutSpec{NodeNames: []string{strings.Repeat("n", 254)}}, "Too long"},
		{"node-named-twice", v1alpha1.TokenRolloutSpec{NodeNames: []string{"a", "a"}}, `Duplicate value: "a"`},
	}
	for _, c := range cases {
		_, err := e.admin.TokenrollV1alpha1().TokenRollouts().Create(ctx, rollout("invalid-"+c.name, c.spec), metav1.CreateOptions{})
		expectInvalid(t, c.name, err, c.want)
	}
}

// testTransitions: what may change in a rollout's spec, and when.
func testTransitions(ctx context.Context, t *testing.T, e *env) {
	ro := e.editor.TokenrollV1alpha1().TokenRollouts()
	setStatus := func(name string, f func(*v1alpha1.TokenRolloutStatus)) {
		t.Helper()
		r, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f(&r.Status)
		if _, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().UpdateStatus(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("the coordinator writing %s's status: %v", name, err)
		}
	}
	update := func(name string, f func(*v1alpha1.TokenRolloutSpec)) error {
		r, err := ro.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		f(&r.Spec)
		_, err = ro.Update(ctx, r, metav1.UpdateOptions{})
		return err
	}

	// Created paused, it has not started: anything may change.
	if _, err := ro.Create(ctx, rollout("staged", v1alpha1.TokenRolloutSpec{State: v1alpha1.StatePaused, Strategy: v1alpha1.StrategyKubeletRestart, NodeNames: []string{"a"}}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := update("staged", func(s *v1alpha1.TokenRolloutSpec) {
		s.Strategy, s.NodeNames, s.PolicyName, s.DryRun = v1alpha1.StrategyReboot, []string{"a", "b"}, "workers", true
	}); err != nil {
		t.Errorf("changing a rollout that has not started: %v", err)
	}
	if err := update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.State = v1alpha1.StateRunning }); err != nil {
		t.Errorf("starting a paused rollout: %v", err)
	}

	// Once started, what it covers and how is fixed; pause and resume are
	// not.
	setStatus("staged", func(s *v1alpha1.TokenRolloutStatus) {
		s.Phase, s.StartTime = v1alpha1.PhaseRunning, ptr.To(metav1.Now())
	})
	expectInvalid(t, "changing the strategy once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.Strategy = v1alpha1.StrategyPodRestart }), "spec.strategy cannot change once the rollout has started")
	expectInvalid(t, "dropping the strategy override once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.Strategy = "" }), "spec.strategy cannot change once the rollout has started")
	expectInvalid(t, "adding a node once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.NodeNames = append(s.NodeNames, "c") }), "spec.nodeNames and spec.nodeSelector cannot change")
	expectInvalid(t, "adding a node selector once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}
		}), "spec.nodeNames and spec.nodeSelector cannot change")
	expectInvalid(t, "changing the policy once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.PolicyName = "other" }), "spec.policyName cannot change once the rollout has started")
	expectInvalid(t, "turning off the dry run once started",
		update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.DryRun = false }), "spec.dryRun cannot change once the rollout has started")
	for _, st := range []v1alpha1.DesiredState{v1alpha1.StatePaused, v1alpha1.StateRunning} {
		if err := update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.State = st }); err != nil {
			t.Errorf("setting a started rollout's state to %s: %v", st, err)
		}
	}

	// Cancelled stays cancelled.
	if err := update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.State = v1alpha1.StateCancelled }); err != nil {
		t.Fatalf("cancelling a running rollout: %v", err)
	}
	for _, st := range []v1alpha1.DesiredState{v1alpha1.StateRunning, v1alpha1.StatePaused} {
		expectInvalid(t, "setting a cancelled rollout "+string(st),
			update("staged", func(s *v1alpha1.TokenRolloutSpec) { s.State = st }), "a cancelled rollout cannot be resumed or paused")
	}

	// Over is over: a complete rollout cannot be paused or cancelled.
	if _, err := ro.Create(ctx, rollout("finished", v1alpha1.TokenRolloutSpec{}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setStatus("finished", func(s *v1alpha1.TokenRolloutStatus) {
		s.Phase, s.StartTime, s.CompletionTime = v1alpha1.PhaseComplete, ptr.To(metav1.Now()), ptr.To(metav1.Now())
	})
	expectInvalid(t, "pausing a complete rollout",
		update("finished", func(s *v1alpha1.TokenRolloutSpec) { s.State = v1alpha1.StatePaused }), "spec.state cannot change once the rollout is over")
	// Labels and annotations are not the spec: still free.
	r, err := ro.Get(ctx, "finished", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Labels = map[string]string{"kept": "yes"}
	if _, err := ro.Update(ctx, r, metav1.UpdateOptions{}); err != nil {
		t.Errorf("labelling a complete rollout: %v", err)
	}
}

func expectForbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: %v, want RBAC's refusal", what, err)
	}
}

// testStatusOwnership: people write the spec, the coordinator the status,
// through the shipped ClusterRoles and the status subresource.
func testStatusOwnership(ctx context.Context, t *testing.T, e *env) {
	editor := e.editor.TokenrollV1alpha1().TokenRollouts()
	coord := e.coordinator.TokenrollV1alpha1().TokenRollouts()

	// A status sent with the object is dropped: the subresource alone sets
	// it.
	forged := rollout("owned", v1alpha1.TokenRolloutSpec{})
	forged.Status = v1alpha1.TokenRolloutStatus{Phase: v1alpha1.PhaseComplete, Conditions: []metav1.Condition{{
		Type: v1alpha1.ConditionComplete, Status: metav1.ConditionTrue, Reason: "Forged", Message: "by hand", LastTransitionTime: metav1.Now()}}}
	r, err := editor.Create(ctx, forged, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the editor creating a rollout: %v", err)
	}
	if r.Status.Phase != "" || len(r.Status.Conditions) != 0 {
		t.Errorf("a status sent on create was kept: %+v", r.Status)
	}
	r.Status = forged.Status
	r, err = editor.Update(ctx, r, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("the editor updating a rollout: %v", err)
	}
	if r.Status.Phase != "" {
		t.Errorf("a status sent on update was kept: %+v", r.Status)
	}
	r.Status = forged.Status
	_, err = editor.UpdateStatus(ctx, r, metav1.UpdateOptions{})
	expectForbidden(t, "the editor updating a rollout's status", err)
	_, err = editor.Patch(ctx, "owned", types.MergePatchType, []byte(`{"status":{"phase":"Complete"}}`), metav1.PatchOptions{}, "status")
	expectForbidden(t, "the editor patching a rollout's status", err)
	_, err = e.editor.TokenrollV1alpha1().RolloutPolicies().Patch(ctx, "workers", types.MergePatchType, []byte(`{"status":{"nodes":3}}`), metav1.PatchOptions{}, "status")
	expectForbidden(t, "the editor patching a policy's status", err)

	// The coordinator writes status, and nothing else.
	r, err = coord.Get(ctx, "owned", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Status = v1alpha1.TokenRolloutStatus{ObservedGeneration: r.Generation, Phase: v1alpha1.PhaseRunning, StartTime: ptr.To(metav1.Now())}
	r.Spec.State = v1alpha1.StateCancelled
	r, err = coord.UpdateStatus(ctx, r, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("the coordinator writing a rollout's status: %v", err)
	}
	if r.Status.Phase != v1alpha1.PhaseRunning || r.Spec.State != v1alpha1.StateRunning {
		t.Errorf("after a status update: phase %q, state %q; want the status written and the spec untouched", r.Status.Phase, r.Spec.State)
	}
	if _, err := e.coordinator.TokenrollV1alpha1().RolloutPolicies().Patch(ctx, "workers", types.MergePatchType, []byte(`{"status":{"nodes":3}}`), metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("the coordinator patching a policy's status: %v", err)
	}
	r.Spec.State = v1alpha1.StatePaused
	_, err = coord.Update(ctx, r, metav1.UpdateOptions{})
	expectForbidden(t, "the coordinator updating a rollout's spec", err)
	_, err = coord.Patch(ctx, "owned", types.MergePatchType, []byte(`{"spec":{"state":"Paused"}}`), metav1.PatchOptions{})
	expectForbidden(t, "the coordinator patching a rollout's spec", err)
	// It creates the TokenRollout of a rollout it plans by itself and
	// deletes finished ones beyond its history; neither reaches another
	// rollout's spec.
	if _, err := coord.Create(ctx, rollout("by-coordinator", v1alpha1.TokenRolloutSpec{}), metav1.CreateOptions{}); err != nil {
		t.Errorf("the coordinator creating a rollout it plans: %v", err)
	}
	if err := coord.Delete(ctx, "by-coordinator", metav1.DeleteOptions{}); err != nil {
		t.Errorf("the coordinator deleting a rollout from its history: %v", err)
	}
	_, err = e.coordinator.TokenrollV1alpha1().RolloutPolicies().Patch(ctx, "workers", types.MergePatchType, []byte(`{"spec":{"dryRun":true}}`), metav1.PatchOptions{})
	expectForbidden(t, "the coordinator changing a policy", err)
}

// testServerSideApply: the generated apply configurations work for both
// writers, each owning its half: the editor's apply of the spec leaves the
// coordinator's status alone, and the reverse.
func testServerSideApply(ctx context.Context, t *testing.T, e *env) {
	spec := tokenrollac.TokenRollout("applied").WithSpec(tokenrollac.TokenRolloutSpec().
		WithState(v1alpha1.StatePaused).WithStrategy(v1alpha1.StrategyPodRestart).WithNodeNames("node-1", "node-2"))
	if _, err := e.editor.TokenrollV1alpha1().TokenRollouts().Apply(ctx, spec, metav1.ApplyOptions{FieldManager: "tokenroll-cli"}); err != nil {
		t.Fatalf("the editor applying a rollout: %v", err)
	}
	status := tokenrollac.TokenRollout("applied").WithStatus(tokenrollac.TokenRolloutStatus().
		WithPhase(v1alpha1.PhasePaused).WithSummary(tokenrollac.NodeSummary().WithTotal(2).WithPending(2)).
		WithNodes(tokenrollac.NodeResult().WithName("node-1").WithStep("pending"), tokenrollac.NodeResult().WithName("node-2").WithStep("pending")))
	if _, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().ApplyStatus(ctx, status, metav1.ApplyOptions{FieldManager: "tokenroll-coordinator"}); err != nil {
		t.Fatalf("the coordinator applying a rollout's status: %v", err)
	}
	_, err := e.editor.TokenrollV1alpha1().TokenRollouts().ApplyStatus(ctx, status, metav1.ApplyOptions{FieldManager: "tokenroll-cli", Force: true})
	expectForbidden(t, "the editor applying a rollout's status", err)
	spec.Spec.WithState(v1alpha1.StateRunning)
	r, err := e.editor.TokenrollV1alpha1().TokenRollouts().Apply(ctx, spec, metav1.ApplyOptions{FieldManager: "tokenroll-cli"})
	if err != nil {
		t.Fatalf("the editor resuming a rollout by apply: %v", err)
	}
	if r.Spec.State != v1alpha1.StateRunning || r.Status.Phase != v1alpha1.PhasePaused || r.Status.Summary.Total != 2 || len(r.Status.Nodes) != 2 {
		t.Errorf("after both applies: spec %+v, status %+v", r.Spec, r.Status)
	}
}

// table is GET on a resource with the Table API's Accept header, what
// `kubectl get` sends.
func table(ctx context.Context, t *testing.T, e *env, resource, name string) *metav1.Table {
	t.Helper()
	data, err := e.admin.TokenrollV1alpha1().RESTClient().Get().Resource(resource).Name(name).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
	if err != nil {
		t.Fatalf("GET %s/%s as a Table: %v", resource, name, err)
	}
	var tab metav1.Table
	if err := json.Unmarshal(data, &tab); err != nil {
		t.Fatal(err)
	}
	if tab.Kind != "Table" {
		t.Fatalf("GET %s/%s as a Table returned a %s", resource, name, tab.Kind)
	}
	return &tab
}

// cells maps a table's column names to the one row's cells.
func cells(t *testing.T, tab *metav1.Table) (names []string, wide []string, row map[string]any) {
	t.Helper()
	if len(tab.Rows) != 1 {
		t.Fatalf("%d rows, want 1", len(tab.Rows))
	}
	row = map[string]any{}
	for i, c := range tab.ColumnDefinitions {
		if c.Priority == 0 {
			names = append(names, c.Name)
		} else {
			wide = append(wide, c.Name)
		}
		row[c.Name] = tab.Rows[0].Cells[i]
	}
	return names, wide, row
}

// testPrinterColumns: what `kubectl get` shows, as the API server renders
// it.
func testPrinterColumns(ctx context.Context, t *testing.T, e *env) {
	if _, err := e.editor.TokenrollV1alpha1().TokenRollouts().Create(ctx, rollout("shown", v1alpha1.TokenRolloutSpec{PolicyName: "workers"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().Get(ctx, "shown", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Status = v1alpha1.TokenRolloutStatus{
		Phase: v1alpha1.PhaseHalted, Strategy: v1alpha1.StrategyReboot, StartTime: ptr.To(metav1.Now()),
		Waiting: &v1alpha1.RolloutWait{Reason: coordinator.WaitGateClosed, Message: "the revision gate is closed", Since: metav1.Now()},
		Trigger: "issuer",
		Summary: v1alpha1.NodeSummary{Total: 5, Done: 2, Halted: 1, Pending: 2},
		Conditions: []metav1.Condition{
			{Type: v1alpha1.ConditionHalted, Status: metav1.ConditionTrue, Reason: coordinator.HaltDrainTimeout, Message: "node-3: drain did not finish in 10m", LastTransitionTime: metav1.Now()},
			{Type: v1alpha1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: "Halted", Message: "halted on node-3", LastTransitionTime: metav1.Now()},
		},
		Nodes: []v1alpha1.NodeResult{{Name: "node-3", Step: "halted", Reason: coordinator.HaltDrainTimeout, Action: "tokenroll rollout resume"}},
	}
	if _, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().UpdateStatus(ctx, r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	names, wide, row := cells(t, table(ctx, t, e, "tokenrollouts", "shown"))
	if want := []string{"Name", "Phase", "Strategy", "Policy", "Done", "Nodes", "Age"}; !slices.Equal(names, want) {
		t.Errorf("kubectl get tokenrollouts columns %v, want %v", names, want)
	}
	if want := []string{"Reason", "Waiting", "Trigger"}; !slices.Equal(wide, want) {
		t.Errorf("kubectl get tokenrollouts -o wide adds %v, want %v", wide, want)
	}
	for col, want := range map[string]any{"Name": "shown", "Phase": "Halted", "Strategy": "reboot", "Policy": "workers", "Done": float64(2), "Nodes": float64(5),
		"Reason": coordinator.HaltDrainTimeout, "Waiting": coordinator.WaitGateClosed, "Trigger": "issuer"} {
		if row[col] != want {
			t.Errorf("tokenrollout column %s = %#v, want %#v", col, row[col], want)
		}
	}

	if _, err := e.coordinator.TokenrollV1alpha1().RolloutPolicies().Patch(ctx, "workers", types.MergePatchType,
		[]byte(`{"status":{"nodes":12,"nextWindowStart":"2026-12-05T21:00:00Z","conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":"","lastTransitionTime":"2026-12-01T00:00:00Z"}]}}`),
		metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	names, _, row = cells(t, table(ctx, t, e, "rolloutpolicies", "workers"))
	if want := []string{"Name", "Strategy", "Max-Unavailable", "Nodes", "Dry-Run", "Accepted", "Next-Window", "Age"}; !slices.Equal(names, want) {
		t.Errorf("kubectl get rolloutpolicies columns %v, want %v", names, want)
	}
	for col, want := range map[string]any{"Name": "workers", "Strategy": "auto", "Max-Unavailable": "10%", "Nodes": float64(12), "Accepted": "True",
		// A time to come, as a time: kubectl shows a date column as an age,
		// and a future one as <invalid>.
		"Next-Window": "2026-12-05T21:00:00Z"} {
		if row[col] != want {
			t.Errorf("rolloutpolicy column %s = %#v, want %#v", col, row[col], want)
		}
	}
}

// testWaitComplete is `kubectl wait --for=condition=Complete
// tokenrollout/NAME` with the generated informers: it returns once the
// coordinator reports Complete, and not before.
func testWaitComplete(ctx context.Context, t *testing.T, e *env) {
	if _, err := e.editor.TokenrollV1alpha1().TokenRollouts().Create(ctx, rollout("awaited", v1alpha1.TokenRolloutSpec{}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The editor's identity waits, as a person would.
	type result struct {
		r   *v1alpha1.TokenRollout
		err error
	}
	done := make(chan result, 1)
	synced := make(chan struct{})
	go func() {
		r, err := waitForCondition(ctx, e.editor, "awaited", v1alpha1.ConditionComplete, synced)
		done <- result{r, err}
	}()
	select {
	case <-synced:
	case <-ctx.Done():
		t.Fatal("the informer never synced")
	}
	setCondition := func(typ string, status metav1.ConditionStatus, phase v1alpha1.RolloutPhase) {
		t.Helper()
		r, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().Get(ctx, "awaited", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.Status.Phase = phase
		meta.SetStatusCondition(&r.Status.Conditions, metav1.Condition{Type: typ, Status: status, Reason: string(phase), Message: "test", ObservedGeneration: r.Generation})
		if _, err := e.coordinator.TokenrollV1alpha1().TokenRollouts().UpdateStatus(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Progressing, then Complete False, then Complete True: the informer
	// delivers them in order, so the object that ends the wait shows
	// whether an earlier one did.
	setCondition(v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.PhaseRunning)
	setCondition(v1alpha1.ConditionComplete, metav1.ConditionFalse, v1alpha1.PhaseHalted)
	setCondition(v1alpha1.ConditionComplete, metav1.ConditionTrue, v1alpha1.PhaseComplete)
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.r.Status.Phase != v1alpha1.PhaseComplete {
			t.Errorf("the wait ended on the rollout in phase %s, before Complete was True", res.r.Status.Phase)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the wait did not see Complete=True")
	}
}

// waitForCondition watches one rollout through a shared informer limited to
// its name until condition typ is True (for the rollout's current
// generation), as kubectl wait does. synced is closed once the informer has
// listed.
func waitForCondition(ctx context.Context, client versioned.Interface, name, typ string, synced chan<- struct{}) (*v1alpha1.TokenRollout, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	factory := externalversions.NewSharedInformerFactoryWithOptions(client, 0,
		externalversions.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name }))
	inf := factory.Tokenroll().V1alpha1().TokenRollouts()
	// The handler runs on one goroutine: found needs no lock until met is
	// closed, which publishes it.
	met := make(chan struct{})
	var found *v1alpha1.TokenRollout
	check := func(obj any) {
		r, ok := obj.(*v1alpha1.TokenRollout)
		if !ok || found != nil {
			return
		}
		c := meta.FindStatusCondition(r.Status.Conditions, typ)
		if c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration >= r.Generation {
			found = r.DeepCopy()
			close(met)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    check,
		UpdateFunc: func(_, obj any) { check(obj) },
	}); err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	defer func() { cancel(); factory.Shutdown() }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil, fmt.Errorf("tokenrollout %s: the informer did not sync", name)
	}
	close(synced)
	select {
	case <-met:
		return found, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("tokenrollout %s: condition %s not True: %w", name, typ, ctx.Err())
	}
}
