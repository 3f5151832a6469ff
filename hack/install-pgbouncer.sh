#!/usr/bin/env bash
# Installs PgBouncer from Debian's package when its binary is missing. The tests and
# benchmarks run their own pgbouncer processes from it (free loopback ports, generated
# configuration); the packaged service, if the package starts one, is stopped and not used.
set -euo pipefail

bin=/usr/sbin/pgbouncer
if [[ -x "$bin" ]]; then
  echo "[install-pgbouncer] $("$bin" --version | head -1): present" >&2
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[install-pgbouncer] PgBouncer is missing and installing it needs root:" >&2
  echo "  sudo apt-get install -y pgbouncer" >&2
  exit 1
fi
echo "[install-pgbouncer] installing pgbouncer with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends pgbouncer
[[ -x "$bin" ]] || { echo "[install-pgbouncer] $bin still missing" >&2; exit 1; }
# Without systemd the package's init script may have started the default service on
# 127.0.0.1:6432; nothing here uses it.
if [[ -x /etc/init.d/pgbouncer ]]; then /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true; fi
echo "[install-pgbouncer] $("$bin" --version | head -1): installed" >&2
