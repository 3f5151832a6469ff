"""The pod executor: plays the node where there is no kubelet and no container runtime.

It registers a Node, keeps it Ready, watches the pods the real scheduler binds to it and
runs each one's containers as local processes (see podworker and README.md). Run as its own
process by the bed: `python -m testbed executor --config executor.json`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from testbed.executorconfig import ExecutorConfig
from testbed.kubeapi import JSON, ApiError, KubeApi, q
from testbed.kubeconfig import read_kubeconfig
from testbed.node import NodeAgent
from testbed.podenv import config_map_data, decode_secret
from testbed.podworker import PodWorker, delete_now

__all__ = ["ApiRefs", "Executor", "run_executor"]

log = logging.getLogger("testbed.executor")
TERMINAL = ("Succeeded", "Failed")


class ApiRefs:
    """Secret and ConfigMap look-ups for environment variables, read fresh each time."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    def _get(self, path: str) -> JSON | None:
        try:
            return self._api.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get(f"/api/v1/namespaces/{q(namespace)}/secrets/{q(name)}")
        return None if obj is None else decode_secret(obj)

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get(f"/api/v1/namespaces/{q(namespace)}/configmaps/{q(name)}")
        return None if obj is None else config_map_data(obj)


class Executor:
    def __init__(self, api: KubeApi, config: ExecutorConfig) -> None:
        self._api = api
        self._config = config
        self._refs = ApiRefs(api)
        self._workers: dict[str, PodWorker] = {}
        self._finalized: set[str] = set()
        self.stopping = threading.Event()

    def _finalize(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        if uid not in self._finalized:
            self._finalized.add(uid)
            delete_now(self._api, pod)

    def handle(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            worker = self._workers.pop(uid, None)
            self._finalized.discard(uid)
            if worker is not None:
                worker.gone()
            return
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        worker = self._workers.get(uid)
        if worker is None:
            if self.stopping.is_set():
                return
            if pod.get("status", {}).get("phase") in TERMINAL or deleting:
                # Finished before this executor started, or deleted before it ran.
                if deleting:
                    self._finalize(pod)
                return
            worker = PodWorker(pod, self._api, self._refs, self._config)
            self._workers[uid] = worker
            log.info("Starting pod %s/%s", worker.namespace, worker.name)
            worker.start()
            return
        worker.update(pod)
        if deleting and worker.finished.is_set():
            # kubelet removes a terminated pod's object as soon as it is marked for deletion.
            self._finalize(pod)

    def watch_forever(self) -> None:
        """List, then watch from that version; relist when the watch expires (410)."""
        params = {"fieldSelector": f"spec.nodeName={self._config.node_name}"}
        while not self.stopping.is_set():
            try:
                listing = self._api.get("/api/v1/pods", params)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.handle("ADDED", pod)
                for uid in set(self._workers) - seen:
                    self._workers.pop(uid).gone()
                version = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    watch_params = {
                        **params,
                        "resourceVersion": version,
                        "allowWatchBookmarks": "true",
                    }
                    for event in self._api.watch("/api/v1/pods", watch_params, timeout_s=60):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(
                                "WATCH", "/api/v1/pods", int(obj.get("code", 500)), str(obj)
                            )
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.handle(event["type"], obj)
            except Exception as err:
                if self.stopping.is_set():
                    return
                if not (isinstance(err, ApiError) and err.status == 410):
                    log.warning("pod watch failed, relisting: %s", err)
                    time.sleep(1)

    def shutdown(self) -> None:
        self.stopping.set()
        workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(10)


def run_executor(config_path: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ExecutorConfig.load(config_path)
    api = KubeApi(read_kubeconfig(Path(config.kubeconfig)))
    node = NodeAgent(api, config)
    node.register()
    executor = Executor(api, config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("Received signal %d, stopping pods", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(
        target=node.heartbeat_forever, args=(stop,), name="heartbeat", daemon=True
    ).start()
    threading.Thread(target=executor.watch_forever, name="pod-watch", daemon=True).start()
    # A bare wait() would not let the signal handler's set() be noticed promptly everywhere.
    while not stop.wait(1.0):
        pass
    executor.shutdown()
    api.close()
    log.info("Executor stopped")
