#!/usr/bin/env bash
# Installs the node bed's Debian packages when missing: containerd + runc (the container
# runtime), the CNI plugins, iptables and conntrack (kube-proxy), buildah and debootstrap
# (images without Docker), busybox-static (the tiny test image), ipset (kube-router's
# NetworkPolicy controller keeps its peer sets in ipsets).
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack ipset buildah debootstrap busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install-packages: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "[install-packages] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps Debian's containerd service from starting: the bed runs its own.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
