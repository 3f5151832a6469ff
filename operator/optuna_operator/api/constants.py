"""The API's identity (group, version, kind) and the bounds and names its rules are built on.

The bottom of the package: it imports nothing, and every other file of it may read it.
"""

from __future__ import annotations

__all__ = [
    "ALLOWED_VOLUME_KINDS",
    "API_VERSION",
    "DASHBOARD_ENV_NAMES",
    "GROUP",
    "KIND",
    "MAX_CHOICES",
    "MAX_DIRECTIONS",
    "MAX_GRID_VALUES_PER_PARAMETER",
    "MAX_LISTED_GRID_VALUES",
    "MAX_NAME_LENGTH",
    "MAX_PARAMETERS",
    "MAX_TIMEOUT_SECONDS",
    "PARETO_FRONT_LIMIT",
    "PLURAL",
    "VERSION",
    "WORKER_ENV_NAMES",
    "WORKER_MOUNT_PATHS",
    "WORKER_VOLUME_NAMES",
]


GROUP = "tuning.optuna-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TuningStudy"
PLURAL = "tuningstudies"

# Lists get bounds so the API server can estimate the cost of CEL rules over them.
MAX_PARAMETERS = 32
MAX_CHOICES = 64
MAX_DIRECTIONS = 8
PARETO_FRONT_LIMIT = 10
# "<name>-workers-<hash8>" must fit the 63-character label value limit.
MAX_NAME_LENGTH = 45
# What the operator gives every worker pod (children/manifests.py); a study cannot take these names,
# and an env entry of the same name would silently override the operator's.
WORKER_VOLUME_NAMES = ("optuna-tmp", "optuna-shm")
WORKER_MOUNT_PATHS = ("/tmp", "/dev/shm")
WORKER_ENV_NAMES = (
    "OPTUNA_OPERATOR_WORKER_CONFIG",
    "OPTUNA_STORAGE_URL",
    "OPTUNA_OPERATOR_WORKER_INDEX",
    "POD_NAME",
    "POD_NAMESPACE",
    "OPTUNA_OPERATOR_OBJECTIVE_SOURCE",
)
# What the operator gives every dashboard container: its read-only URL (a study's own
# dashboard) or the read-only role's password (a namespace's).
DASHBOARD_ENV_NAMES = ("OPTUNA_DASHBOARD_URL", "PGPASSWORD")
# The volume sources the restricted Pod Security Standard admits: the only ones a study (or
# the chart) may give a worker or dashboard pod (admission.py, children/overlay.py).
ALLOWED_VOLUME_KINDS = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
# The API server keeps Job.activeDeadlineSeconds (timeout + 600) and the operator a deadline
# datetime; ten years bounds both far from overflow.
MAX_TIMEOUT_SECONDS = 10 * 365 * 24 * 3600
# Largest grid per parameter the worker enumerates (worker.factory).
MAX_GRID_VALUES_PER_PARAMETER = 10_000
# Values listed by hand in sampler.grid.searchSpace; bounded for the cost of CEL rules.
MAX_LISTED_GRID_VALUES = 1000
