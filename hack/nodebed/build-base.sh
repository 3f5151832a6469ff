#!/usr/bin/env bash
# The images' base, assembled locally because no image registry is reachable: Debian
# bookworm (debootstrap minbase) with Python 3.11, pip and venv from Debian's packages,
# standing in for python:3.11-slim-bookworm through the Dockerfiles' BASE_IMAGE argument.
# Also the pause image (a static Go binary) and a tiny busybox image for plain pods.
# Cached in buildah's storage and as archives under ~/.cache/optuna-operator/images.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need buildah debootstrap go busybox
lock_images
mkdir -p "$image_dir"

have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# From the archive when buildah's storage lost it; built only when neither exists.
restore_or_build() {
  local name=$1 archive=$2 builder=$3
  if have_image "$name"; then log "$name: cached"; return; fi
  if [[ -f "$archive" ]]; then
    bah pull -q "docker-archive:$archive" >/dev/null
    bah tag "$(bah images -q --filter "reference=$name" | head -1)" "$name" 2>/dev/null || true
    have_image "$name" && { log "$name: restored from $archive"; return; }
  fi
  "$builder"
  bah push -q "$name" "docker-archive:$archive.tmp:$name" >/dev/null
  mv "$archive.tmp" "$archive"
}

build_base() {
  local t0; t0=$(date +%s)
  log "$BASE_IMAGE_NAME: debootstrap bookworm (a few minutes)"
  local rootfs; rootfs=$(mktemp -d "$cache_root/rootfs.XXXXXX")
  local mirror
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  nice -n 19 debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,passwd,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$cache_root/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $cache_root/debootstrap.log"; tail -5 "$cache_root/debootstrap.log" >&2; exit 1; }
  # The Dockerfiles pip-install into the system Python, as on python:3.11-slim; Debian
  # marks its Python externally managed (PEP 668), which would refuse that.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  local c
  c=$(bah from scratch)
  bah copy "$c" "$rootfs" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --os linux --arch amd64 "$c"
  bah commit -q --rm "$c" "$BASE_IMAGE_NAME" >/dev/null
  rm -rf "$rootfs"
  log "$BASE_IMAGE_NAME: built in $(elapsed "$t0")"
}

build_pause() {
  local t0 out; t0=$(date +%s); out=$(mktemp -d)
  (cd "$here/pause" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags='-s -w' -o "$out/pause" .)
  local c; c=$(bah from scratch)
  bah copy "$c" "$out/pause" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --os linux --arch amd64 "$c"
  bah commit -q --rm "$c" "$PAUSE_IMAGE_NAME" >/dev/null
  rm -rf "$out"
  log "$PAUSE_IMAGE_NAME: built in $(elapsed "$t0")"
}

build_tiny() {
  local t0 root; t0=$(date +%s); root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in $("$root/bin/busybox" --list); do
    [[ "$a" == busybox ]] || ln -sf busybox "$root/bin/$a"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$root/etc/passwd"
  local c; c=$(bah from scratch)
  bah copy "$c" "$root" / >/dev/null
  bah config --cmd '["/bin/sh"]' --env PATH=/bin --os linux --arch amd64 "$c"
  bah commit -q --rm "$c" "$TINY_IMAGE_NAME" >/dev/null
  rm -rf "$root"
  log "$TINY_IMAGE_NAME: built in $(elapsed "$t0")"
}

restore_or_build "$PAUSE_IMAGE_NAME" "$image_dir/pause.tar" build_pause
restore_or_build "$TINY_IMAGE_NAME" "$image_dir/busybox.tar" build_tiny
if [[ "${1:-}" != "--no-base" ]]; then
  restore_or_build "$BASE_IMAGE_NAME" "$image_dir/base.tar" build_base
fi
