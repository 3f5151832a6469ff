#!/usr/bin/env bash
# Builds kube-router (github.com/cloudnativelabs/kube-router/v2/cmd/kube-router) from the Go
# module proxy into its own versioned cache directory beside the bed's other binaries, and
# prints that directory. The node bed runs only its NetworkPolicy controller
# (--run-firewall, no router, no service proxy): iptables + ipset rules that enforce
# NetworkPolicy on the CNI bridge. kube-router's go.mod has no replace lines, so a plain
# `go install` works.
#
# Separate from build-binaries.sh so that adding it does not change that script's cache key
# (which would rebuild Kubernetes).
#
# Usage: hack/nodebed/build-kube-router.sh          # build if missing, print the dir
#        hack/nodebed/build-kube-router.sh --print  # only print the dir
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$here/versions.env"

cache_root=${OPTUNA_OPERATOR_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optuna-operator/bin}
bin_dir="$cache_root/kube-router-$KUBE_ROUTER_VERSION"
pkg=github.com/cloudnativelabs/kube-router/v2

log() { printf '[build-kube-router] %s\n' "$*" >&2; }

[[ "${1:-}" == "--print" ]] && { echo "$bin_dir"; exit 0; }

command -v go >/dev/null || { log "go is not installed; kube-router is built with Go"; exit 1; }
mkdir -p "$bin_dir"
if [[ -x "$bin_dir/kube-router" ]]; then
  log "kube-router $KUBE_ROUTER_VERSION: cached"
else
  t0=$(date +%s)
  log "kube-router $KUBE_ROUTER_VERSION: building (5-15 minutes on 2 cores when the Go caches are cold)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # The version and build date kube-router's own Makefile sets.
  GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$work" go install -trimpath \
    -ldflags="-s -w -X $pkg/pkg/version.Version=$KUBE_ROUTER_VERSION -X $pkg/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "$pkg/cmd/kube-router@$KUBE_ROUTER_VERSION"
  mv "$work/kube-router" "$bin_dir/kube-router"
  log "kube-router $KUBE_ROUTER_VERSION: built in $(( $(date +%s) - t0 ))s"
fi
echo "$bin_dir"
