#!/usr/bin/env bash
# make kind-demo: the XGBoost example on a throwaway kind cluster, installed with the Helm chart.
#
# Needs Docker (a running engine), kind, kubectl and helm on PATH. Creates (or reuses) the kind
# cluster $KIND_CLUSTER, builds the images (make images), loads them into the cluster, installs
# charts/optuna-operator with the bundled PostgreSQL, applies examples/xgboost-regression.yaml,
# waits for Succeeded and prints the best trial and how to open the dashboard.
# Delete everything afterwards with: kind delete cluster --name "$KIND_CLUSTER"
set -euo pipefail

cd "$(dirname "$0")/.."
KIND_CLUSTER=${KIND_CLUSTER:-optuna-demo}
RELEASE_NAMESPACE=${RELEASE_NAMESPACE:-optuna-system}
STUDY_NAMESPACE=${STUDY_NAMESPACE:-default}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/optuna-operator/operator:$(sed -n 's/^version = "\(.*\)"/\1/p' "$(dirname "$0")/../pyproject.toml")}
EXAMPLES_IMAGE=${EXAMPLES_IMAGE:-ghcr.io/optuna-operator/worker-examples:$(sed -n 's/^version = "\(.*\)"/\1/p' "$(dirname "$0")/../pyproject.toml")}
STUDY=xgb-regression
CONTEXT="kind-${KIND_CLUSTER}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'kind-demo: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required and not on PATH (this demo needs Docker, kind, kubectl and helm)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed); start Docker first"

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  say "Reusing kind cluster $KIND_CLUSTER"
else
  say "Creating kind cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --wait 180s
fi
kc() { kubectl --context "$CONTEXT" "$@"; }

say "Building images"
make images OPERATOR_IMAGE="$OPERATOR_IMAGE" EXAMPLES_IMAGE="$EXAMPLES_IMAGE"
for image in "$OPERATOR_IMAGE" "$EXAMPLES_IMAGE"; do
  kind load docker-image --name "$KIND_CLUSTER" "$image"
done

say "Installing the chart with the bundled PostgreSQL into $RELEASE_NAMESPACE"
# The chart generates no password (GitOps renders must not change it): the credentials are ours,
# created once and reused on reruns.
kc create namespace "$RELEASE_NAMESPACE" --dry-run=client -o yaml | kc apply -f -
if ! kc -n "$RELEASE_NAMESPACE" get secret optuna-postgresql >/dev/null 2>&1; then
  PW=$(openssl rand -hex 24)
  kc -n "$RELEASE_NAMESPACE" create secret generic optuna-postgresql \
    --from-literal=password="$PW" \
    --from-literal=url="postgresql+psycopg2://optuna:$PW@optuna-operator-postgresql.$RELEASE_NAMESPACE.svc:5432/optuna"
fi
helm --kube-context "$CONTEXT" upgrade --install optuna-operator charts/optuna-operator \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set postgresql.enabled=true --set postgresql.auth.existingSecret=optuna-postgresql \
  --set postgresql.persistence.size=1Gi \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set workerImage.repository="${EXAMPLES_IMAGE%:*}" --set workerImage.tag="${EXAMPLES_IMAGE##*:}" \
  --set logFormat=text \
  --wait --timeout 5m
kc -n "$RELEASE_NAMESPACE" rollout status statefulset/optuna-operator-postgresql --timeout=5m

say "Applying examples/xgboost-regression.yaml in $STUDY_NAMESPACE"
kc -n "$STUDY_NAMESPACE" apply -f examples/xgboost-regression.yaml
if ! kc -n "$STUDY_NAMESPACE" wait "ts/$STUDY" --for=condition=Succeeded --timeout=30m; then
  kc -n "$STUDY_NAMESPACE" get ts "$STUDY" -o yaml >&2
  die "the study did not succeed; operator logs: kubectl --context $CONTEXT -n $RELEASE_NAMESPACE logs deploy/optuna-operator"
fi

kc -n "$STUDY_NAMESPACE" get ts "$STUDY"
say "Best trial: $(kc -n "$STUDY_NAMESPACE" get ts "$STUDY" -o jsonpath='{.status.bestTrial}')"
say "Parameter importances: $(kc -n "$STUDY_NAMESPACE" get ts "$STUDY" -o jsonpath='{.status.paramImportances}')"
say "Dashboard: kubectl --context $CONTEXT -n $STUDY_NAMESPACE port-forward svc/${STUDY}-dashboard 8080:8080"
say "           then open http://localhost:8080"
say "Clean up:  kind delete cluster --name $KIND_CLUSTER"
