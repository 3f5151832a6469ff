#!/usr/bin/env bash
# A command objective without Python: bash for the plumbing, awk for the arithmetic.
#
# Parameters arrive three ways; this script uses two of them:
#   --optimizer {optimizer} --lr {lr}   placeholders filled in the TuningStudy's command
#   OPTUNA_PARAM_MOMENTUM, OPTUNA_PARAM_LAYERS   environment (momentum only when optimizer=sgd)
#   (all of them are also in the JSON file named by OPTUNA_PARAMS_FILE)
# It "trains" for EPOCHS epochs, printing `optuna:report <epoch> <loss>` after each so the
# pruner can stop it, then `optuna:result <loss>`.
set -euo pipefail

optimizer="" lr=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --optimizer) optimizer="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
layers="${OPTUNA_PARAM_LAYERS:?OPTUNA_PARAM_LAYERS is not set}"
epochs="${EPOCHS:-10}"
delay="${EPOCH_SECONDS:-0.05}"

# The conditional parameter must follow its parent: sgd has momentum, adam has none.
if [[ "$optimizer" == "sgd" && -z "${OPTUNA_PARAM_MOMENTUM:-}" ]]; then
  echo "optimizer sgd but no momentum" >&2; exit 1
fi
if [[ "$optimizer" == "adam" && -n "${OPTUNA_PARAM_MOMENTUM:-}" ]]; then
  echo "optimizer adam but momentum=${OPTUNA_PARAM_MOMENTUM}" >&2; exit 1
fi
momentum="${OPTUNA_PARAM_MOMENTUM:-0}"

echo "trial ${OPTUNA_TRIAL_NUMBER:-?}: optimizer=$optimizer lr=$lr momentum=$momentum layers=$layers"
for ((epoch = 0; epoch < epochs; epoch++)); do
  # A made-up loss surface: best near lr=0.01, momentum 0.9, 3 layers; adam converges faster.
  loss=$(awk -v lr="$lr" -v m="$momentum" -v l="$layers" -v e="$epoch" -v opt="$optimizer" '
    BEGIN {
      d = log(lr / 0.01) / log(10)
      base = d * d + (l - 3) * (l - 3) * 0.05 + (opt == "sgd" ? (0.9 - m) * (0.9 - m) : 0.1)
      speed = (opt == "adam" ? 0.5 : 0.3)
      printf "%.6f", base + exp(-speed * (e + 1))
    }')
  echo "optuna:report $epoch $loss"
  sleep "$delay"
done
echo "optuna:result $loss"
