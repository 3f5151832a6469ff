#!/usr/bin/env bash
# Builds Kueue's manager (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy into its own
# versioned cache directory beside the bed's other binaries, and prints that directory.
# Kueue's go.mod has no replace lines, so a plain `go install` works. Its CRDs and webhook
# manifests are read at run time from the same module in the Go module cache
# (`go mod download -json`), so nothing of Kueue is copied into this repository.
#
# Separate from build-binaries.sh on purpose: only tests that use the `kueue` fixture need
# it, and adding it to that script's cache key would rebuild Kubernetes.
#
# Usage: hack/build-kueue.sh          # build if missing, print the dir holding `kueue`
#        hack/build-kueue.sh --print  # only print the dir
#        hack/build-kueue.sh --source # print Kueue's module source dir (downloads it)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${OPTUNA_OPERATOR_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optuna-operator/bin}
bin_dir="$cache_root/kueue-$KUEUE_VERSION"
module="sigs.k8s.io/kueue@$KUEUE_VERSION"

log() { printf '[build-kueue] %s\n' "$*" >&2; }

case "${1:-}" in
  --print) echo "$bin_dir"; exit 0 ;;
  --source)
    go mod download -json "$module" | sed -n 's/.*"Dir": "\(.*\)",/\1/p'
    exit 0 ;;
esac

command -v go >/dev/null || { log "go is not installed; Kueue is built with Go"; exit 1; }
mkdir -p "$bin_dir"
if [[ -x "$bin_dir/kueue" ]]; then
  log "kueue $KUEUE_VERSION: cached"
else
  t0=$(date +%s)
  log "kueue $KUEUE_VERSION: building (10-20 minutes on 2 cores when the Go caches are cold)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$work" go install -trimpath \
    -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  mv "$work/kueue" "$bin_dir/kueue"
  log "kueue $KUEUE_VERSION: built in $(( $(date +%s) - t0 ))s"
fi
echo "$bin_dir"
