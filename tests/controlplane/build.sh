#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager, kwok) from the Go module proxy at the versions pinned in
# versions.env, into a cache outside the work tree keyed by those versions. A warm
# cache returns at once. Prints the bin directory on its last line.
#
#   DROVER_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/drover)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${DROVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drover}
bin="$cache/controlplane/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
want=(etcd kube-apiserver kube-scheduler kube-controller-manager kwok)

have_all() { for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
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
for c in kube-apiserver kube-scheduler kube-controller-manager; do
  if [ ! -x "$bin/$c" ]; then
    step "building $c ${K8S_VERSION} (a cold build takes several minutes on two cores)"
    (cd "$here/kubernetes" && go build -trimpath -ldflags "-s -w $ld" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c") && mv "$bin/$c.tmp" "$bin/$c"
  fi
done
if [ ! -x "$bin/kwok" ]; then
  step "building kwok ${KWOK_VERSION}"
  GOBIN="$bin/.kwok" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" && mv "$bin/.kwok/kwok" "$bin/kwok"
fi
have_all || { echo "build.sh: some binaries are missing from $bin" >&2; exit 1; }
step "control plane ready"
echo "$bin"
