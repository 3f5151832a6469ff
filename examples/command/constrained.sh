#!/usr/bin/env bash
# A constrained two-objective command: accuracy up, latency down, and the model must fit in
# 4 GB of memory. Constraints are printed as `optuna:constraint <name> <value>`; a trial is
# feasible when every value is <= 0, so this prints memory minus the limit. Infeasible trials
# still teach the sampler (NSGA-II, NSGA-III, TPE, GP and CMA-ES read constraints) but never
# appear in the status Pareto front.
set -euo pipefail

width="${OPTUNA_PARAM_WIDTH:?OPTUNA_PARAM_WIDTH is not set}"
depth="${OPTUNA_PARAM_DEPTH:?OPTUNA_PARAM_DEPTH is not set}"
limit_gb="${MEMORY_LIMIT_GB:-4}"

# A made-up model: wider and deeper is more accurate, slower and bigger.
read -r accuracy latency_ms memory_gb < <(awk -v w="$width" -v d="$depth" 'BEGIN {
  size = w * d
  printf "%.6f %.6f %.6f\n", 1 - 1 / (1 + size / 400), 2 + size / 50, size / 500
}')

echo "trial ${OPTUNA_TRIAL_NUMBER:-?}: width=$width depth=$depth memory=${memory_gb} GB"
echo "optuna:constraint memory_gb $(awk -v m="$memory_gb" -v l="$limit_gb" 'BEGIN {print m - l}')"
echo "optuna:result $accuracy $latency_ms"
