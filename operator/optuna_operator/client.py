"""The Python SDK: build a TuningStudy from the typed models, submit it, wait for it, read its
results, all through the Kubernetes API (no database credential needed).

    from optuna_operator.client import StudyClient, quick_study

    with StudyClient.from_kubeconfig(namespace="team-a") as studies:
        studies.submit(quick_study("quad", function="my.module:objective", trials=50))
        done = studies.wait("quad", timeout=3600, progress=True)
        print(done.status.best_trial)

What the API holds is what `status` holds: counts, the best trial, the Pareto front (at most
10 trials), importances, conditions; plus the study's events (`NewBestTrial` among them, while
the API server keeps events, an hour by default). Every trial, with its state, values,
parameters and times, comes from the namespace's read-only dashboard through the API server's
service proxy: `trials(name)` (needs `get` on `services/proxy` for the dashboard, which the
chart grants the `view` role). `load_optuna_study` opens the storage itself, with its URL.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, cast

from kubernetes import client, config

from optuna_operator.api import (
    GROUP,
    PLURAL,
    VERSION,
    BestTrial,
    Budget,
    Metadata,
    Parameter,
    TuningStudy,
    TuningStudySpec,
)
from optuna_operator.client_results import DASHBOARD_PORT, STUDY_LABEL, StudyResults
from optuna_operator.formatting import progress_line
from optuna_operator.lifecycle.stopping import FINISHED_PHASES
from optuna_operator.objective_source import from_function, submit_with_source
from optuna_operator.trials import Trial, TrialsUnavailableError
from optuna_operator.views import EventLine, StudyView

if TYPE_CHECKING:
    pass

__all__ = [
    "DASHBOARD_PORT",
    "STUDY_LABEL",
    "TERMINAL_PHASES",
    "EventLine",
    "LiveLine",
    "StudyClient",
    "StudyFailedError",
    "StudyView",
    "Trial",
    "TrialsUnavailableError",
    "WaitTimeoutError",
    "manifest",
    "parse_parameter",
    "quick_study",
]

TERMINAL_PHASES = FINISHED_PHASES


class StudyFailedError(RuntimeError):
    """The study reached phase Failed; the message is its Failed condition's."""

    def __init__(self, view: StudyView) -> None:
        self.view = view
        failed = view.condition("Failed")
        detail = f"{failed.reason}: {failed.message}" if failed else "no Failed condition"
        super().__init__(f"TuningStudy {view.namespace}/{view.name} failed ({detail})")


class WaitTimeoutError(TimeoutError):
    """The study did not finish within the time given to wait()."""


# --------------------------------------------------------------------------- building


def parse_parameter(text: str) -> Parameter:
    """One search-space parameter from the CLI's compact form.

    `name=float:LOW:HIGH[:log]`, `name=int:LOW:HIGH[:log]`, `name=cat:A,B,C`
    (e.g. `lr=float:1e-4:1e-1:log`, `depth=int:2:10`, `booster=cat:gbtree,dart`).
    """
    name, sep, rest = text.partition("=")
    kind, _, bounds = rest.partition(":")
    if not sep or not name or not bounds:
        raise ValueError(f"{text!r}: expected name=float:LOW:HIGH[:log], int:... or cat:A,B")
    if kind == "cat":
        choices: list[int | str] = [
            int(c) if c.lstrip("-").isdigit() else c for c in bounds.split(",")
        ]
        return Parameter.model_validate({"name": name, "categorical": {"choices": choices}})
    parts = bounds.split(":")
    if kind not in ("float", "int") or len(parts) not in (2, 3) or parts[2:] not in ([], ["log"]):
        raise ValueError(f"{text!r}: expected name=float:LOW:HIGH[:log], int:... or cat:A,B")
    number = float if kind == "float" else int
    return Parameter.model_validate(
        {
            "name": name,
            kind: {"low": number(parts[0]), "high": number(parts[1]), "log": parts[2:] == ["log"]},
        }
    )


def quick_study(
    name: str,
    *,
    namespace: str = "",
    function: str | None = None,
    command: Sequence[str] | None = None,
    search_space: Sequence[Parameter] | None = None,
    directions: Sequence[str] = ("minimize",),
    metric_names: Sequence[str] | None = None,
    trials: int | None = None,
    timeout_seconds: int | None = None,
    parallelism: int | None = None,
    image: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    seed: int | None = None,
    storage_secret: str | None = None,
    dashboard: bool | None = None,
) -> TuningStudy:
    """A TuningStudy from the few settings most studies change. Types, enums and bounds are
    checked here (pydantic.ValidationError); rules across fields (CEL, e.g. a command needs
    a searchSpace) by the API server when it is submitted.

    A setting left at None is left out of the spec, so the API's default applies (one worker,
    the TPE sampler, no pruner, the dashboard on) and `manifest(study, only_set=True)` shows
    only what was given. namespace: empty for the namespace of the client that submits it.
    storage_secret: `name[:key]` of a Secret in the namespace with the storage URL; without it
    the operator's default storage is used.
    """
    spec: dict[str, Any] = {
        "directions": list(directions),
        "metricNames": list(metric_names) if metric_names else None,
        "objective": {
            "function": function,
            "command": list(command) if command else None,
            "searchSpace": [p.to_wire() for p in search_space] if search_space else None,
        },
        # Always sent, even empty: the API requires it and says what it needs.
        "budget": {"trials": trials, "timeoutSeconds": timeout_seconds},
        "sampler": {"type": sampler, "seed": seed},
        "pruner": {"type": pruner},
        "workers": {"parallelism": parallelism, "image": image},
        "dashboard": {"enabled": dashboard},
    }
    if storage_secret:
        secret, _, key = storage_secret.partition(":")
        spec["storage"] = {"secretRef": {"name": secret, "key": key or "url"}}
    given = {k: v for k, v in _drop_none(spec).items() if v != {} or k == "budget"}
    return TuningStudy(
        metadata=Metadata(name=name, namespace=namespace),
        spec=TuningStudySpec.model_validate(given),
    )


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def manifest(study: TuningStudy, *, only_set: bool = False) -> dict[str, Any]:
    """The object to send: spec and metadata only (status belongs to the operator).

    only_set: the spec as given, without the defaults the API fills in (YAML for Git that
    keeps following the API's defaults); else every field.
    """
    body = study.to_wire()
    body.pop("status", None)
    body["metadata"] = {"name": study.metadata.name, "namespace": study.metadata.namespace}
    if only_set:
        body["spec"] = study.spec.model_dump(
            by_alias=True, exclude_none=True, exclude_unset=True, mode="json"
        )
    return body


# --------------------------------------------------------------------------- the client


class StudyClient(StudyResults):
    """TuningStudies in one namespace (or all), read and written through the Kubernetes API;
    reading results is StudyResults's half."""

    def __init__(self, api: client.ApiClient, namespace: str = "default") -> None:
        self.api = api
        self.namespace = namespace
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> StudyClient:
        """A client as kubectl would build it: $KUBECONFIG or ~/.kube/config, the current
        context and its namespace; inside a pod without a kubeconfig, the pod's account."""
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        default_path = os.path.expanduser("~/.kube/config")
        if path is None and not os.path.exists(default_path) and _in_cluster():
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            own = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
            with open(own) as f:
                return cls(client.ApiClient(), namespace or f.read().strip())
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context
        )
        return cls(api, namespace or _context_namespace(path, context))

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> StudyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ studies

    def submit(self, study: TuningStudy) -> StudyView:
        """Create the TuningStudy (in study.metadata.namespace when set, else this client's).

        An existing study of that name is an error (kubernetes.client.ApiException, 409):
        the operator resumes a study by name, so replacing one silently would mix trials.
        """
        body = manifest(study)
        namespace = study.metadata.namespace or self.namespace
        body["metadata"]["namespace"] = namespace
        created = self._custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return StudyView.from_api(cast(dict[str, Any], created))

    def get(self, name: str) -> StudyView:
        """The study as it is now."""
        obj = self._custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return StudyView.from_api(cast(dict[str, Any], obj))

    def list_studies(self, all_namespaces: bool = False) -> list[StudyView]:
        """Studies in this client's namespace, or in every namespace; sorted by namespace, name."""
        found: Any = (
            self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            if all_namespaces
            else self._custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        )
        views = [StudyView.from_api(item) for item in found.get("items", [])]
        return sorted(views, key=lambda v: (v.namespace, v.name))

    def delete(self, name: str) -> None:
        """Delete the TuningStudy (its deletionPolicy decides what happens to the data)."""
        self._custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait(
        self,
        name: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_update: Callable[[StudyView], None] | None = None,
        progress: bool = False,
        raise_on_failure: bool = True,
    ) -> StudyView:
        """Poll until the study is Succeeded or Failed and return it.

        on_update is called with every changed view; progress=True prints a live-updating
        line (a terminal or a notebook). Raises StudyFailedError on Failed (unless
        raise_on_failure is False) and WaitTimeoutError after timeout seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        line = LiveLine(sys.stdout) if progress else None
        last: Any = None
        try:
            while True:
                view = self.get(name)
                if view.status != last:
                    last = view.status
                    if on_update is not None:
                        on_update(view)
                    if line is not None:
                        line.show(progress_line(view))
                if view.done:
                    if view.phase == "Failed" and raise_on_failure:
                        raise StudyFailedError(view)
                    return view
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"TuningStudy {self.namespace}/{name} is still {view.phase} after "
                        f"{timeout:g}s"
                    )
                time.sleep(poll_interval)
        finally:
            if line is not None:
                line.end()

    def watch(self, name: str, poll_interval: float = 2.0) -> Iterator[StudyView]:
        """Yield the study each time its status changes, until it finishes."""
        last: Any = None
        while True:
            view = self.get(name)
            if view.status != last:
                last = view.status
                yield view
            if view.done:
                return
            time.sleep(poll_interval)

    def tune(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        budget: Budget,
        directions: Sequence[str] = ("minimize",),
        wait: bool = True,
        timeout: float | None = None,
        progress: bool = False,
        **settings: Any,
    ) -> BestTrial | list[BestTrial] | None:
        """Tune a plain function `fn(trial)` on the stock worker image: its source travels in
        the ConfigMap NAME-objective, which the study owns (see objective_source for what
        travels: from a module file the file, from a script or notebook the function and the
        imports it uses, never closures or other globals). settings: quick_study's (image,
        parallelism, sampler, pruner, seed, metric_names, storage_secret, dashboard).

        Returns the best trial, or with several directions the Pareto front (at most 10), once
        the study ends (None at once with wait=False); raises like wait().
        """
        shipped = from_function(fn)
        study = quick_study(
            name,
            namespace=self.namespace,
            function=shipped.function,
            directions=directions,
            **settings,
        )
        study.spec.budget = budget
        submit_with_source(self, study, shipped)
        if not wait:
            return None
        done = self.wait(name, timeout=timeout, progress=progress).status
        return done.best_trial if len(directions) == 1 else list(done.pareto_front or [])


def _context_namespace(path: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's context (the current one unless named), as kubectl."""
    contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=path
    )
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


class LiveLine:
    """One line rewritten in place on a terminal or in a notebook; elsewhere (a log file, a
    pipe) each new text is printed on a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty() or "ipykernel" in sys.modules
        self.width = 0
        self.shown = ""

    def show(self, text: str) -> None:
        if text == self.shown:
            return
        self.shown = text
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = max(self.width, len(text))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.live and self.shown:
            self.stream.write("\n")
            self.stream.flush()
