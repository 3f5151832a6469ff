"""`make bench`, scale section: what idle TuningStudies cost the API server and PostgreSQL.

One operator on a fresh test bed serves N = 100 and 1,000 TuningStudies (BENCH_SCALE_SIZES;
3,000 when asked): 10 running (one worker each, a slow objective, so they stay running), the
rest idle, spread over 10 namespaces: 4 in 5 suspended, 1 in 5 finished after its own worker
ran it to a 2-trial budget. Dashboards are on as by default: each idle namespace has its
dashboard (a Deployment, Service and NetworkPolicy the operator keeps, and its pod running
optuna-dashboard on the namespace's read-only role). The idle studies use the operator's
default storage, a database of their own; the running ones name the bed's main database
(spec.storage), so PostgreSQL's per-database counters give exactly what the idle studies,
their dashboards and the operator spend on them. For each N, during a quiet window
(BENCH_SCALE_QUIET_S, default 5 minutes, no study added or changed), it reads:

- the API server's `apiserver_request_total` (all clients, watches excluded) and, per idle
  study, the growth of that rate between sizes;
- `pg_stat_database` transactions of the idle studies' database;
- the operator's RSS and CPU (from /proc): its own resident and peak memory (VmRSS, VmHWM),
  and apart from it its children's (the Optuna child and importances' processes, which exit
  when idle);
then, over a further window, the status lag of the running studies: how long a trial that
finished in the database waits until the study's status shows it (a watch on the studies,
the database polled every 0.25 s).

Targets (issues 9 and 24), judged at 1,000 studies and printed last: status lag p50 < 1 s and
p95 < 2 s; idle studies add < 0.02 API requests/s and < 0.02 transactions/s each; the
operator's RSS < 150 MiB. Before the first size it prints what the operator's imports alone
cost (a fresh interpreter importing them) and whether the operator process has numpy mapped
(Optuna brings it; the operator must not import either, storage/optuna_child.py).

The bed has no pod network (every pod's process listens on this machine), so each dashboard
pod runs optuna-dashboard through a stand-in on PATH that keeps its arguments but takes a
free port when another dashboard holds 8080; the executor's readiness probes go to 8080,
which one of them answers.
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

from kubernetes import client, watch
from sqlalchemy import create_engine, text

from bench_cluster import GROUP, PLURAL, ROOT, VERSION, BenchCluster
from testbed import Bed, BedOptions

RUNNING_NAMESPACE = "scale-running"
IDLE_NAMESPACES = 10  # idle studies are spread over several namespaces
RUNNING = 10
INTERVAL = 10.0
QUIET_SECONDS = float(os.environ.get("BENCH_SCALE_QUIET_S", "300"))
LAG_SECONDS = 40.0
RUNNING_SECRET = "running-db"
IDLE_DATABASE = "idle"
FINISHED_TRIALS = 2  # the budget each finished idle study's worker ran to
# Issue 24's targets, judged at TARGET_STUDIES.
TARGET_STUDIES = 1000
RSS_TARGET_MIB = 150
LAG_P50_TARGET_S, LAG_P95_TARGET_S = 1.0, 2.0
PER_IDLE_TARGET = 0.02  # API requests/s and DB transactions/s per idle study

# optuna-dashboard with its arguments, on 8080 when that is free and on a free port when
# another dashboard holds it: pods share this machine's ports on the bed.
DASHBOARD_STAND_IN = """#!/bin/sh
port=$({python} -c 'import socket
s = socket.socket()
# As the server binds: a port whose last connections wait in TIME_WAIT is free.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", 8080)); print(8080)
except OSError:
    s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])')
for arg; do
  shift
  if [ "$previous" = "--port" ]; then arg=$port; fi
  set -- "$@" "$arg"; previous=$arg
done
exec {dashboard} "$@"
"""


def sizes() -> tuple[int, ...]:
    raw = os.environ.get("BENCH_SCALE_SIZES", "100,1000")
    return tuple(int(n) for n in raw.split(",") if n)


def study_body(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "directions": ["minimize"],
        "objective": {"function": "hack.bench_objective:slow"},
        "budget": {"trials": 100_000},
        "workers": {"parallelism": 1},
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
# Blocked first as cli._run blocks it: the official Kubernetes client.
_IMPORTS = """
import importlib, importlib.util, re, sys
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
bare = rss()
sys.modules.setdefault("kubernetes", None)
for name in ("cli", "config", "handlers", "logs", "leader"):
    if importlib.util.find_spec(f"optuna_operator.{name}"):
        importlib.import_module(f"optuna_operator.{name}")
unwanted = ("optuna", "numpy", "sklearn", "scipy", "alembic", "kubernetes")
heavy = sorted(m for m in unwanted if sys.modules.get(m))
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


# The phase a study must reach before a size is measured, by its name's first word.
_SETTLED_PHASE = {"running": "Running", "ran": "Succeeded"}


def _settled(study: dict[str, Any]) -> bool:
    status = study.get("status") or {}
    if status.get("observedGeneration") != study["metadata"].get("generation"):
        return False
    wanted = _SETTLED_PHASE.get(study["metadata"]["name"].split("-")[0])
    return wanted is None or status.get("phase") == wanted


class Scale(BenchCluster):
    """The bed, the operator and the studies made so far."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.idle_url = bed.create_database(IDLE_DATABASE)
        self.idle = 0

    def setup(self) -> None:
        # `kubectl wait` in start_operator fails on a CRD that has no conditions yet.
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        crd = f"crd/{PLURAL}.{GROUP}"
        while "Established" not in self.kubectl("get", crd, "-o", "jsonpath={.status.conditions}"):
            time.sleep(0.5)
        namespaces = [RUNNING_NAMESPACE, *self._idle_namespaces()]
        self.start_operator(namespaces, INTERVAL, storage_url=self.idle_url)
        self.core.create_namespaced_secret(
            RUNNING_NAMESPACE,
            {"metadata": {"name": RUNNING_SECRET}, "stringData": {"url": self.bed.storage_url}},
        )
        # On a storage of their own the running studies would need a read-only URL for a
        # dashboard; the dashboards measured are the idle namespaces'.
        storage = {"secretRef": {"name": RUNNING_SECRET, "key": "url"}}
        for i in range(RUNNING):
            body = study_body(f"running-{i}", storage=storage, dashboard={"enabled": False})
            self._create(RUNNING_NAMESPACE, body)

    @staticmethod
    def _idle_namespaces() -> list[str]:
        return [f"scale-idle-{i}" for i in range(IDLE_NAMESPACES)]

    def _create(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def grow_to(self, n: int) -> None:
        """Add idle studies until there are n studies: 4 suspended for 1 that runs its
        worker to a small budget and finishes."""
        while RUNNING + self.idle < n:
            i = self.idle
            ns = self._idle_namespaces()[i % IDLE_NAMESPACES]
            if i % 5 == 4:
                objective = {"function": "hack.bench_objective:objective"}
                body = study_body(
                    f"ran-{i}", objective=objective, budget={"trials": FINISHED_TRIALS}
                )
            else:
                body = study_body(f"idle-{i}", suspend=True)
            self._create(ns, body)
            self.idle += 1

    def wait_reconciled(self, timeout: float = 1800) -> float:
        """Until every study has a phase, the running ones Running and the ones that ran
        their workers Succeeded; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            items = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            pending = [i for i in items if not _settled(i)]
            if not pending:
                return time.monotonic() - t0
            time.sleep(5)
        raise TimeoutError(f"{len(pending)} studies not reconciled after {timeout:.0f}s")

    def dashboards(self) -> tuple[int, int]:
        """(dashboard Deployments, of them available) across the bed."""
        apps = client.AppsV1Api(self.api)
        found = apps.list_deployment_for_all_namespaces(
            label_selector="app.kubernetes.io/component=dashboard"
        ).items
        return len(found), sum(1 for d in found if (d.status.available_replicas or 0) > 0)

    def quiet_window(self) -> dict[str, float]:
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
                # The running studies' own storage: Optuna's tables in the main database.
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


def dashboard_stand_in(directory: Path) -> Path:
    """A directory holding the optuna-dashboard stand-in (see the module's docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    script = directory / "optuna-dashboard"
    script.write_text(DASHBOARD_STAND_IN.format(python=sys.executable, dashboard=dashboard))
    script.chmod(0o755)
    return directory


def bench_scale() -> None:
    """Print the scale table for each N and, last, whether issue 24's targets are met."""
    print(
        f"Scale: one operator, status interval {INTERVAL:.0f}s, {RUNNING} running studies, "
        f"the rest suspended (4/5) or finished after running {FINISHED_TRIALS} trials (1/5), "
        f"dashboards on, quiet window {QUIET_SECONDS:.0f}s:"
    )
    bare, imported, heavy = import_cost()
    print(
        f"  the operator's imports alone: {imported:.0f} MiB RSS ({bare:.0f} MiB of it the bare "
        f"interpreter); modules it must not hold among them (Optuna's, the official Kubernetes "
        f"client): {heavy}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        options = BedOptions(path_prefix=[str(dashboard_stand_in(Path(tmp) / "stand-ins"))])
        bed = Bed(Path(tmp) / "bed", options).start()
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
                f"  {'N':>5} {'catch-up':>9} {'dashboards':>10} {'API req/s':>10} {'per idle':>9} "
                f"{'idle DB tx/s':>13} {'per idle':>9} {'RSS MiB':>8} {'peak':>5} {'child':>6} "
                f"{'CPU %':>6} {'lag p50':>8} {'lag p95':>8}",
                flush=True,
            )
            for n in sizes():
                scale.grow_to(n)
                catch_up = scale.wait_reconciled()
                # Reconciles queued by the last status writes and child events settle first.
                time.sleep(2 * INTERVAL)
                dashboards, available = scale.dashboards()
                quiet = scale.quiet_window()
                quiet["lag_p50"], quiet["lag_p95"] = scale.status_lag()
                idle = n - RUNNING
                quiet["api_per_idle"] = (
                    (quiet["api_rps"] - rows[0][1]["api_rps"]) / (idle - rows[0][0])
                    if rows
                    else float("nan")
                )
                quiet["db_per_idle"] = quiet["idle_tps"] / idle
                rows.append((idle, quiet))
                print(
                    f"  {n:>5} {catch_up:>8.0f}s {f'{available}/{dashboards}':>10} "
                    f"{quiet['api_rps']:>10.2f} {quiet['api_per_idle']:>9.4f} "
                    f"{quiet['idle_tps']:>13.3f} {quiet['db_per_idle']:>9.4f} "
                    f"{quiet['rss_mib']:>8.0f} {quiet['hwm_mib']:>5.0f} "
                    f"{quiet['children_mib']:>6.0f} {quiet['cpu_pct']:>6.1f} "
                    f"{quiet['lag_p50']:>7.1f}s {quiet['lag_p95']:>7.1f}s",
                    flush=True,
                )
            print(
                "  'per idle' API: growth of the API server's request rate per idle study added "
                "since the first size; DB: the idle studies' database (the operator, the idle "
                "studies' dashboards).\n  dashboards: available/Deployments. RSS: the operator "
                "process at the end of the quiet window; peak: its VmHWM (catch-ups included); "
                "child: its children then (Optuna child, importances)."
            )
            print(
                f"  operator RSS: {memory_summary(rows, imported)}; numpy mapped: "
                f"{'yes' if maps_numpy(scale.operator.pid) else 'no'}",
                flush=True,
            )
            print(f"  targets at {TARGET_STUDIES:,} studies: {targets_summary(rows)}", flush=True)
        finally:
            scale.stop()
            bed.stop()


def targets_summary(rows: list[tuple[int, dict[str, float]]]) -> str:
    """Issue 24's lag and idle-cost targets at TARGET_STUDIES, each met or not."""
    at = [quiet for idle, quiet in rows if idle + RUNNING == TARGET_STUDIES]
    if not at:
        return f"not measured (no {TARGET_STUDIES:,}-study size in this run)"
    quiet = at[0]
    checks = [
        ("lag p50", quiet["lag_p50"], LAG_P50_TARGET_S, "s"),
        ("lag p95", quiet["lag_p95"], LAG_P95_TARGET_S, "s"),
        ("API req/s per idle study", quiet["api_per_idle"], PER_IDLE_TARGET, ""),
        ("DB tx/s per idle study", quiet["db_per_idle"], PER_IDLE_TARGET, ""),
    ]
    # NaN (nothing measured) compares False: never met.
    return "; ".join(
        f"{name} {value:.4g}{unit} < {target:g}{unit}: {'met' if value < target else 'NOT met'}"
        for name, value, target, unit in checks
    )


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
