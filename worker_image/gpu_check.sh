#!/usr/bin/env bash
# GPU check: the PyTorch example through real `optuna-operator worker` processes on a
# throwaway PostgreSQL. Needs an NVIDIA GPU and PostgreSQL server binaries; installs torch
# if missing. Prints the device name and trials/s. Run from anywhere:
#   worker_image/gpu_check.sh            # TRIALS=20 WORKERS=2 PYTHON=python3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; TRIALS=${TRIALS:-20}; WORKERS=${WORKERS:-2}; PORT=${PGPORT:-55439}
nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU visible" >&2; exit 1; }
"$PY" -c "import optuna_operator.worker.main" 2>/dev/null || "$PY" -m pip install -q -e ".[worker]"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "gpu_check: PostgreSQL binaries not found (set PGBIN)" >&2; exit 1; }
DIR=$(mktemp -d); chmod 777 "$DIR"
AS=(); [ "$(id -u)" = 0 ] && AS=(runuser -u postgres --)   # initdb refuses to run as root
"${AS[@]}" "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w start \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" >/dev/null
trap '"${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null; rm -rf "$DIR"' EXIT
export OPTUNA_STORAGE_URL="postgresql+psycopg2://postgres@127.0.0.1:$PORT/postgres"
"$PY" -c "import optuna; optuna.create_study(study_name='gpu-check', storage='$OPTUNA_STORAGE_URL')"
export OPTUNA_OPERATOR_WORKER_CONFIG='{"studyName": "gpu-check", "directions": ["minimize"],
  "objective": {"function": "examples.pytorch_tuning:objective"}, "budget": {"trials": '"$TRIALS"'},
  "sampler": {"type": "TPE", "seed": 1}, "pruner": {"type": "Median",
  "median": {"nStartupTrials": 4, "nWarmupSteps": 5}}, "heartbeatIntervalSeconds": 10}'
start=$(date +%s.%N); pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  POD_NAME=gpu-check-$i OPTUNA_OPERATOR_WORKER_INDEX=$i "$PY" -m optuna_operator.worker \
    >"$DIR/worker-$i.log" 2>&1 & pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "worker $i failed:"; tail -20 "$DIR/worker-$i.log"; exit 1; }
done
end=$(date +%s.%N)
"$PY" - "$start" "$end" <<'PYEOF'
import collections, os, sys, optuna, torch
study = optuna.load_study(study_name="gpu-check", storage=os.environ["OPTUNA_STORAGE_URL"])
trials = study.get_trials(deepcopy=False)
seconds = float(sys.argv[2]) - float(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, "device:", torch.cuda.get_device_name(0))
print("trial devices:", dict(collections.Counter(t.user_attrs.get("device") for t in trials)))
print("states:", dict(collections.Counter(t.state.name for t in trials)), "best:", study.best_value)
print(f"{len(trials)} trials in {seconds:.1f} s (incl. worker start-up): {len(trials) / seconds:.2f} trials/s")
PYEOF
