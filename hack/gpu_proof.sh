#!/usr/bin/env bash
# The GPU proof in one run, for a lent GPU machine that has PyTorch but no network, no
# PostgreSQL and none of the worker's other packages. `hack/gpu_proof.sh bundle` (here, with
# network) puts what is missing into .gpu/ (git-ignored): the worker's wheels for CPython 3.12
# and a relocatable copy of this machine's PostgreSQL server with its libraries. On the GPU
# machine, `hack/gpu_proof.sh run [OUTDIR]` installs those into /tmp, then runs
# worker_image/gpu_check.sh (processesPerPod = GPU count, the cold-start comparison) and a
# second pass with two processes sharing each GPU; everything is logged to OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle() {
  local platforms=() p
  for p in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${p}_x86_64"); done
  mkdir -p .gpu/whl
  # The worker's imports beyond what a CUDA image with PyTorch has (numpy, tqdm, PyYAML,
  # packaging, MarkupSafe), at this project's locked versions.
  .venv/bin/python - <<'EOF' >.gpu/requirements.txt
from importlib.metadata import version
for name in ["optuna", "sqlalchemy", "alembic", "mako", "colorlog", "psycopg2-binary", "pydantic",
             "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions"]:
    print(f"{name}=={version(name)}")
EOF
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 -d .gpu/whl \
    -r .gpu/requirements.txt
  local pgbin stage lib
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  stage=$(mktemp -d); chmod 755 "$stage"   # the server runs as another user there
  # PostgreSQL finds its share/ and lib/ relative to its binaries, so the tree keeps its layout.
  mkdir -p "$stage$pgbin" "$stage/libs"
  cp "$pgbin"/{postgres,initdb,pg_ctl} "$stage$pgbin/"
  cp -r --parents "$(dirname "$pgbin")/lib" "/usr/share/postgresql/$(basename "$(dirname "$pgbin")")" "$stage/"
  rm -rf "$stage$(dirname "$pgbin")/lib/bitcode" "$stage$(dirname "$pgbin")/lib/llvmjit.so"
  # Its libraries except the C runtime, which the other machine's newer glibc provides.
  for lib in $(ldd "$pgbin"/{postgres,initdb,pg_ctl} | awk '$3 ~ /^\// {print $3}' | sort -u); do
    case $(basename "$lib") in libc.so*|libm.so*|libresolv.so*|libgcc_s.so*|libstdc++.so*) ;; *) cp -L "$lib" "$stage/libs/" ;; esac
  done
  tar -C "$stage" -cJf .gpu/postgresql.tar.xz .
  rm -rf "$stage"
  du -sh .gpu
}

run() {
  local out=${1:-/tmp/gpu-proof}
  mkdir -p "$out"
  if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/gpu-site
  fi
  export PYTHONPATH=$PWD/operator:$PWD${PYTHONPATH:+:$PYTHONPATH}
  if [ -f .gpu/postgresql.tar.xz ]; then
    # Python's tarfile, as the machine may have no xz.
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
      .gpu/postgresql.tar.xz /tmp/gpu-pg
    PGBIN=$(ls -d /tmp/gpu-pg/usr/lib/postgresql/*/bin | sort -V | tail -1)
    export PGBIN PG_LIBS=/tmp/gpu-pg/libs
  fi
  export PYTHONUNBUFFERED=1
  {
    echo "== $(date -u +%FT%TZ) $(uname -m)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, optuna; print('torch', torch.__version__, 'optuna', optuna.__version__)"
    echo "== pass 1: processesPerPod = GPU count, cold start vs warm worker"
    worker_image/gpu_check.sh
    echo "== pass 2: two trial processes sharing each GPU (processesPerPod = 2 x GPUs)"
    PROCESSES=$((2 * $(nvidia-smi -L | grep -c '^GPU '))) COLDSTART_TRIALS=0 worker_image/gpu_check.sh
  } 2>&1 | tee "$out/gpu-proof.log"
}

case ${1:-} in
  bundle) bundle ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 bundle | run [OUTDIR]" >&2; exit 2 ;;
esac
