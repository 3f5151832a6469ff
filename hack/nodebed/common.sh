# Shared by the node bed's image scripts: where images and buildah's storage live, and a
# buildah that never touches the machine-wide /var/lib/containers.
# shellcheck shell=bash

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache_root=${OPTUNA_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optuna-operator}
# Exported image archives (docker-archive tarballs, what `ctr images import` reads).
image_dir="$cache_root/images"
# buildah's own storage: vfs works on any filesystem and needs no fuse-overlayfs.
buildah_root="$cache_root/buildah/storage"
buildah_runroot="/run/optuna-operator-buildah"

BASE_IMAGE_NAME=localhost/optuna-operator/base:bookworm-py311
PAUSE_IMAGE_NAME=registry.k8s.io/pause:3.10
TINY_IMAGE_NAME=localhost/optuna-operator/busybox:1.35

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

bah() {
  nice -n 19 buildah --root "$buildah_root" --runroot "$buildah_runroot" --storage-driver vfs "$@"
}

# One image build at a time on a machine: buildah's storage is shared by every checkout.
lock_images() {
  mkdir -p "$cache_root"
  exec 9>"$cache_root/images.lock"
  flock 9
}

need() {
  local missing=() c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  ((${#missing[@]} == 0)) && return
  log "missing: ${missing[*]}; run hack/nodebed/install-packages.sh (Debian packages)"
  exit 1
}
