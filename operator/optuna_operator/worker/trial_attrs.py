"""User attributes the worker writes on trials (shown in the dashboard, read by the operator)."""

from __future__ import annotations

__all__ = ["ERROR_ATTR", "INTERRUPTED_ATTR", "RETRY_OF_ATTR", "STDERR_ATTR", "WORKER_ATTR"]

# Why the objective failed. Only FAIL trials carrying it count against budget.maxFailedTrials:
# trials failed by a lost heartbeat or a SIGTERM are infrastructure, they are retried, and
# must not fail the study on a cluster with preemptible nodes.
ERROR_ATTR = "error"
# The last lines of a failed command's stderr.
STDERR_ATTR = "stderr_tail"
# Set on a trial stopped by SIGTERM; its parameters were enqueued again.
INTERRUPTED_ATTR = "interrupted"
# On the re-enqueued trial: the number of the interrupted one.
RETRY_OF_ATTR = "retry_of"
# pod/process that ran the trial, to find its logs.
WORKER_ATTR = "worker"
