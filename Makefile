# tokenroll — build, test and run locally. `make help` lists the targets.

GO        ?= go
BIN       ?= bin
IMAGE     ?= ghcr.io/tokenroll/tokenroll:$(VERSION)
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
ARGS      ?=

# One cache outside the work tree for the control-plane binaries and tools,
# shared by build.sh, the tests and the sandbox.
export TOKENROLL_CACHE_DIR ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/tokenroll

GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(TOKENROLL_CACHE_DIR)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)

# grpcnotrace leaves out grpc's golang.org/x/net/trace (the agent and the CLI
# reach grpc through the kubelet Pods API client): it brings html/template,
# whose method lookup by name makes the linker keep every exported method of
# every type, and nothing here reads grpc's traces. test/deps checks it.
TAGS      := grpcnotrace

LDFLAGS := -s -w \
	-X github.com/tokenroll/tokenroll/internal/version.Version=$(VERSION) \
	-X github.com/tokenroll/tokenroll/internal/version.Commit=$(COMMIT)

.PHONY: help build test test-short test-integration lint controlplane kubelet controllers dbus sandbox image clean

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# What ships (the image holds the first three) and the local cluster.
PROGRAMS := tokenroll tokenroll-agent tokenroll-coordinator tokenroll-sandbox

build: ## Build bin/tokenroll, bin/tokenroll-agent, bin/tokenroll-coordinator and bin/tokenroll-sandbox (static).
	CGO_ENABLED=0 $(GO) build -trimpath -tags "$(TAGS)" -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(PROGRAMS))

test: lint test-short test-integration ## Everything CI runs: lint, unit tests, integration tests.

test-short: ## Unit tests only (no control plane), with the race detector.
	$(GO) test -short -race -count=1 ./...

# The integration tests mostly wait on servers and timers, each with its own
# control plane on ports of its own: three packages at a time, and within a
# package up to four tests that call t.Parallel (the coordinator's e2e
# tests, the sandbox runs), keep two cores busy without starving the tests'
# timers. tokenroll-sandbox's tests, the longest package, run alongside the
# rest instead of one slot of two running everything else after it.
test-integration: controlplane kubelet controllers dbus ## Integration tests against a real etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and dbus-daemon.
	$(GO) test -count=1 -p 3 -parallel 4 -timeout 30m ./...

lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint.
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	@mkdir -p $(dir $@)
	GOBIN=$(TOKENROLL_CACHE_DIR)/tools/.gobin $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOKENROLL_CACHE_DIR)/tools/.gobin/golangci-lint $@

dbus: ## Install dbus-daemon and polkitd for the D-Bus and polkit tests when missing (Debian, as root).
	@bash test/ensure-dbus.sh

controlplane: ## Build the pinned etcd and kube-apiserver into the cache (a no-op when built).
	@bash sandbox/controlplane/build.sh >/dev/null

kubelet: ## Build the pinned kubelet code (hollow-kubelet, fake-runtime) for the sandbox's --kubelet real (a no-op when built).
	@bash sandbox/controlplane/build.sh kubelet >/dev/null

controllers: ## Build the pinned kube-controller-manager and kube-scheduler into the cache (a no-op when built).
	@bash sandbox/controlplane/build.sh controllers >/dev/null

# The sandbox runs the real kubelet unless ARGS asks for kubeletsim.
SANDBOX_KUBELET := $(if $(filter --kubelet=sim,$(ARGS))$(findstring --kubelet sim,$(ARGS)),,kubelet)

# With --prometheus it runs the Prometheus server deploy-tools builds.
SANDBOX_PROMETHEUS := $(if $(findstring --prometheus,$(ARGS)),deploy-tools,)

sandbox: controlplane controllers $(SANDBOX_KUBELET) $(SANDBOX_PROMETHEUS) build ## Run the local sandbox (bin/tokenroll-sandbox); pass flags with ARGS='--nodes 20', ARGS='--kubelet sim' or ARGS='--prometheus'.
	$(if $(SANDBOX_PROMETHEUS),TOKENROLL_PROMETHEUS_BIN=$$(bash test/deploy/tools/build.sh)/prometheus )$(BIN)/tokenroll-sandbox $(ARGS)

image: ## Build the container image (needs a Docker engine).
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .

clean: ## Remove build output (the cache stays).
	rm -rf $(BIN)

# Tools for the deploy tests (test/deploy): a kustomize/Helm renderer,
# promtool and the Prometheus server (the sandbox's --prometheus), built from
# the pins in test/deploy/tools/go.mod, and the CRDs the manifests use, into
# $(TOKENROLL_CACHE_DIR)/deploy-tools/.
.PHONY: deploy-tools codegen codegen-tools
deploy-tools: ## Build the deploy tests' tools (renderer, promtool, prometheus) and fetch their CRDs (a no-op when built).
	@bash test/deploy/tools/build.sh >/dev/null

# The deploy tests build them on first use too; building them here keeps
# that out of go test's timeout.
test-integration: deploy-tools

# The tokenroll.io API's generated code and CRDs (pkg/generated, the
# deepcopy code, deploy/helm/tokenroll/crds, deploy/kustomize/base/crds),
# from the generators pinned in test/codegen/tools/go.mod. test/codegen
# fails when they are stale.
codegen: ## Regenerate the API's client code and CRDs after changing pkg/apis.
	@bash hack/update-codegen.sh

codegen-tools: ## Build the pinned code generators into the cache (a no-op when built).
	@bash test/codegen/tools/build.sh >/dev/null

# test/codegen builds them on first use too; building them here keeps that
# out of go test's timeout.
test-integration: codegen-tools
