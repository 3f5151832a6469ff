#!/usr/bin/env bash
# `make images` without Docker: the operator, worker, worker-examples and dashboard images
# built by buildah (Debian's, daemonless) from the project's own Dockerfiles on the locally
# assembled base (hack/nodebed/build-base.sh), exported as docker-archive tarballs under
# ~/.cache/optuna-operator/images for `ctr images import`. An image is rebuilt only when
# what goes into it changed (a digest of its Dockerfile and build context).
#
# Usage: hack/nodebed/build-images.sh [operator|worker|examples|dashboard|pgbouncer ...]
#        (default: all)
# Environment:
#   IMAGE_TAG                  tag of the images (default: the version in pyproject.toml)
#   OPERATOR_IMAGE, WORKER_IMAGE, EXAMPLES_IMAGE, DASHBOARD_IMAGE, PGBOUNCER_IMAGE   full names
#   BUILD_CA_BUNDLE            a CA bundle mounted read-only into RUN steps at the path
#                              Debian's pip and OpenSSL read, for machines behind a TLS proxy
#                              (default: none; `make images` passes this machine's bundle)
#   BASE_IMAGE                 default: the local Debian bookworm + Python 3.11 base
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need buildah

tag=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$(dirname "$0")/../../pyproject.toml")}
declare -A names=(
  [operator]=${OPERATOR_IMAGE:-ghcr.io/optuna-operator/operator:$tag}
  [worker]=${WORKER_IMAGE:-ghcr.io/optuna-operator/worker:$tag}
  [examples]=${EXAMPLES_IMAGE:-ghcr.io/optuna-operator/worker-examples:$tag}
  [dashboard]=${DASHBOARD_IMAGE:-ghcr.io/optuna-operator/dashboard:$tag}
  [pgbouncer]=${PGBOUNCER_IMAGE:-ghcr.io/optuna-operator/pgbouncer:$tag}
)
declare -A dockerfiles=(
  [operator]=Dockerfile
  [worker]=worker_image/Dockerfile
  [examples]=worker_image/Dockerfile
  [dashboard]=hack/nodebed/dashboard.Dockerfile
  [pgbouncer]=pgbouncer_image/Dockerfile
)
declare -A targets=([operator]="" [worker]=worker [examples]=examples [dashboard]="" [pgbouncer]="")
# What each image copies from the repository: its digest decides whether to rebuild.
# README.md is copied too (pyproject's readme) but only feeds package metadata: editing the
# docs should not cost minutes of image builds.
declare -A inputs=(
  [operator]="Dockerfile pyproject.toml operator"
  [worker]="worker_image/Dockerfile pyproject.toml operator"
  [examples]="worker_image/Dockerfile pyproject.toml operator examples"
  [dashboard]="hack/nodebed/dashboard.Dockerfile"
  [pgbouncer]="pgbouncer_image/Dockerfile"
)

"$here/build-base.sh"
base=${BASE_IMAGE:-$BASE_IMAGE_NAME}
exec 9>"$cache_root/images.lock"
flock 9

digest_of() {
  local key=$1
  (
    cd "$repo_root"
    echo "base=$base ca=${BUILD_CA_BUNDLE:+yes} name=${names[$key]}"
    # shellcheck disable=SC2086
    git ls-files -co --exclude-standard -- ${inputs[$key]} | grep -v '/__pycache__/' | LC_ALL=C sort | while read -r f; do
      [[ -f "$f" ]] && sha256sum "$f"
    done
  ) | sha256sum | cut -c1-16
}

build_one() {
  local key=$1 name=${names[$1]} archive="$image_dir/$1.tar" stamp="$image_dir/$1.digest"
  local digest; digest=$(digest_of "$key")
  if [[ -f "$archive" && -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    log "$name: up to date ($archive)"
    return
  fi
  local t0; t0=$(date +%s)
  log "$name: building from ${dockerfiles[$key]}${targets[$key]:+ (target ${targets[$key]})}"
  local args=(bud --pull=false --layers=false --format docker --isolation chroot
    --build-arg "BASE_IMAGE=$base" -f "${dockerfiles[$key]}" -t "$name")
  [[ -n "${targets[$key]}" ]] && args+=(--target "${targets[$key]}")
  if [[ -n "${BUILD_CA_BUNDLE:-}" ]]; then
    [[ -r "$BUILD_CA_BUNDLE" ]] || { log "BUILD_CA_BUNDLE=$BUILD_CA_BUNDLE is not readable"; exit 1; }
    # Where Debian's OpenSSL, pip (it reads the system store) and requests look.
    args+=(--volume "$BUILD_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  (cd "$repo_root" && bah "${args[@]}" .) >"$image_dir/$key.build.log" 2>&1 || {
    log "$name: build failed; last lines of $image_dir/$key.build.log:"
    tail -20 "$image_dir/$key.build.log" >&2
    exit 1
  }
  rm -f "$archive"
  bah push -q "$name" "docker-archive:$archive.tmp:$name" >/dev/null
  mv "$archive.tmp" "$archive"
  echo "$digest" >"$stamp"
  # The archive is what the node imports; buildah's own copy (vfs: a full copy per layer)
  # is not needed again.
  bah rmi -f "$name" >/dev/null 2>&1 || true
  log "$name: built in $(elapsed "$t0"), $(du -h "$archive" | cut -f1) archive"
}

keys=("$@")
((${#keys[@]})) || keys=(operator worker examples dashboard pgbouncer)
for k in "${keys[@]}"; do
  [[ -n "${names[$k]:-}" ]] || { log "unknown image $k (operator, worker, examples, dashboard, pgbouncer)"; exit 2; }
  build_one "$k"
done
