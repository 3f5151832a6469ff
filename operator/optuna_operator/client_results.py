"""The reading half of the SDK's StudyClient: a study's results, trials, events and worker
pods, each through the Kubernetes API (and `load_optuna_study` through the storage)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client

from optuna_operator.api import BestTrial
from optuna_operator.trials import Trial, TrialsUnavailableError, fetch_trials, filter_states
from optuna_operator.views import EventLine, StudyView

if TYPE_CHECKING:
    from collections.abc import Collection

    import optuna

__all__ = ["DASHBOARD_PORT", "STUDY_LABEL", "StudyResults"]

# manifests.STUDY_LABEL, spelled here because manifests imports the contract module and with it
# Optuna and SQLAlchemy, which a client install (the `client` extra) does not have; a unit test
# checks the two agree.
STUDY_LABEL = "optuna-operator.io/study"
# manifests.DASHBOARD_PORT, for the same reason: the port of the namespace's dashboard Service.
DASHBOARD_PORT = 8080


class StudyResults:
    """What a study produced, read for one namespace: StudyClient's base, which supplies the
    API client, the namespace and `get`."""

    api: client.ApiClient
    namespace: str
    _core: client.CoreV1Api

    def get(self, name: str) -> StudyView:
        """The study as the API server holds it (StudyClient implements it)."""
        raise NotImplementedError

    def best_trial(self, name: str) -> BestTrial | None:
        """The best trial in status (with several directions: one trial of the front)."""
        return self.get(name).status.best_trial

    def pareto_front(self, name: str) -> list[BestTrial]:
        """The Pareto front in status (multi-objective studies; at most 10 trials)."""
        return list(self.get(name).status.pareto_front or [])

    def trials(
        self, name: str, *, states: Collection[str] | None = None, offset: int = 0
    ) -> list[Trial]:
        """Every trial of the study, by number: state, values, parameters, start and end.

        Read from the study's dashboard through the API server's service proxy with this
        client's credentials (`get` on `services/proxy` for the dashboard's Service: the
        chart's `view` role has it for `optuna-dashboard`); no database credential. states:
        only these (`complete`, `pruned`, `failed`, `running`, `waiting`). offset: only
        trials numbered `offset` and above, the rest is not sent (paging through a long
        study). Raises TrialsUnavailableError when the study has no dashboard or it cannot be
        read (not up yet, unreachable), kubernetes.client.ApiException when the API refuses.
        """
        view = self.get(name)
        dashboard = view.status.dashboard
        if dashboard is None or not dashboard.service:
            raise TrialsUnavailableError(
                f"TuningStudy {view.namespace}/{view.name} has no dashboard to read trials "
                "from (spec.dashboard.enabled is false, its own storage has no read-only "
                "spec.dashboard.secretRef, or it is not up yet); status holds the best trial"
            )
        study_name = view.status.study_name or view.study.study_name
        _, found = fetch_trials(
            self.api, self.namespace, dashboard.service, DASHBOARD_PORT, study_name, offset
        )
        return filter_states(found, states)

    def events(self, name: str) -> list[EventLine]:
        """Events about the study, oldest first (the API server keeps them about an hour)."""
        found = self._core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind=TuningStudy",
        )
        lines = [
            EventLine(
                time=e.last_timestamp or e.event_time or e.first_timestamp,
                type=e.type or "",
                reason=e.reason or "",
                message=e.message or "",
                count=e.count or 1,
            )
            for e in found.items
        ]
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(lines, key=lambda e: e.time or epoch)

    def worker_pods(self, name: str) -> list[str]:
        """Names of the study's worker pods, oldest first."""
        pods: Any = self._core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{STUDY_LABEL}={name},app.kubernetes.io/component=worker",
        ).items
        ordered = sorted(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
        return [str(p.metadata.name) for p in ordered]

    def worker_logs(self, name: str, tail_lines: int | None = None) -> dict[str, str]:
        """Each worker pod's log, by pod name (the API server asks the node's kubelet)."""
        logs: dict[str, str] = {}
        kwargs: dict[str, Any] = {"tail_lines": tail_lines} if tail_lines else {}
        for pod in self.worker_pods(name):
            logs[pod] = str(self._core.read_namespaced_pod_log(pod, self.namespace, **kwargs))
        return logs

    def load_optuna_study(self, name: str, storage_url: str) -> optuna.Study:
        """The Optuna study behind the TuningStudy, for analysis (needs the storage URL and
        Optuna with a database driver: the `worker` extra)."""
        loader = _import_optuna()  # before any request: a client install says what it lacks
        study_name = self.get(name).status.study_name or f"{self.namespace}.{name}"
        study: optuna.Study = loader.load_study(study_name=study_name, storage=storage_url)
        return study


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # a `client`-only install
        raise ImportError(
            "load_optuna_study needs Optuna: pip install 'optuna-operator[worker]'"
        ) from exc
    return optuna
