#!/usr/bin/env bash
# Builds promtool (github.com/prometheus/prometheus/cmd/promtool) from the Go module proxy,
# with every service discovery left out (it only reads files here), into its own versioned
# cache directory beside the bed's other binaries, and prints that directory.
#
# Usage: hack/build-promtool.sh          # build if missing, print the dir holding `promtool`
#        hack/build-promtool.sh --print  # only print the dir
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${OPTUNA_OPERATOR_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optuna-operator/bin}
bin_dir="$cache_root/promtool-$PROMETHEUS_VERSION"

log() { printf '[build-promtool] %s\n' "$*" >&2; }

if [[ "${1:-}" == --print ]]; then echo "$bin_dir"; exit 0; fi

command -v go >/dev/null || { log "go is not installed; promtool is built with Go"; exit 1; }
mkdir -p "$bin_dir"
if [[ -x "$bin_dir/promtool" ]]; then
  log "promtool $PROMETHEUS_VERSION: cached"
else
  t0=$(date +%s)
  log "promtool $PROMETHEUS_VERSION: building (10-15 minutes on 2 cores when the Go caches are cold)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  CGO_ENABLED=0 GOBIN="$work" go install -trimpath -tags remove_all_sd \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  mv "$work/promtool" "$bin_dir/promtool"
  log "promtool $PROMETHEUS_VERSION: built in $(( $(date +%s) - t0 ))s"
fi
echo "$bin_dir"
