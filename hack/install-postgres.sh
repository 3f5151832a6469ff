#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages when its server binaries are missing.
# The test bed runs its own throwaway cluster from these binaries; the packaged cluster
# (if the package starts one) is not used.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

pg_bin=/usr/lib/postgresql/$POSTGRES_MAJOR/bin
if [[ -x "$pg_bin/postgres" && -x "$pg_bin/initdb" ]]; then
  echo "[install-postgres] PostgreSQL $POSTGRES_MAJOR: present in $pg_bin" >&2
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[install-postgres] PostgreSQL $POSTGRES_MAJOR is missing and installing it needs root:" >&2
  echo "  sudo apt-get install -y postgresql-$POSTGRES_MAJOR" >&2
  exit 1
fi
echo "[install-postgres] installing postgresql-$POSTGRES_MAJOR with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "postgresql-$POSTGRES_MAJOR"
[[ -x "$pg_bin/postgres" ]] || { echo "[install-postgres] $pg_bin/postgres still missing" >&2; exit 1; }
