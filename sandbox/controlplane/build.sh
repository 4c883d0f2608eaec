#!/usr/bin/env bash
# Builds the pinned etcd and kube-apiserver from the Go module proxy into a
# cache directory outside the work tree, keyed by version, and prints that
# directory. With the argument "kubelet" it also builds hollow-kubelet and
# fake-runtime (test/tools), the real kubelet code the sandbox runs with
# --kubelet real; with "controllers", kube-controller-manager and
# kube-scheduler. A second run with the same pins does nothing.
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

want=(etcd kube-apiserver)
for arg in "$@"; do
  case "$arg" in
    kubelet) want+=(hollow-kubelet fake-runtime) ;;
    controllers) want+=(kube-controller-manager kube-scheduler) ;;
    *) echo "build.sh: unknown argument $arg; want nothing, \"kubelet\" or \"controllers\"" >&2; exit 2 ;;
  esac
done

cache=${TOKENROLL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenroll}
dest="$cache/controlplane/kubernetes-$k8s-etcd-$etcd"
# fake-runtime is tokenroll's own code over kubemark's fake: the pins do not
# name it, so a digest of its source beside it says when to build it again.
runtime_src=$(find "$tools/fakeruntime" -maxdepth 1 -name '*.go' ! -name '*_test.go' | sort | xargs cat | sha256sum | cut -d' ' -f1)
missing=()
for b in "${want[@]}"; do
  if [ ! -x "$dest/$b" ] || { [ "$b" = fake-runtime ] && [ "$(cat "$dest/fake-runtime.src" 2>/dev/null)" != "$runtime_src" ]; }; then
    missing+=("$b")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/controlplane"
tmp=$(mktemp -d "$cache/controlplane/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

major=${k8s#v}; major=${major%%.*}
minor=${k8s#v*.}; minor=${minor%%.*}
# The version ldflags make the kube-apiserver and the kubelet report the pin
# (a node's status.nodeInfo.kubeletVersion among them).
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"

echo "building ${missing[*]} (kubernetes $k8s, etcd $etcd) into $dest (etcd and kube-apiserver: about 4 minutes cold on 2 cores; the kubelet: about 6 more; the controllers: about 2 more after kube-apiserver, 16 minutes of CPU from an empty build cache)" >&2
cd "$tools"
for b in "${missing[@]}"; do
  case "$b" in
    etcd) CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/$b" go.etcd.io/etcd/server/v3 ;;
    kube-apiserver | kube-controller-manager | kube-scheduler) CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$b" "k8s.io/kubernetes/cmd/$b" ;;
    hollow-kubelet) CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$b" ./hollowkubelet ;;
    fake-runtime) CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$b" ./fakeruntime ;;
  esac
done

case " ${missing[*]} " in *" fake-runtime "*) echo "$runtime_src" >"$tmp/fake-runtime.src" ;; esac

# Publish atomically: a reader sees etcd and kube-apiserver both or none;
# binaries added to a published directory appear one by one.
if [ ! -e "$dest" ] && mv -T "$tmp" "$dest" 2>/dev/null; then
  trap - EXIT
  echo "$dest"
  exit 0
fi
mkdir -p "$dest"
for b in "${missing[@]}" $([ -e "$tmp/fake-runtime.src" ] && echo fake-runtime.src); do
  if ! mv -f "$tmp/$b" "$dest/$b"; then
    [ -x "$dest/$b" ] || { echo "build.sh: could not move $b into $dest" >&2; exit 1; }
  fi
done
echo "$dest"
