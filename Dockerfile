# The operator image: `optuna-operator run` (kopf, the Kubernetes client, Optuna, psycopg2).
# Runs as a fixed non-root uid with a read-only root filesystem (see charts/optuna-operator).
#
#   docker build -t ghcr.io/optuna-operator/operator:0.2.0 .      # or: make images
#
# Build context: the repository root; Dockerfile.dockerignore keeps it to the package.

# Pinned by tag (same base as worker_image/Dockerfile); pin a digest with
#   --build-arg BASE_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/optuna-operator
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# scikit-learn: Optuna's default parameter-importance evaluator (fANOVA) needs it, and the
# operator computes status.paramImportances when a study succeeds.
RUN /opt/optuna-operator/bin/pip install "/src[operator]" "scikit-learn>=1.4,<2" \
    && /opt/optuna-operator/bin/optuna-operator --help >/dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="optuna-operator" \
      org.opencontainers.image.description="Kubernetes operator for Optuna studies" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/optuna-operator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/optuna-operator /opt/optuna-operator
# Same uid as the chart's podSecurityContext.runAsUser; no home, no shell. Not named
# "operator": Debian (and so python:*-bookworm) already has a group of that name (gid 37),
# and useradd --user-group refuses to reuse it.
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin optuna-operator
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["optuna-operator"]
CMD ["run"]
