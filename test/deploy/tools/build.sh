#!/usr/bin/env bash
# Builds what the deploy tests (test/deploy) need into the cache directory,
# keyed by a hash of this module, and prints that directory:
#   render    kustomize and Helm rendering (render/main.go, pinned in go.mod)
#   promtool  Prometheus' rule checker, pinned in go.mod (tool directive)
#   prometheus  the Prometheus server from the same pin, without the web UI's
#             assets (its API is all the sandbox and the tests use)
#   crds/     the CustomResourceDefinitions the manifests use, from pinned
#             modules: prometheus-operator (ServiceMonitor, PodMonitor,
#             PrometheusRule) and openshift/api (SecurityContextConstraints)
# A second run with the same pins does nothing.
#
#   TOKENROLL_CACHE_DIR  cache root (default: $XDG_CACHE_HOME/tokenroll or ~/.cache/tokenroll)
set -euo pipefail

# The CRD sources: Go modules fetched from the module proxy (checked against
# the checksum database), not imported by any code.
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0
OPENSHIFT_API=github.com/openshift/api@v0.0.0-20260420151639-34e60874783e

here=$(cd "$(dirname "$0")" && pwd)
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here"/render/*.go) | sha256sum | cut -c1-16)
cache=${TOKENROLL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenroll}
dest="$cache/deploy-tools/$key"
if [ -x "$dest/render" ] && [ -x "$dest/promtool" ] && [ -x "$dest/prometheus" ] && [ -d "$dest/crds" ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/deploy-tools"
tmp=$(mktemp -d "$cache/deploy-tools/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "building the deploy test tools (render, promtool, prometheus) into $dest (several minutes cold on 2 cores)" >&2
cd "$here"
prom=$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/render" ./render
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=$prom" \
  -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=$prom" \
  -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus

moddir() {
  # Outside any module, so that go.mod here is left alone.
  (cd "$tmp" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}
mkdir -p "$tmp/crds"
po=$(moddir "$PROMETHEUS_OPERATOR")
for crd in servicemonitors podmonitors prometheusrules; do
  cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$tmp/crds/"
done
os=$(moddir "$OPENSHIFT_API")
cp "$os/security/v1/zz_generated.crd-manifests/0000_03_config-operator_01_securitycontextconstraints.crd.yaml" "$tmp/crds/"
chmod -R u+w "$tmp/crds"

# Publish atomically: a reader sees everything or nothing.
if ! mv -T "$tmp" "$dest" 2>/dev/null; then
  [ -x "$dest/promtool" ] || { echo "build.sh: could not move the build into $dest" >&2; exit 1; }
fi
trap - EXIT
echo "$dest"
