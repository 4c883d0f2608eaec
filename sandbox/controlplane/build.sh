#!/usr/bin/env bash
# Builds the pinned etcd and kube-apiserver from the Go module proxy into a
# cache directory outside the work tree, keyed by version, and prints that
# directory. A second run with the same pins does nothing.
#
#   TOKENROLL_CACHE_DIR  cache root (default: $XDG_CACHE_HOME/tokenroll or ~/.cache/tokenroll)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
tools="$root/test/tools"
k8s=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$tools/go.mod")
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$tools/go.mod")
if [ -z "$k8s" ] || [ -z "$etcd" ]; then
  echo "build.sh: cannot read the kubernetes and etcd pins from $tools/go.mod" >&2
  exit 1
fi

cache=${TOKENROLL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenroll}
dest="$cache/controlplane/kubernetes-$k8s-etcd-$etcd"
if [ -x "$dest/kube-apiserver" ] && [ -x "$dest/etcd" ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/controlplane"
tmp=$(mktemp -d "$cache/controlplane/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

major=${k8s#v}; major=${major%%.*}
minor=${k8s#v*.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"

echo "building etcd $etcd and kube-apiserver $k8s into $dest (about 4 minutes cold on 2 cores)" >&2
cd "$tools"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

# Publish atomically: a reader sees both binaries or none.
if ! mv -T "$tmp" "$dest" 2>/dev/null; then
  [ -x "$dest/kube-apiserver" ] || { echo "build.sh: could not move the build into $dest" >&2; exit 1; }
fi
trap - EXIT
echo "$dest"
