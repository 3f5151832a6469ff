# optuna-dashboard as the operator runs it (manifests.dashboard_deployment): command
# `optuna-dashboard`, a postgresql+psycopg2 URL, a non-root uid, a read-only root filesystem.
# Built by hack/nodebed/build-images.sh and `make release` as the chart's default dashboard
# image, ghcr.io/optuna-operator/dashboard:<version>.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install "optuna-dashboard==0.21.0" "optuna==5.0.0" "psycopg2-binary>=2.9.9" \
    && optuna-dashboard --version
USER 65532:65532
ENTRYPOINT ["optuna-dashboard"]
