#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager, kwok) and the other projects' controllers the e2e tests run
# (KubeRay's ray-operator, with its RayCluster CRD under crds/) from the Go module proxy
# at the versions pinned in versions.env, into a cache outside the work tree keyed by
# those versions and the Go module's go.sum. A warm cache returns at once. Prints the
# bin directory on its last line.
#
#   DROVER_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/drover)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${DROVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drover}
mod=$(sha256sum "$here/kubernetes/go.sum" | cut -c1-8)
bin="$cache/controlplane/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_kuberay-${KUBERAY_VERSION}_mod-${mod}"
want=(etcd kube-apiserver kube-scheduler kube-controller-manager kwok ray-operator crds/ray.io_rayclusters.yaml)

have_all() { for b in "${want[@]}"; do [ -e "$bin/$b" ] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is needed to build the test control plane (or set KUBEBUILDER_ASSETS)" >&2; exit 1; }
mkdir -p "$bin"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ld=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=1 -X $p.gitMinor=${minor} -X $p.gitTreeState=clean"
done
step() { echo "build.sh: $(date +%T) $*" >&2; }

if [ ! -x "$bin/etcd" ]; then
  step "building etcd ${ETCD_VERSION}"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) && mv "$bin/etcd.tmp" "$bin/etcd"
fi
# One go build for every binary of the Go module: its packages compile once.
todo=()
for c in kube-apiserver kube-scheduler kube-controller-manager; do
  [ -x "$bin/$c" ] || todo+=("k8s.io/kubernetes/cmd/$c")
done
[ -x "$bin/ray-operator" ] || todo+=("github.com/ray-project/kuberay/ray-operator")
if [ "${#todo[@]}" -gt 0 ]; then
  step "building ${todo[*]##*/} (k8s ${K8S_VERSION}, KubeRay ${KUBERAY_VERSION}; a cold build takes several minutes on two cores)"
  rm -rf "$bin/.go" && mkdir -p "$bin/.go"
  (cd "$here/kubernetes" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/.go/" "${todo[@]}")
  mv "$bin/.go/"* "$bin/" && rmdir "$bin/.go"
fi
if [ ! -e "$bin/crds/ray.io_rayclusters.yaml" ]; then
  ray=$(cd "$here/kubernetes" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)
  mkdir -p "$bin/crds" && cp "$ray/config/crd/bases/ray.io_rayclusters.yaml" "$bin/crds/"
fi
if [ ! -x "$bin/kwok" ]; then
  step "building kwok ${KWOK_VERSION}"
  GOBIN="$bin/.kwok" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" && mv "$bin/.kwok/kwok" "$bin/kwok"
fi
have_all || { echo "build.sh: some binaries are missing from $bin" >&2; exit 1; }
step "control plane ready"
echo "$bin"
