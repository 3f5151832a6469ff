#!/usr/bin/env bash
# GPU check: the PyTorch example through real `optuna-operator worker` processes on a
# throwaway PostgreSQL, then the cold-start comparison (a fresh process per trial, as a
# Job-per-trial design pays, against one warm worker). Needs an NVIDIA GPU and PostgreSQL
# server binaries; installs torch if missing. Run from anywhere:
#   worker_image/gpu_check.sh
# Knobs (defaults): TRIALS=24 trials for the worker run, WORKERS=1 worker processes,
# PROCESSES=<GPU count> (processesPerPod of each worker), COLDSTART_TRIALS=8 trials per mode
# and round of the cold-start comparison (0 skips it), PYTHON=python3, PGBIN (the newest
# /usr/lib/postgresql/*/bin), PG_LIBS (extra library folder for carried PostgreSQL binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; TRIALS=${TRIALS:-24}; WORKERS=${WORKERS:-1}; PORT=${PGPORT:-55439}
COLDSTART_TRIALS=${COLDSTART_TRIALS:-8}
nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU visible" >&2; exit 1; }
GPUS=$(nvidia-smi -L | grep -c '^GPU ')
PROCESSES=${PROCESSES:-$GPUS}
"$PY" -c "import optuna_operator.worker.main" 2>/dev/null || "$PY" -m pip install -q -e ".[worker]"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "gpu_check: PostgreSQL binaries not found (set PGBIN)" >&2; exit 1; }

DIR=$(mktemp -d); chmod 777 "$DIR"
# initdb and postgres refuse to run as root: use the postgres account, else uid 65534
# (nobody), dropped to by Python so that no util-linux is needed.
AS=()
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1 && command -v runuser >/dev/null; then AS=(runuser -u postgres --)
  else AS=("$PY" -c 'import os, sys; os.setgroups([]); os.setgid(65534); os.setuid(65534); os.execvp(sys.argv[1], sys.argv[1:])'); fi
fi
pg() { "${AS[@]}" env LD_LIBRARY_PATH="${PG_LIBS:-}" "$@"; }
pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w start \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
SAMPLER_PID=
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  pg "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
export OPTUNA_STORAGE_URL="postgresql+psycopg2://postgres@127.0.0.1:$PORT/postgres"
"$PY" -c "import optuna; optuna.create_study(study_name='gpu-check', storage='$OPTUNA_STORAGE_URL')"
export OPTUNA_OPERATOR_WORKER_CONFIG='{"studyName": "gpu-check", "directions": ["minimize"],
  "objective": {"function": "examples.pytorch_tuning:objective"}, "budget": {"trials": '"$TRIALS"'},
  "sampler": {"type": "TPE", "seed": 1}, "pruner": {"type": "Median",
  "median": {"nStartupTrials": 4, "nWarmupSteps": 5}}, "heartbeatIntervalSeconds": 10,
  "processesPerPod": '"$PROCESSES"'}'
echo "gpu_check: $GPUS GPU(s); $WORKERS worker(s) x processesPerPod $PROCESSES; $TRIALS trials"

# GPU utilisation and memory every 200 ms while the workers run: idle GPU time shows here.
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits \
  -lms 200 >"$DIR/gpu-samples.csv" 2>/dev/null & SAMPLER_PID=$!
start=$(date +%s.%N); pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  POD_NAME=gpu-check-$i OPTUNA_OPERATOR_WORKER_INDEX=$i "$PY" -m optuna_operator.worker \
    >"$DIR/worker-$i.log" 2>&1 & pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "worker $i failed:"; tail -20 "$DIR/worker-$i.log"; exit 1; }
done
end=$(date +%s.%N)
kill "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=
grep -h "Started trial process" "$DIR"/worker-*.log | sed 's/^.*Started/  Started/' || true
"$PY" - "$start" "$end" "$DIR/gpu-samples.csv" <<'PYEOF'
import collections, os, statistics, sys, optuna, torch
study = optuna.load_study(study_name="gpu-check", storage=os.environ["OPTUNA_STORAGE_URL"])
trials = study.get_trials(deepcopy=False)
seconds = float(sys.argv[2]) - float(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, "device:", torch.cuda.get_device_name(0))
print("trial devices:", dict(collections.Counter(t.user_attrs.get("device") for t in trials)))
print("states:", dict(collections.Counter(t.state.name for t in trials)), "best:", study.best_value)
print(f"{len(trials)} trials in {seconds:.1f} s (incl. worker start-up): {len(trials) / seconds:.2f} trials/s")
durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete]
print(f"trial duration: median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
samples = [line.split(",") for line in open(sys.argv[3]) if line.count(",") == 2]
if samples:
    util = [float(s[1]) for s in samples]
    mem = [float(s[2]) for s in samples]
    print(f"GPU utilisation over {len(samples)} samples: mean {statistics.mean(util):.0f}%, "
          f"max {max(util):.0f}%; memory used max {max(mem):.0f} MiB")
PYEOF

if [ "$COLDSTART_TRIALS" -gt 0 ]; then
  "$PY" worker_image/gpu_coldstart.py --trials "$COLDSTART_TRIALS"
fi
