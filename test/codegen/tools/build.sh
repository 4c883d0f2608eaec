#!/usr/bin/env bash
# Builds the pinned code generators (go.mod's tool directives) into the
# cache directory, keyed by a hash of this module, and prints that
# directory: deepcopy-gen, client-gen, lister-gen, informer-gen,
# applyconfiguration-gen and controller-gen. A second run with the same pins
# does nothing.
#
#   TOKENROLL_CACHE_DIR  cache root (default: $XDG_CACHE_HOME/tokenroll or ~/.cache/tokenroll)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/build.sh") | sha256sum | cut -c1-16)
cache=${TOKENROLL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenroll}
dest="$cache/codegen-tools/$key"
tools=(deepcopy-gen client-gen lister-gen informer-gen applyconfiguration-gen controller-gen)
built=1
for b in "${tools[@]}"; do
  [ -x "$dest/$b" ] || built=0
done
if [ "$built" = 1 ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/codegen-tools"
tmp=$(mktemp -d "$cache/codegen-tools/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "building the code generators into $dest (a few minutes cold on 2 cores)" >&2
cd "$here"
ct=$(go list -m -f '{{.Version}}' sigs.k8s.io/controller-tools)
for b in "${tools[@]}"; do
  case "$b" in
    controller-gen) pkg=sigs.k8s.io/controller-tools/cmd/controller-gen
      # controller-gen reports this version in the CRDs' annotation.
      ldflags="-s -w -X sigs.k8s.io/controller-tools/pkg/version.version=$ct" ;;
    *) pkg=k8s.io/code-generator/cmd/$b; ldflags="-s -w" ;;
  esac
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$b" "$pkg"
done

# Publish atomically: a reader sees every generator or none.
if ! mv -T "$tmp" "$dest" 2>/dev/null; then
  [ -x "$dest/controller-gen" ] || { echo "build.sh: could not move the build into $dest" >&2; exit 1; }
fi
trap - EXIT
echo "$dest"
