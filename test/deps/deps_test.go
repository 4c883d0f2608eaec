// Package deps checks what each shipped binary links: the node agent runs
// privileged on every node, so it carries no test harness and no kubectl,
// and no product binary carries the sandbox or the testing package.
package deps

import (
	"errors"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/tokenroll/tokenroll"

// forbidden is, per binary, the import path prefixes none of its
// dependencies may have, and why.
var forbidden = map[string][]struct{ prefix, why string }{
	"tokenroll-agent": {
		{module + "/sandbox", "the test harness"},
		{module + "/coordinator", "the coordinator's code (and through it kubectl's drain)"},
		{"testing", "the testing package (a test helper or a fake linked by mistake)"},
		{"k8s.io/kubectl", "kubectl (the coordinator's drain)"},
		{"k8s.io/cli-runtime", "kubectl's cli-runtime"},
		{"sigs.k8s.io/kustomize", "kustomize (through kubectl)"},
		{"k8s.io/client-go/kubernetes/fake", "a fake clientset"},
		{"golang.org/x/net/trace", "grpc's tracing, left out by the Makefile's TAGS"},
		{"html/template", "html/template (through grpc's tracing), whose method lookup by name keeps every exported method in the binary"},
		// The agent runs on every node: these would load every API group's
		// types and clients into its memory (agent/nodeclient is why it
		// needs none of them).
		{"k8s.io/client-go/kubernetes/scheme", "client-go's scheme of every API group (agent/nodeclient registers the core group alone)"},
		{"k8s.io/client-go/informers", "the informer factory of every API group (the agent watches its Node with one informer)"},
		{"k8s.io/client-go/gentype", "client-go's generic typed client, which shares a package with its fakes"},
		{"k8s.io/client-go/testing", "client-go's test fixtures"},
	},
	"tokenroll-coordinator": {
		{module + "/sandbox", "the test harness"},
		{"testing", "the testing package"},
		{"k8s.io/client-go/kubernetes/fake", "a fake clientset"},
	},
	"tokenroll": {
		{module + "/sandbox", "the test harness"},
		{"testing", "the testing package"},
		{"k8s.io/client-go/kubernetes/fake", "a fake clientset"},
	},
}

// buildTags reads the build tags make build and the image use (the
// Makefile's TAGS; the Dockerfile must pass the same).
func buildTags(t *testing.T) string {
	t.Helper()
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TAGS\s*:=\s*(\S.*)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("the Makefile sets no TAGS")
	}
	tags := strings.TrimSpace(string(m[1]))
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), "go build -trimpath -tags "+tags+" ") {
		t.Errorf("the Dockerfile's go build does not pass -tags %s as the Makefile does", tags)
	}
	return tags
}

// deps lists every package the binary ./cmd/name links when built as make
// build builds it, standard library included.
func deps(t *testing.T, tags, name string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-tags", tags, module+"/cmd/"+name).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("go list -deps ./cmd/%s: %v\n%s", name, err, exit.Stderr)
		}
		t.Fatalf("go list -deps ./cmd/%s: %v", name, err)
	}
	return strings.Fields(string(out))
}

func matches(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

func TestBinariesLinkOnlyWhatTheyRun(t *testing.T) {
	tags := buildTags(t)
	for name, rules := range forbidden {
		t.Run(name, func(t *testing.T) {
			pkgs := deps(t, tags, name)
			// The list is the real one: the binary's own main and the
			// packages it is built from are in it.
			for _, want := range []string{module + "/cmd/" + name, module + "/internal/cli", "net/http"} {
				if !slices.Contains(pkgs, want) {
					t.Fatalf("go list -deps ./cmd/%s does not list %s: %d packages listed", name, want, len(pkgs))
				}
			}
			for _, r := range rules {
				for _, p := range pkgs {
					if matches(p, r.prefix) {
						t.Errorf("%s links %s: %s (go mod why -tags %s %s shows through what)", name, p, r.why, tags, p)
					}
				}
			}
		})
	}
}

// The sandbox links the harness the product binaries must not: if it did
// not, the checks above would prove nothing about how they are cut.
func TestSandboxLinksTheHarness(t *testing.T) {
	pkgs := deps(t, buildTags(t), "tokenroll-sandbox")
	for _, want := range []string{module + "/sandbox", module + "/sandbox/kubeletsim"} {
		if !slices.Contains(pkgs, want) {
			t.Errorf("tokenroll-sandbox does not link %s", want)
		}
	}
}

// go.mod and go.sum say what the code imports: a module imported directly
// is not marked // indirect, and nothing tidy would add or drop is missing
// or left over (go mod tidy -diff prints what it would change).
func TestGoModIsTidy(t *testing.T) {
	if testing.Short() {
		t.Skip("go mod tidy may download the test dependencies of every module")
	}
	// The diff goes to stdout; stderr says what the go command downloads
	// on a cold module cache, which is not a difference.
	cmd := exec.Command("go", "mod", "tidy", "-diff")
	cmd.Dir = "../.."
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || len(out) > 0 {
		t.Errorf("go mod tidy -diff: %v; run go mod tidy and commit go.mod and go.sum:\n%s%s", err, out, stderr.String())
	}
}
