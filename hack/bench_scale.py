"""`make bench`, scale section: what idle TuningStudies cost the API server and PostgreSQL.

One operator on a fresh test bed serves N = 100, 500 and 1,000 TuningStudies: 10 running
(one worker each, a slow objective, so they stay running), the rest idle: suspended or
finished. Idle studies keep their Optuna studies in a database of their own, so PostgreSQL's
per-database counters give exactly what the operator spends on them. For each N, during a
quiet minute (no study added or changed), it reads:

- the API server's `apiserver_request_total` (all clients, watches excluded) and, per idle
  study, the growth of that rate between sizes;
- `pg_stat_database` transactions of the idle studies' database (only the operator uses it);
- the operator's RSS and CPU (from /proc): its own resident and peak memory (VmRSS, VmHWM),
  and apart from it its children's (the Optuna child and importances' processes, which exit
  when idle);
then, over a further window, the status lag of the running studies: how long a trial that
finished in the database waits until the study's status shows it (a watch on the studies,
the database polled every 0.25 s).

Targets (issues 9 and 24): idle studies add < 0.02 API requests/s and < 0.02 transactions/s
each, the operator's RSS < 150 MiB at 1,000, lag p95 <= 2 x the status interval. Before the
first size it prints what the operator's imports alone cost (a fresh interpreter importing
them) and whether the operator process has numpy mapped (Optuna brings it; the operator must
not import either, storage/optuna_child.py).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from kubernetes import watch
from sqlalchemy import create_engine, text

from bench_cluster import GROUP, PLURAL, ROOT, VERSION, BenchCluster
from optuna_operator.storage.tenancy import tenant_names
from testbed import Bed

optuna.logging.set_verbosity(optuna.logging.WARNING)

RUNNING_NAMESPACE = "scale-running"
IDLE_NAMESPACES = 10  # idle studies are spread over several namespaces
RUNNING = 10
INTERVAL = 10.0
QUIET_SECONDS = 60.0
LAG_SECONDS = 40.0
IDLE_SECRET = "idle-db"
IDLE_DATABASE = "idle"
RSS_TARGET_MIB = 150  # the operator's own RSS at 1,000 studies (issue 24)


def sizes() -> tuple[int, ...]:
    raw = os.environ.get("BENCH_SCALE_SIZES", "100,500,1000")
    return tuple(int(n) for n in raw.split(",") if n)


def study_body(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "directions": ["minimize"],
        "objective": {"function": "hack.bench_objective:slow"},
        "budget": {"trials": 100_000},
        "workers": {"parallelism": 1},
        "dashboard": {"enabled": False},
        **spec,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": base,
    }


def api_request_count(bed: Bed) -> float:
    """Requests the API server has served (watches excluded: one per informer)."""
    kubectl = [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig)]
    metrics = subprocess.run(
        [*kubectl, "get", "--raw", "/metrics"], check=True, capture_output=True, text=True
    ).stdout
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def transactions(url: str, database: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :db"),
            {"db": database},
        ).scalar()
    engine.dispose()
    return int(value or 0)


def process_usage(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process and its children."""
    rss_kib, cpu_ticks = 0, 0
    for p in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status)
        rss_kib += int(match.group(1)) if match else 0
        cpu_ticks += int(stat[11]) + int(stat[12])
    return rss_kib / 1024, cpu_ticks / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> dict[str, float]:
    """The process's own VmRSS and VmHWM and its children's VmRSS, in MiB."""
    own = _status_kib(pid)
    children = sum(_status_kib(child).get("VmRSS", 0) for child in _children(pid))
    return {
        "rss": own.get("VmRSS", 0) / 1024,
        "hwm": own.get("VmHWM", 0) / 1024,
        "children": children / 1024,
    }


def _status_kib(pid: int) -> dict[str, int]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}


def maps_numpy(pid: int) -> bool:
    """Whether the process has numpy's extension mapped (it came with Optuna)."""
    try:
        return "numpy" in Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError:
        return False


# What `optuna-operator run` imports before it serves a study (cli.run, handlers.py and all
# the reconcile and storage modules under it), in a fresh interpreter: the imports' share.
_IMPORTS = """
import importlib, importlib.util, re, sys
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
bare = rss()
for name in ("cli", "config", "handlers", "logs", "leader"):
    if importlib.util.find_spec(f"optuna_operator.{name}"):
        importlib.import_module(f"optuna_operator.{name}")
heavy = sorted(m for m in ("optuna", "numpy", "sklearn", "scipy", "alembic") if m in sys.modules)
print(bare, rss(), ",".join(heavy) or "none")
"""


def import_cost() -> tuple[float, float, str]:
    """(bare interpreter MiB, after the operator's imports MiB, heavy modules among them)."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    return float(out[0]), float(out[1]), out[2]


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


class Scale(BenchCluster):
    """The bed, the operator and the studies made so far."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.idle_url = bed.create_database(IDLE_DATABASE)
        # Optuna's tables exist before the operator starts: both creating them at once race
        # on alembic_version. One storage for every study made here (one connect, not 200).
        self.idle_storage = optuna.storages.RDBStorage(self.idle_url)
        self.idle = 0

    def setup(self) -> None:
        # `kubectl wait` in start_operator fails on a CRD that has no conditions yet.
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        crd = f"crd/{PLURAL}.{GROUP}"
        while "Established" not in self.kubectl("get", crd, "-o", "jsonpath={.status.conditions}"):
            time.sleep(0.5)
        self.start_operator([RUNNING_NAMESPACE, *self._idle_namespaces()], INTERVAL)
        for ns in self._idle_namespaces():
            self.core.create_namespaced_secret(
                ns, {"metadata": {"name": IDLE_SECRET}, "stringData": {"url": self.idle_url}}
            )
        for i in range(RUNNING):
            self._create(RUNNING_NAMESPACE, study_body(f"running-{i}"))

    @staticmethod
    def _idle_namespaces() -> list[str]:
        return [f"scale-idle-{i}" for i in range(IDLE_NAMESPACES)]

    def _create(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def grow_to(self, n: int) -> None:
        """Add idle studies until there are n studies: 4 suspended for 1 finished."""
        storage = {"secretRef": {"name": IDLE_SECRET, "key": "url"}}
        while RUNNING + self.idle < n:
            i = self.idle
            ns = self._idle_namespaces()[i % IDLE_NAMESPACES]
            name = f"idle-{i}"
            if i % 5 == 4:
                # Finished before the operator sees it: one trial in, a budget of one.
                study = optuna.create_study(
                    storage=self.idle_storage, study_name=f"{ns}.{name}", direction="minimize"
                )
                study.add_trial(optuna.trial.create_trial(value=1.0))
                # Made outside the operator: resumed only on request (ownership).
                body = study_body(
                    name, budget={"trials": 1}, storage=storage, adoptExistingStudy=True
                )
            else:
                body = study_body(name, suspend=True, storage=storage)
            self._create(ns, body)
            self.idle += 1

    def wait_reconciled(self, timeout: float = 900) -> float:
        """Until every study has a phase; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            items = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            pending = [
                i
                for i in items
                if (i.get("status") or {}).get("observedGeneration")
                != i["metadata"].get("generation")
                or (
                    i["metadata"]["name"].startswith("running")
                    and (i.get("status") or {}).get("phase") != "Running"
                )
            ]
            if not pending:
                return time.monotonic() - t0
            time.sleep(2)
        raise TimeoutError(f"{len(pending)} studies not reconciled after {timeout:.0f}s")

    def quiet_minute(self) -> dict[str, float]:
        assert self.operator is not None
        requests0, xacts0 = api_request_count(self.bed), transactions(self.idle_url, IDLE_DATABASE)
        _, cpu0 = process_usage(self.operator.pid)
        t0 = time.monotonic()
        time.sleep(QUIET_SECONDS)
        elapsed = time.monotonic() - t0
        requests1, xacts1 = api_request_count(self.bed), transactions(self.idle_url, IDLE_DATABASE)
        _, cpu1 = process_usage(self.operator.pid)
        mem = memory(self.operator.pid)
        # The counter reads themselves: 1 metrics GET, 2 short connections.
        return {
            "api_rps": (requests1 - requests0 - 1) / elapsed,
            "idle_tps": (xacts1 - xacts0 - 2) / elapsed,
            "rss_mib": mem["rss"],
            "hwm_mib": mem["hwm"],
            "children_mib": mem["children"],
            "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
        }

    def status_lag(self) -> tuple[float, float]:
        """p50 and p95 seconds a finished trial waits to appear in its study's status."""
        engine = create_engine(self.bed.storage_url)
        first_seen: dict[tuple[str, int], float] = {}  # (study, finished count) -> time
        shown: dict[str, int] = {}
        lags: list[float] = []
        stop = threading.Event()

        def poll_database() -> None:
            with engine.connect() as conn:
                # The running studies live in their namespace's schema; the admin role is a
                # member of its owner (tenancy), so it may read there.
                schema = tenant_names(RUNNING_NAMESPACE).schema
                conn.execute(text(f'SET search_path TO "{schema}"'))
                while not stop.is_set():
                    rows = conn.execute(
                        text(
                            "SELECT s.study_name, COUNT(*) FROM trials t JOIN studies s "
                            "ON s.study_id = t.study_id WHERE t.state IN ('COMPLETE', 'PRUNED') "
                            "GROUP BY s.study_name"
                        )
                    ).all()
                    conn.commit()
                    now = time.monotonic()
                    for name, count in rows:
                        for c in range(shown.get(name, 0) + 1, int(count) + 1):
                            first_seen.setdefault((name, c), now)
                    time.sleep(0.25)

        poller = threading.Thread(target=poll_database, daemon=True)
        poller.start()
        stream = watch.Watch()
        deadline = time.monotonic() + LAG_SECONDS
        for event in stream.stream(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            RUNNING_NAMESPACE,
            PLURAL,
            timeout_seconds=int(LAG_SECONDS),
        ):
            obj = event["object"]
            name = f"{RUNNING_NAMESPACE}.{obj['metadata']['name']}"
            trials = (obj.get("status") or {}).get("trials") or {}
            count = int(trials.get("complete", 0)) + int(trials.get("pruned", 0))
            now = time.monotonic()
            if name in shown:
                for c in range(shown[name] + 1, count + 1):
                    if (name, c) in first_seen:
                        lags.append(max(0.0, now - first_seen[(name, c)]))
            shown[name] = max(count, shown.get(name, 0))
            if now > deadline:
                break
        stop.set()
        poller.join()
        engine.dispose()
        if not lags:
            return float("nan"), float("nan")
        lags.sort()
        return statistics.median(lags), lags[min(len(lags) - 1, int(0.95 * len(lags)))]


def bench_scale() -> None:
    """Print the scale table for each N."""
    print(
        f"Scale: one operator, status interval {INTERVAL:.0f}s, {RUNNING} running studies, "
        "the rest suspended (4/5) or finished (1/5):"
    )
    bare, imported, heavy = import_cost()
    print(
        f"  the operator's imports alone: {imported:.0f} MiB RSS ({bare:.0f} MiB of it the bare "
        f"interpreter); Optuna-side modules among them: {heavy}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        bed = Bed(Path(tmp) / "bed").start()
        scale = Scale(bed)
        try:
            scale.setup()
            scale.wait_reconciled()
            assert scale.operator is not None
            # What the operator holds before idle studies come: imports, clients, threads.
            start = memory(scale.operator.pid)
            print(
                f"  operator RSS with the {RUNNING} running studies only: {start['rss']:.0f} MiB "
                f"(peak {start['hwm']:.0f}, children {start['children']:.0f}); numpy mapped: "
                f"{'yes' if maps_numpy(scale.operator.pid) else 'no'}",
                flush=True,
            )
            rows = []
            print(
                f"  {'N':>5} {'catch-up':>9} {'API req/s':>10} {'per idle':>9} "
                f"{'idle DB tx/s':>13} {'per idle':>9} {'RSS MiB':>8} {'peak':>5} {'child':>6} "
                f"{'CPU %':>6} {'lag p50':>8} {'lag p95':>8}",
                flush=True,
            )
            for n in sizes():
                scale.grow_to(n)
                catch_up = scale.wait_reconciled()
                # Reconciles queued by the last status writes and child events settle first.
                time.sleep(2 * INTERVAL)
                quiet = scale.quiet_minute()
                p50, p95 = scale.status_lag()
                idle = n - RUNNING
                per_idle = (
                    (quiet["api_rps"] - rows[0][1]["api_rps"]) / (idle - rows[0][0])
                    if rows
                    else float("nan")
                )
                rows.append((idle, quiet))
                print(
                    f"  {n:>5} {catch_up:>8.0f}s {quiet['api_rps']:>10.2f} {per_idle:>9.4f} "
                    f"{quiet['idle_tps']:>13.3f} {quiet['idle_tps'] / idle:>9.4f} "
                    f"{quiet['rss_mib']:>8.0f} {quiet['hwm_mib']:>5.0f} "
                    f"{quiet['children_mib']:>6.0f} {quiet['cpu_pct']:>6.1f} "
                    f"{p50:>7.1f}s {p95:>7.1f}s",
                    flush=True,
                )
            print(
                "  'per idle' API: growth of the API server's request rate per idle study added "
                "since the first size; DB: the idle studies' database (only the operator uses it)."
                "\n  RSS: the operator process at the end of the quiet minute; peak: its VmHWM "
                "(catch-ups included); child: its children then (Optuna child, importances)."
            )
            print(
                f"  operator RSS: {memory_summary(rows, imported)}; numpy mapped: "
                f"{'yes' if maps_numpy(scale.operator.pid) else 'no'}",
                flush=True,
            )
        finally:
            scale.stop()
            bed.stop()


def memory_summary(rows: list[tuple[int, dict[str, float]]], imported: float) -> str:
    """The RSS at each size, the imports' share of the largest, and the target."""
    sized = [(idle + RUNNING, quiet) for idle, quiet in rows]
    parts = [f"{n:,} studies {quiet['rss_mib']:.0f} MiB" for n, quiet in sized]
    largest_n, largest = sized[-1]
    share = 100 * imported / largest["rss_mib"] if largest["rss_mib"] else float("nan")
    verdict = "met" if largest_n >= 1000 and largest["rss_mib"] < RSS_TARGET_MIB else "not met"
    return (
        f"{', '.join(parts)}; imports {imported:.0f} MiB = {share:.0f}% of it; target < "
        f"{RSS_TARGET_MIB} MiB at 1,000: {verdict}"
    )


if __name__ == "__main__":
    bench_scale()
