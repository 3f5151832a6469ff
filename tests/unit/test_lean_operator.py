"""The operator process never imports Optuna or numpy (issue 24: RSS below 150 MiB at 1,000
studies): its steady state reads Optuna's tables with plain SQL, and what needs Optuna runs in
a child process (storage/optuna_child.py). Here on SQLite, in subprocesses whose imports are
their own; the same paths on PostgreSQL are in tests/integration/test_study_store.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    DiscreteUniformDistribution,
    FloatDistribution,
    IntDistribution,
    IntLogUniformDistribution,
    IntUniformDistribution,
    LogUniformDistribution,
    UniformDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import TrialState

from optuna_operator.api import Direction
from optuna_operator.storage.optuna_child import ChildError, OptunaChildren
from optuna_operator.storage.study_setup import Owner, WarmStartError
from optuna_operator.storage.study_store import OPTUNA_VERSION, StorageError, StoreRegistry
from optuna_operator.storage.summary import Front, external_value, non_dominated

# What the operator process must never hold: Optuna and what comes only with it.
HEAVY = ("optuna", "numpy", "scipy", "sklearn", "pandas", "alembic")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_the_operator_process_imports_no_optuna_or_numpy() -> None:
    out = run_python(
        f"""
        import sys
        import optuna_operator.cli, optuna_operator.handlers, optuna_operator.controller
        import optuna_operator.reconcile, optuna_operator.storage.study_store
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# What `optuna-operator run` does, in a fresh process, up to kopf's own loop: the real
# cli.main(["run"]) with leader election on (the Lease read, created, renewed and released
# over apiserver.py), the registry's kopf login handler and a Cluster read, against a
# stand-in API server on loopback. kopf.run is replaced once cli._run has imported kopf
# (after it blocked the official client).
_RUN = """
import http.server, json, os, sys, threading

from optuna_operator import cli, leader

leases = {}
seen = []


class Api(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen.append([self.command, self.path.split("?")[0], self.headers.get("Authorization")])
        status, out = 404, {"kind": "Status", "reason": "NotFound", "message": "not found"}
        if "/leases" in self.path:
            if self.command == "GET" and leases:
                status, out = 200, leases["lease"]
            elif self.command in ("POST", "PUT"):
                out = json.loads(body)
                out["metadata"]["resourceVersion"] = str(len(seen))
                status, leases["lease"] = (201 if self.command == "POST" else 200), out
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
with open(os.environ["KUBECONFIG"], "w") as config:
    json.dump({
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "current-context": "x",
    }, config)
found = {}


def kopf_run(registry, **_):
    import kopf
    from kopf._core.intents.causes import Activity  # the login handler, as kopf calls it

    from optuna_operator.apiserver import connect
    from optuna_operator.kube import Cluster

    (handler,) = registry._activities.get_handlers(activity=Activity.AUTHENTICATION)
    login = handler.fn(settings=kopf.OperatorSettings())
    local = login.server.startswith("http://127.0.0.1:")
    found["login"] = [local, login.token, login.default_namespace]
    found["job"] = Cluster(connect()).get("Job", "ns", "nothing")
    found["kopf"] = sys.modules["kopf"].__name__


acquire = leader.Elector.acquire


def acquire_then_stub_kopf(self, stop):
    won = acquire(self, stop)
    sys.modules["kopf"].run = kopf_run  # imported by cli._run, after its block
    return won


leader.Elector.acquire = acquire_then_stub_kopf
found["exit"] = cli.main(["run", "--leader-elect=true", "--leader-elect-retry-period=100ms"])
found["kubernetes"] = sorted(
    name for name, module in sys.modules.items()
    if module is not None and (name == "kubernetes" or name.startswith("kubernetes."))
)
found["blocked"] = "kubernetes" in sys.modules and sys.modules["kubernetes"] is None
found["heavy"] = sorted(m for m in HEAVY if sys.modules.get(m))
found["holder"] = leases["lease"]["spec"]["holderIdentity"]
found["requests"] = seen
print(json.dumps(found))
"""


def test_the_run_process_talks_to_the_api_server_without_the_official_client(
    tmp_path: Path,
) -> None:
    """`import kopf` imports the official client when it is installed (about 12 MiB the
    operator never uses, issue 24); `run` blocks it, and its calls go through apiserver.py."""
    (tmp_path / "token").write_text("sa-token\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPTUNA_OPERATOR_", "KUBERNETES_SERVICE_"))
    }
    env.update(KUBECONFIG=str(tmp_path / "config"), POD_NAMESPACE="optuna-system")
    code = f"HEAVY = {HEAVY!r}\n" + _RUN
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.splitlines()[-1])
    requests = found.pop("requests")
    assert found == {
        "login": [True, "sa-token", "ns"],
        "job": None,  # 404 from the stand-in
        "kopf": "kopf",
        "exit": 0,
        "kubernetes": [],
        "blocked": True,
        "heavy": [],
        "holder": "",  # released at the end
    }
    lease = "/apis/coordination.k8s.io/v1/namespaces/optuna-system/leases"
    assert requests[:2] == [
        ["GET", f"{lease}/optuna-operator", "Bearer sa-token"],
        ["POST", lease, "Bearer sa-token"],
    ]
    assert ["GET", "/apis/batch/v1/namespaces/ns/jobs/nothing", "Bearer sa-token"] in requests
    assert requests[-1] == ["PUT", f"{lease}/optuna-operator", "Bearer sa-token"]


def test_creating_resuming_refreshing_and_deleting_a_study_keep_optuna_out(
    tmp_path: Path,
) -> None:
    """The operator's whole life with a study, run in a fresh process: Optuna and numpy
    are loaded only by the child, which exits when idle."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    out = run_python(
        f"""
        import json, sys, time
        from optuna_operator.api import Direction
        from optuna_operator.storage.optuna_child import OptunaChildren
        from optuna_operator.storage.study_store import Owner, StoreRegistry

        children = OptunaChildren(idle_seconds=0.5)
        stores = StoreRegistry(children=children)
        owner = Owner("ns", "s", "uid-1")
        url = {url!r}
        handle = stores.ensure_study(url, "s", [Direction.MINIMIZE], ["loss"], [{{"x": 1}}],
                                     {{"generation": 1}}, owner=owner)
        again = stores.ensure_study(url, "s", [Direction.MINIMIZE], ["loss"], None,
                                    {{"generation": 2}}, owner=owner)
        summary = stores.summarize(url, again)
        stores.fail_stale_trials(url, "s", 30)
        time.sleep(1.5)
        idle_children = children.running()
        deleted = stores.delete_study(url, "s", owner)
        stores.close()
        print(json.dumps({{
            "created": handle.created, "resumed": not again.created,
            "waiting": summary.waiting, "idle_children": idle_children, "deleted": deleted,
            "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
        }}))
        """
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "created": True,
        "resumed": True,
        "waiting": 1,  # the enqueued trial
        "idle_children": 0,
        "deleted": True,
        "heavy": [],
    }


def _stores(tmp_path: Path) -> tuple[StoreRegistry, str]:
    return StoreRegistry(children=OptunaChildren(idle_seconds=2)), f"sqlite:///{tmp_path / 's.db'}"


def test_the_child_creates_the_study_as_the_operator_did(tmp_path: Path) -> None:
    stores, url = _stores(tmp_path)
    owner = Owner("ns", "s", "uid-1")
    handle = stores.ensure_study(
        url,
        "s",
        [Direction.MAXIMIZE, Direction.MINIMIZE],
        ["acc", "loss"],
        [{"x": 0.5}, {"x": 0.5}],
        {"generation": 3, "optuna_version": OPTUNA_VERSION},
        owner=owner,
    )
    assert handle.created and handle.copied == 0
    study = optuna.load_study(study_name="s", storage=url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["optuna_operator:owner"] == owner.to_attr()
    assert attrs["optuna_operator:generation"] == 3
    assert attrs["optuna_operator:optuna_version"] == optuna.__version__ == OPTUNA_VERSION
    assert attrs["optuna_operator:warm_start_trials"] == 0
    assert study.metric_names == ["acc", "loss"]
    waiting = study.get_trials(states=[TrialState.WAITING])
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"x": 0.5}]  # enqueued once
    stores.close()


def test_warm_start_copies_through_the_child_and_its_errors_come_back(tmp_path: Path) -> None:
    stores, url = _stores(tmp_path)
    source = optuna.create_study(storage=url, study_name="source")
    source.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
    handle = stores.ensure_study(
        url, "copy", [Direction.MINIMIZE], None, None, {}, warm_start="source", warm_start_max=3
    )
    assert handle.created and handle.copied == 3
    assert len(optuna.load_study(study_name="copy", storage=url).trials) == 3
    with pytest.raises(WarmStartError, match="'missing' does not exist"):
        stores.ensure_study(
            url, "other", [Direction.MINIMIZE], None, None, {}, warm_start="missing"
        )
    stores.close()


def test_stale_trials_are_failed_and_retried_by_the_child(tmp_path: Path) -> None:
    stores, url = _stores(tmp_path)
    handle = stores.ensure_study(url, "s", [Direction.MINIMIZE], None, None, {})
    study = optuna.load_study(study_name="s", storage=url)
    silent = study.ask({"x": FloatDistribution(0, 1)})  # RUNNING, never a heartbeat
    # A trial seen without a heartbeat gets a stand-in at the next pass, which the operator
    # carries from one pass (and child) to the next.
    stores.fail_stale_trials(url, "s", heartbeat_interval=1)
    stores.fail_stale_trials(url, "s", heartbeat_interval=1)
    time.sleep(2.5)  # the stand-in goes stale after the grace period of 2 x 1 s
    stores.fail_stale_trials(url, "s", heartbeat_interval=1)
    summary = stores.summarize(url, handle)
    assert (summary.running, summary.failed, summary.waiting) == (0, 1, 1)
    retry = study.get_trials(states=[TrialState.WAITING])[0]
    assert retry.params == silent.params
    stores.close()


def test_only_the_owner_deletes(tmp_path: Path) -> None:
    stores, url = _stores(tmp_path)
    stores.ensure_study(url, "s", [Direction.MINIMIZE], None, None, {}, owner=Owner("n", "s", "1"))
    assert not stores.delete_study(url, "s", Owner("n", "s", "2"))
    assert stores.delete_study(url, "s", Owner("n", "s", "1"))
    assert not stores.delete_study(url, "s", Owner("n", "s", "1"))
    stores.close()


def test_a_stuck_child_is_killed_and_reported_without_credentials() -> None:
    children = OptunaChildren(timeout=0.05)
    url = "postgresql+psycopg2://user:hunter2@192.0.2.1:5432/db"  # TEST-NET: never answers
    with pytest.raises(ChildError) as raised:
        children.call("open", url)
    assert raised.value.kind == "timeout" and "hunter2" not in str(raised.value)
    assert children.running() == 0
    children.close()


def test_child_errors_are_storage_errors_free_of_credentials(tmp_path: Path) -> None:
    children = OptunaChildren(idle_seconds=5)
    url = "postgresql+psycopg2://user:hunter2@127.0.0.1:1/db"  # refused at once
    with pytest.raises(ChildError) as raised:
        children.call("open", url)
    assert raised.value.kind == "SQLAlchemyError"
    assert "refused" in str(raised.value) and "hunter2" not in str(raised.value)
    assert children.running() == 1  # an error answered is no reason to end the child
    children.close()
    assert children.running() == 0
    with pytest.raises(StorageError) as storage_error:
        StoreRegistry(children=OptunaChildren()).storage(url)
    assert "hunter2" not in str(storage_error.value)


# Made in the test: the older distributions warn when made (Optuna deprecated them).
DISTRIBUTIONS: list[Callable[[], BaseDistribution]] = [
    lambda: FloatDistribution(0, 1),
    lambda: FloatDistribution(1e-5, 1, log=True),
    lambda: FloatDistribution(0, 1, step=0.25),
    lambda: IntDistribution(1, 9),
    lambda: IntDistribution(1, 64, log=True),
    lambda: IntDistribution(0, 10, step=2),
    lambda: CategoricalDistribution(["a", 1, 2.5, None, True]),
    lambda: UniformDistribution(0, 1),
    lambda: LogUniformDistribution(1e-3, 1),
    lambda: DiscreteUniformDistribution(0, 1, 0.5),
    lambda: IntUniformDistribution(0, 8),
    lambda: IntLogUniformDistribution(1, 8),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_parameter_values_read_back_as_optuna_reads_them(
    make: Callable[[], BaseDistribution],
) -> None:
    distribution = make()
    stored = distribution_to_json(distribution)
    for internal in (0.0, 1.0, 2.0, 4.0):
        if isinstance(distribution, CategoricalDistribution) and internal >= len(
            distribution.choices
        ):
            continue
        expected = json_to_distribution(stored).to_external_repr(internal)
        got = external_value(internal, stored)
        assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "abbreviated",
    [
        {"type": "categorical", "choices": ["x", "y"]},
        {"type": "float", "low": 0, "high": 1},
        {"type": "int", "low": 0, "high": 3},
    ],
)
def test_abbreviated_distributions_read_back_as_optuna_reads_them(
    abbreviated: dict[str, object],
) -> None:
    stored = json.dumps(abbreviated)
    expected = json_to_distribution(stored).to_external_repr(1.0)
    got = external_value(1.0, stored)
    assert got == expected and type(got) is type(expected)


def test_ties_on_one_objective_are_all_best_in_their_order() -> None:
    candidates: Front = {
        1: (0, (2.0,)),
        2: (1, (3.0,)),
        3: (2, (3.0,)),
        4: (3, (float("inf"),)),
    }
    assert list(non_dominated(candidates, (1,))) == [4]
    assert list(non_dominated(candidates, (-1,))) == [1]
    del candidates[4]
    assert list(non_dominated(candidates, (1,))) == [2, 3]


class _FakeChild:
    """A child that answers after `delay` seconds, recording how many serve at once."""

    running = 0
    most = 0
    started = 0

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.last_used = time.monotonic()
        self.ended = False
        type(self).started += 1

    def request(self, message: dict[str, object], timeout: float) -> dict[str, object]:
        cls = type(self)
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        time.sleep(self.delay)
        cls.running -= 1
        if message["op"] == "crash":
            raise ChildError("crash", "the Optuna child process exited with code -9")
        return {"result": message["url"], "logs": [[20, "test", "done"]]}

    def alive(self) -> bool:
        return not self.ended

    def close(self) -> None:
        self.ended = True

    def kill(self) -> None:
        self.ended = True


def _fake_children(
    monkeypatch: pytest.MonkeyPatch, delay: float, **kwargs: float
) -> OptunaChildren:
    from optuna_operator.storage import optuna_child

    class Fake(_FakeChild):
        running = most = started = 0

    monkeypatch.setattr(optuna_child._Child, "start", classmethod(lambda cls, _: Fake(delay)))
    children = OptunaChildren(**kwargs)  # type: ignore[arg-type]
    children.fake = Fake  # type: ignore[attr-defined]
    return children


def _concurrently(children: OptunaChildren, calls: list[tuple[str, str]]) -> list[object]:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: children.call(*call), calls))


def test_one_url_holds_one_child_and_others_run_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    children = _fake_children(monkeypatch, 0.2, max_children=2, per_url=1, idle_seconds=30)
    fake = children.fake  # type: ignore[attr-defined]
    assert _concurrently(children, [("open", "db-a")] * 3) == ["db-a"] * 3
    assert fake.most == 1  # one URL: one at a time
    fake.most = 0
    _concurrently(children, [("open", "db-a"), ("open", "db-b"), ("open", "db-c")])
    assert fake.most == 2  # never more than max_children
    assert fake.started == 2 and children.running() == 2  # warm children were reused
    children.close()
    assert children.running() == 0


def test_idle_children_end_and_a_crashed_one_frees_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    children = _fake_children(monkeypatch, 0.0, max_children=1, per_url=1, idle_seconds=0.2)
    with pytest.raises(ChildError, match="exited"):
        children.call("crash", "db-a")
    assert children.running() == 0
    assert children.call("open", "db-a") == "db-a"
    assert children.running() == 1
    time.sleep(0.6)
    assert children.running() == 0  # ended by the reaper once idle
    assert children.call("open", "db-b") == "db-b"  # and started again on demand
    children.close()


def test_a_child_killed_while_idle_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    children = _fake_children(monkeypatch, 0.0, max_children=1, per_url=1, idle_seconds=30)
    assert children.call("open", "db-a") == "db-a"
    (idle,) = children._idle
    idle.ended = True  # killed from outside (the OOM killer, say)
    assert children.call("open", "db-a") == "db-a"
    assert children.fake.started == 2 and children.running() == 1  # type: ignore[attr-defined]
    children.close()
