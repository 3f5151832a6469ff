"""Every trial of a study, read from the namespace's optuna-dashboard through the API
server's service proxy: the user's own kubeconfig, no database credential.

    GET /api/v1/namespaces/NS/services/SVC:8080/proxy/api/studies            -> study ids
    GET /api/v1/namespaces/NS/services/SVC:8080/proxy/api/studies/ID?after=N -> trials N..

The API server authorizes each request as `get` on `services/proxy` with the resource name
written in the path (`optuna-dashboard:8080`), so whoever may get that in the namespace may
list its trials: the chart's ClusterRole aggregated into `view` grants exactly that name, and
the dashboard reads the database through the namespace's read-only role. Only GET is sent;
`get` does not allow the dashboard's POST/PUT/DELETE endpoints through the proxy anyway.

Pure parsing and the proxy call only: no Optuna, no SQLAlchemy (the `client` extra).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

__all__ = [
    "TRIAL_STATES",
    "Trial",
    "TrialsUnavailableError",
    "dashboard_study_id",
    "fetch_trials",
    "filter_states",
    "parse_trial",
    "parse_trials",
    "proxy_path",
    "proxy_resource_name",
    "sort_trials",
]

# The dashboard's state names (Optuna's TrialState, capitalized) as this API spells them:
# the counts in status.trials use the same words (Fail -> Failed).
_STATES = {
    "Complete": "Complete",
    "Pruned": "Pruned",
    "Fail": "Failed",
    "Running": "Running",
    "Waiting": "Waiting",
}
# What `--state` and `states=` take: status.trials' keys.
TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")
# Seconds the API server (and the dashboard behind it) may take per request.
REQUEST_TIMEOUT_S = 60


class TrialsUnavailableError(LookupError):
    """The trials cannot be read from the dashboard: the study has none, it is not up yet,
    the API server cannot reach it, or it does not know the study (yet)."""


@dataclass(frozen=True)
class Trial:
    """One trial as the dashboard serves it. Times are the storage's (Optuna writes the
    worker's local time, no zone: the worker images run in UTC)."""

    number: int
    state: str  # Complete, Pruned, Failed, Running, Waiting
    values: tuple[float, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    start: datetime | None = None
    complete: datetime | None = None
    user_attrs: dict[str, str] = field(default_factory=dict)
    constraints: tuple[float, ...] = ()

    @property
    def duration(self) -> timedelta | None:
        if self.start is None or self.complete is None:
            return None
        return self.complete - self.start

    @property
    def feasible(self) -> bool:
        """Optuna's rule: every constraint value <= 0 (no constraints: feasible)."""
        return all(c <= 0 for c in self.constraints)

    def to_dict(self, metric_names: Sequence[str]) -> dict[str, Any]:
        """The trial for -o json/yaml: values by metric name, as `best -o json` has them."""
        doc: dict[str, Any] = {"number": self.number, "state": self.state}
        if self.values is not None:
            names = _names(metric_names, len(self.values))
            doc["values"] = dict(zip(names, self.values, strict=True))
        doc["params"] = dict(self.params)
        if self.constraints:
            doc["constraints"] = list(self.constraints)
            doc["feasible"] = self.feasible
        doc["start"] = self.start.isoformat() if self.start else None
        doc["complete"] = self.complete.isoformat() if self.complete else None
        duration = self.duration
        doc["durationSeconds"] = round(duration.total_seconds(), 3) if duration else None
        if self.user_attrs:
            doc["userAttrs"] = dict(self.user_attrs)
        return doc


def _names(metric_names: Sequence[str], count: int) -> list[str]:
    names = list(metric_names)[:count]
    return names + [f"value{i}" for i in range(len(names), count)]


# --------------------------------------------------------------------------- parsing


def _float(value: Any) -> float:
    """A value as the dashboard writes it: a number, or "inf"/"-inf"/"nan"."""
    return float(value)  # float("inf"), float("-inf") and float("nan") parse as such


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


_PYTYPES: dict[str, Any] = {
    "<class 'int'>": int,
    "<class 'float'>": float,
    "<class 'str'>": str,
    "<class 'bool'>": lambda text: text == "True",
    "<class 'NoneType'>": lambda _text: None,
}


def _param_value(param: dict[str, Any]) -> Any:
    """A parameter's value with its type: the distribution's internal number for float and
    int parameters, the categorical choice (typed by its pytype) for categorical ones; the
    dashboard's text when neither applies."""
    text = param.get("param_external_value")
    distribution = param.get("distribution") or {}
    internal: Any = param.get("param_internal_value")
    kind = distribution.get("type")
    try:
        if kind == "FloatDistribution":
            return float(internal)
        if kind == "IntDistribution":
            return round(float(internal))
        if kind == "CategoricalDistribution":
            choice = distribution["choices"][int(internal)]
            convert = _PYTYPES.get(str(choice.get("pytype")), str)
            return convert(choice["value"])
    except (TypeError, ValueError, KeyError, IndexError):
        pass
    return text


def parse_trial(obj: dict[str, Any]) -> Trial:
    """One element of the dashboard's `trials` list."""
    values = obj.get("values")
    return Trial(
        number=int(obj["number"]),
        state=_STATES.get(str(obj.get("state")), str(obj.get("state"))),
        values=tuple(_float(v) for v in values) if values is not None else None,
        params={str(p["name"]): _param_value(p) for p in obj.get("params") or []},
        start=_time(obj.get("datetime_start")),
        complete=_time(obj.get("datetime_complete")),
        user_attrs={str(a["key"]): str(a["value"]) for a in obj.get("user_attrs") or []},
        constraints=tuple(_float(c) for c in obj.get("constraints") or []),
    )


def parse_trials(detail: dict[str, Any]) -> list[Trial]:
    """The trials of the dashboard's study detail (`/api/studies/ID`), by number."""
    return sorted((parse_trial(t) for t in detail.get("trials") or []), key=lambda t: t.number)


def dashboard_study_id(summaries: dict[str, Any], study_name: str) -> int:
    """The dashboard's id (the storage's study id) of the study named so."""
    for study in summaries.get("study_summaries") or []:
        if study.get("study_name") == study_name:
            return int(study["study_id"])
    raise TrialsUnavailableError(
        f"the dashboard does not list the Optuna study {study_name!r} (yet): it appears once "
        "the operator has created it in the database"
    )


def sort_trials(trials: Sequence[Trial], by: str, directions: Sequence[str]) -> list[Trial]:
    """`number`: trial order. `value`: best first by the first objective (its direction);
    trials without values (pruned, failed, running) follow, by number; NaN last of those
    with values."""
    if by == "number":
        return sorted(trials, key=lambda t: t.number)
    if by != "value":
        raise ValueError(f"unknown sort key {by!r}: number or value")
    sign = -1.0 if (directions[:1] or ["minimize"])[0] == "maximize" else 1.0

    def key(t: Trial) -> tuple[int, float, int]:
        if not t.values or math.isnan(t.values[0]):
            return (1 if t.values else 2, 0.0, t.number)
        return (0, sign * t.values[0], t.number)

    return sorted(trials, key=key)


def filter_states(trials: Sequence[Trial], states: Collection[str] | None) -> list[Trial]:
    """Only the trials in these states (TRIAL_STATES' words, any case); all when empty."""
    if not states:
        return list(trials)
    wanted = {s.lower() for s in states}
    unknown = wanted - set(TRIAL_STATES)
    if unknown:
        raise ValueError(f"unknown trial state {sorted(unknown)}: one of {', '.join(TRIAL_STATES)}")
    return [t for t in trials if t.state.lower() in wanted]


# --------------------------------------------------------------------------- the proxy


def proxy_resource_name(service: str, port: int) -> str:
    """What the path names and RBAC authorizes: `services/proxy` of `SERVICE:PORT`."""
    return f"{service}:{port}"


def proxy_path(namespace: str, service: str, port: int, path: str) -> str:
    """The API server's service-proxy path to `path` on the Service's port."""
    name = quote(proxy_resource_name(service, port), safe=":")
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{name}/proxy/{path}"


def _get_json(api: Any, path: str, query: dict[str, str] | None = None) -> Any:
    """GET through the API server with the client's credentials (TLS, token, exec plugins);
    an error answer raises kubernetes' ApiException carrying the API server's Status body.

    Built on urllib3 and the client's Configuration directly: the generated proxy method
    cannot pass a query string, and ApiClient.call_api changed its signature across the
    client's versions this package allows."""
    from kubernetes.client import ApiException

    configuration = api.configuration
    headers = {"Accept": "application/json", **api.default_headers}
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[setting["key"]] = setting["value"]
    response = api.rest_client.pool_manager.request(
        "GET",
        configuration.host + path,
        fields=query,
        headers=headers,
        timeout=REQUEST_TIMEOUT_S,
        preload_content=True,
    )
    if not 200 <= response.status <= 299:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = response.data.decode("utf-8", "replace")
        error.headers = response.headers
        raise error
    return json.loads(response.data)


def _proxy_error(exc: Any, namespace: str, service: str) -> TrialsUnavailableError | None:
    """What a failed proxy request means, for the errors that are not about the user's
    rights (401 and 403 stay ApiExceptions: the API server's message says who lacks what)."""
    status = getattr(exc, "status", None)
    if status in (None, 401, 403):
        return None
    body = getattr(exc, "body", "") or ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        # The API server's own answers are Status objects; the dashboard's, {"reason": ...}.
        from_api_server = doc.get("kind") == "Status"
        message = str(doc.get("message") or doc.get("reason") or "")
    else:
        from_api_server = False
        message = body.strip().splitlines()[0][:200] if body.strip() else ""
    where = f"the dashboard Service {namespace}/{service}"
    if status == 404 and from_api_server:
        return TrialsUnavailableError(f"{where} does not exist (yet): {message}")
    if status == 503 and "no endpoints available" in message:
        return TrialsUnavailableError(f"{where} has no ready pod yet: {message}")
    if from_api_server and status in (500, 502, 503, 504):
        return TrialsUnavailableError(
            f"the API server could not reach {where}: {message or status}. The dashboard's "
            "NetworkPolicy must admit the API server (the chart's dashboard.allowedFrom)"
        )
    return TrialsUnavailableError(f"{where} answered {status}: {message or '(no message)'}")


def fetch_trials(
    api: Any, namespace: str, service: str, port: int, study_name: str, offset: int = 0
) -> tuple[dict[str, Any], list[Trial]]:
    """The dashboard's study detail and its trials numbered `offset` and above (trial
    numbers count from 0 in a study, so the dashboard's `after` skips exactly those)."""
    from kubernetes.client import ApiException

    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")
    try:
        summaries = _get_json(api, proxy_path(namespace, service, port, "api/studies"))
        study_id = dashboard_study_id(summaries, study_name)
        detail = _get_json(
            api,
            proxy_path(namespace, service, port, f"api/studies/{study_id}"),
            {"after": str(offset)},
        )
    except ApiException as exc:
        unavailable = _proxy_error(exc, namespace, service)
        if unavailable is None:
            raise
        raise unavailable from None
    return detail, parse_trials(detail)
