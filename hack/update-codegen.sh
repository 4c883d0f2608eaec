#!/usr/bin/env bash
# Generates everything derived from the tokenroll.io API types
# (pkg/apis/tokenroll/v1alpha1) with the generators pinned in
# test/codegen/tools (built into the cache on first use):
#   pkg/apis/tokenroll/v1alpha1/zz_generated.deepcopy.go   deepcopy-gen
#   pkg/generated/applyconfiguration                       applyconfiguration-gen
#   pkg/generated/clientset/versioned                      client-gen
#   pkg/generated/listers, pkg/generated/informers         lister-gen, informer-gen
#   deploy/helm/tokenroll/crds, deploy/kustomize/base/crds controller-gen (the same CRDs)
# Run it after changing the types. With a directory argument it generates
# into that copy of the repository instead (test/codegen's staleness check
# does, into a temporary copy).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "${1:-$here}" && pwd)
bin=$(bash "$here/test/codegen/tools/build.sh")

module=github.com/tokenroll/tokenroll
api=./pkg/apis/tokenroll/v1alpha1
out=pkg/generated
# No licence header: the generators' "Code generated ... DO NOT EDIT." line
# is all a generated file starts with.
header=/dev/null

cd "$root"
# Each generator writes only its own files; remove the old ones first so
# that a type that was renamed or removed leaves nothing behind.
rm -rf "$out" deploy/helm/tokenroll/crds "$api/zz_generated.deepcopy.go"
# The base's crds/ also holds crds.go, which embeds the copies.
rm -f deploy/kustomize/base/crds/*.yaml

"$bin/deepcopy-gen" --go-header-file "$header" --output-file zz_generated.deepcopy.go "$api"
"$bin/applyconfiguration-gen" --go-header-file "$header" \
  --output-dir "$out/applyconfiguration" --output-pkg "$module/$out/applyconfiguration" "$api"
"$bin/client-gen" --go-header-file "$header" \
  --output-dir "$out/clientset" --output-pkg "$module/$out/clientset" --clientset-name versioned \
  --apply-configuration-package "$module/$out/applyconfiguration" \
  --input-base "$module/pkg/apis" --input tokenroll/v1alpha1
"$bin/lister-gen" --go-header-file "$header" \
  --output-dir "$out/listers" --output-pkg "$module/$out/listers" "$api"
"$bin/informer-gen" --go-header-file "$header" \
  --output-dir "$out/informers" --output-pkg "$module/$out/informers" \
  --versioned-clientset-package "$module/$out/clientset/versioned" --listers-package "$module/$out/listers" "$api"

"$bin/controller-gen" crd:crdVersions=v1 paths="$api/..." output:crd:dir=deploy/helm/tokenroll/crds
# Kustomize reads nothing outside a kustomization's directory: the base
# keeps its own copy.
mkdir -p deploy/kustomize/base/crds
cp deploy/helm/tokenroll/crds/*.yaml deploy/kustomize/base/crds/
