#!/usr/bin/env bash
# Fetches the third-party CRDs that drover's optional manifests use (the Prometheus
# Operator's ServiceMonitor and PrometheusRule) from the Go module proxy, at the version
# pinned in versions.env, into the cache outside the work tree. A warm cache returns at
# once. Prints the directory holding the CRD files on its last line.
#
#   DROVER_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/drover)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${DROVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drover}
dir="$cache/crds/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

have_all() { for f in "${files[@]}"; do [ -s "$dir/$f" ] || return 1; done; }
if have_all; then echo "$dir"; exit 0; fi

command -v go >/dev/null || { echo "crds.sh: Go is needed to fetch the Prometheus Operator CRDs" >&2; exit 1; }
mod=github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}
echo "crds.sh: $(date +%T) fetching $mod" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$(cd "$work" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$mod" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
[ -d "$src" ] || { echo "crds.sh: go mod download gave no directory for $mod" >&2; exit 1; }
mkdir -p "$dir"
for f in "${files[@]}"; do
  cp "$src/example/prometheus-operator-crd/$f" "$dir/$f.tmp" && mv "$dir/$f.tmp" "$dir/$f"
done
have_all || { echo "crds.sh: some CRDs are missing from $dir" >&2; exit 1; }
echo "$dir"
