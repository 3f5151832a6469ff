#!/usr/bin/env bash
# Builds the test bed's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm) from the Go module proxy into a cache outside the
# repository, keyed by version. Nothing already in the cache is rebuilt.
#
# Why from source: the machines this project is built on reach the Go module proxy but
# no release downloads or image registries, so kind and setup-envtest cannot be used.
#
# Usage: hack/build-binaries.sh          # build what is missing, print the bin dir
#        hack/build-binaries.sh --print  # only print the bin dir
#        hack/build-binaries.sh --node   # also kubelet and kube-proxy (the node bed)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${OPTUNA_OPERATOR_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optuna-operator/bin}
bin_dir="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"

if [[ "${1:-}" == "--print" ]]; then
  echo "$bin_dir"
  exit 0
fi
with_node=0
[[ "${1:-}" == "--node" ]] && with_node=1

log() { printf '[build-binaries] %s\n' "$*" >&2; }

mkdir -p "$bin_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0

all_present() {
  local b
  for b in "$@"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# etcd: its own modules carry relative replace lines, so `go install` fails; a tiny
# module whose main calls etcdmain.Main builds it (a dependency's replaces are ignored).
build_etcd() {
  all_present etcd && { log "etcd $ETCD_VERSION: cached"; return; }
  local t0; t0=$(date +%s)
  log "etcd $ETCD_VERSION: building (a few minutes on 2 cores)"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  cat > main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  go mod init optuna-operator.local/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  go mod tidy >/dev/null 2>&1
  go build -trimpath -ldflags='-s -w' -o "$bin_dir/etcd.tmp" .
  mv "$bin_dir/etcd.tmp" "$bin_dir/etcd"
  log "etcd $ETCD_VERSION: built in $(elapsed "$t0")"
}

build_helm() {
  all_present helm && { log "helm $HELM_VERSION: cached"; return; }
  local t0; t0=$(date +%s)
  log "helm $HELM_VERSION: building (a few minutes on 2 cores)"
  mkdir -p "$work/helm" && cd "$work/helm"
  go mod init optuna-operator.local/helm >/dev/null 2>&1
  go get "helm.sh/helm/v3@$HELM_VERSION" >/dev/null 2>&1
  # Helm's own Makefile derives the default .Capabilities.KubeVersion from the client-go
  # it was built with; without these ldflags it reports v1.20.
  local cg minor
  cg=$(go list -m -f '{{.Version}}' k8s.io/client-go)
  minor=$(echo "$cg" | cut -d. -f2)
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  go build -trimpath -ldflags="$ld" -o "$bin_dir/helm.tmp" helm.sh/helm/v3/cmd/helm
  mv "$bin_dir/helm.tmp" "$bin_dir/helm"
  log "helm $HELM_VERSION: built in $(elapsed "$t0")"
}

# Kubernetes: k8s.io/kubernetes replaces every staging module with ./staging/..., so
# `go install` refuses it. A wrapper module requires it and replaces each staging module
# with its published v0.X.Y tag (kubernetes/kubernetes#79384).
build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  # The node bed's kubelet and kube-proxy come from the same wrapper module.
  ((with_node)) && cmds+=(kubelet kube-proxy)
  all_present "${cmds[@]}" && { log "kubernetes $K8S_VERSION: cached (${cmds[*]})"; return; }
  local t0; t0=$(date +%s)
  log "kubernetes $K8S_VERSION: building ${cmds[*]} (a cold build takes 20-40 minutes on 2 cores)"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  local upstream_mod staging_ver
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  staging_ver="v0.${K8S_VERSION#v1.}"
  {
    echo "module optuna-operator.local/k8s"
    echo
    grep -E '^(go|godebug) ' "$upstream_mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#replace \1 => \1 '"$staging_ver"'#p' "$upstream_mod"
  } > go.mod
  cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
  log "kubernetes: resolving modules"
  go mod tidy >/dev/null
  local v="$K8S_VERSION" major minor ld="-s -w" key val pkg
  major=$(echo "$v" | cut -d. -f1 | tr -d v)
  minor=$(echo "$v" | cut -d. -f2)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=$v" "gitMajor=$major" "gitMinor=$minor" "gitCommit=0000000000000000000000000000000000000000" \
              "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
      key=${kv%%=*}; val=${kv#*=}
      ld+=" -X $pkg.$key=$val"
    done
  done
  local c
  for c in "${cmds[@]}"; do
    [[ -x "$bin_dir/$c" ]] && { log "kubernetes: $c cached"; continue; }
    local tc; tc=$(date +%s)
    log "kubernetes: building $c"
    go build -trimpath -ldflags="$ld" -o "$bin_dir/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$bin_dir/$c.tmp" "$bin_dir/$c"
    log "kubernetes: $c built in $(elapsed "$tc")"
  done
  log "kubernetes $K8S_VERSION: done in $(elapsed "$t0")"
}

command -v go >/dev/null || { log "go is not installed; the test bed builds its binaries with Go"; exit 1; }
log "binaries go to $bin_dir"
build_etcd
build_helm
build_kubernetes
echo "$bin_dir"
