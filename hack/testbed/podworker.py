"""One pod's life on the executor's node: init containers, containers, restarts, status,
deadline and deletion. One thread per pod polls its processes, so no locks are needed
between a pod's containers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.executorconfig import ExecutorConfig
from testbed.kubeapi import STRATEGIC_MERGE_PATCH, ApiError, KubeApi, q
from testbed.podenv import ConfigError, Refs, container_env, expand_command
from testbed.podstatus import Conditions, ContainerView, now, pod_status
from testbed.probes import ReadinessProbe

__all__ = ["PodWorker", "delete_now", "termination_log_tail"]

JSON = dict[str, Any]
log = logging.getLogger("testbed.executor")

# kubelet's limits for FallbackToLogsOnError (MaxContainerTerminationMessageLogLines/Length).
TAIL_LINES = 80
TAIL_BYTES = 2048
SYSTEM_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
POLL_S = 0.1
# A refused status write is sent again after this back-off, doubling up to the maximum, and
# for as long as the pod exists: like kubelet's status manager, the executor owns the pod's
# status until the API has it, however long the API server is away.
STATUS_RETRY_S = 0.5
STATUS_RETRY_MAX_S = 5.0


def termination_log_tail(path: Path) -> str:
    """The last 80 lines of a log, at most 2048 bytes, as kubelet reports them."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    lines = data.splitlines(keepends=True)[-TAIL_LINES:]
    return b"".join(lines)[-TAIL_BYTES:].decode("utf-8", "replace")


def delete_now(api: KubeApi, pod: JSON) -> None:
    """Finish a deletion the way kubelet does once the containers are gone: grace period 0."""
    meta = pod["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": meta["uid"]},
    }
    try:
        api.delete(f"/api/v1/namespaces/{q(meta['namespace'])}/pods/{q(meta['name'])}", body)
    except ApiError as err:
        if err.status not in (404, 409):
            raise


@dataclass
class _Attempt:
    popen: subprocess.Popen[bytes]
    start_ticks: int  # of the container's leader process: its group is signalled only while ours
    log_path: Path
    pid_file: Path
    env: dict[str, str]
    cwd: Path
    probe: ReadinessProbe | None


@dataclass
class _Slot:
    spec: JSON
    view: ContainerView
    is_init: bool
    attempt: _Attempt | None = None
    next_start: float = 0.0
    done: bool = False
    succeeded: bool = False


class PodWorker:
    def __init__(self, pod: JSON, api: KubeApi, refs: Refs, config: ExecutorConfig) -> None:
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self._pod = pod
        self._api = api
        self._refs = refs
        self._config = config
        self._wake = threading.Event()
        self._gone = False
        self._shutdown = False
        self.finished = threading.Event()
        self.pod_dir = Path(config.log_dir) / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self._init = [
            _Slot(
                c,
                ContainerView(c["name"], c.get("image", ""), waiting_reason="PodInitializing"),
                True,
            )
            for c in spec.get("initContainers") or []
        ]
        main_reason = "PodInitializing" if self._init else "ContainerCreating"
        self._main = [
            _Slot(
                c, ContainerView(c["name"], c.get("image", ""), waiting_reason=main_reason), False
            )
            for c in spec["containers"]
        ]
        self._conditions = Conditions()
        self._start_time = now()
        self._started = time.monotonic()
        self._dirty = True
        self._retry_at = 0.0
        self._retry_s = STATUS_RETRY_S
        self._publish_failing = False
        self._thread = threading.Thread(
            target=self._run_safely, name=f"pod {self.namespace}/{self.name}", daemon=True
        )

    # --- called from the watch thread -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def update(self, pod: JSON) -> None:
        self._pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The pod object no longer exists (force-deleted): kill without reporting."""
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        """The executor is exiting: kill quickly, report nothing."""
        self._shutdown = True
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    # --- the pod's thread ----------------------------------------------------------------
    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: executor error", self.namespace, self.name)
            self._kill_all(2.0)
        finally:
            self.finished.set()

    @property
    def _restart_policy(self) -> str:
        return str(self._pod["spec"].get("restartPolicy", "Always"))

    def _deadline(self) -> float | None:
        seconds = self._pod["spec"].get("activeDeadlineSeconds")
        return None if seconds is None else self._started + float(seconds)

    def _stop_reason(self) -> str | None:
        if self._shutdown:
            return "shutdown"
        if self._gone:
            return "gone"
        if self._pod["metadata"].get("deletionTimestamp"):
            return "delete"
        deadline = self._deadline()
        if deadline is not None and time.monotonic() >= deadline:
            return "deadline"
        return None

    def _write_meta(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "creationTimestamp": self._pod["metadata"].get("creationTimestamp", ""),
            "containers": [s.spec["name"] for s in self._main],
            "initContainers": [s.spec["name"] for s in self._init],
        }
        # Written whole, then renamed: Bed.pod_log may read it at any moment.
        tmp = self.pod_dir / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.pod_dir / "meta.json")

    def _run(self) -> None:
        self._write_meta()
        self._conditions.set("PodReadyToStartContainers", True)
        self._update_conditions()
        self._publish()
        init_index = 0
        stop = None
        while True:
            stop = self._stop_reason()
            if stop is not None:
                break
            current = time.monotonic()
            if init_index < len(self._init):
                slot = self._init[init_index]
                self._step(slot, current)
                if slot.done and not slot.succeeded:
                    break  # an init container failed for good: the pod fails
                if slot.done:
                    init_index += 1
                    if init_index == len(self._init):
                        for s in self._main:
                            s.view.waiting_reason = "ContainerCreating"
                    self._dirty = True
            else:
                for slot in self._main:
                    self._step(slot, current)
                if all(s.done for s in self._main):
                    break
            if self._dirty and time.monotonic() >= self._retry_at:
                self._update_conditions()
                self._publish()
            self._wake.wait(POLL_S)
            self._wake.clear()
        self._finish(stop)

    def _finish(self, stop: str | None) -> None:
        reason = message = None
        if stop in ("shutdown", "gone"):
            self._kill_all(3.0)
            return
        if stop == "delete":
            grace = self._pod["metadata"].get("deletionGracePeriodSeconds")
            self._kill_all(float(30 if grace is None else grace))
        elif stop == "deadline":
            self._kill_all(float(self._pod["spec"].get("terminationGracePeriodSeconds", 30)))
            reason = "DeadlineExceeded"
            message = "Pod was active on the node longer than the specified deadline"
        every = self._init + self._main
        succeeded = all(
            s.view.terminated is not None and s.view.terminated["exitCode"] == 0 for s in every
        )
        phase = "Succeeded" if succeeded and stop != "deadline" else "Failed"
        self._update_conditions(terminal_phase=phase)
        log.info(
            "pod %s/%s: %s%s", self.namespace, self.name, phase, f" ({reason})" if reason else ""
        )
        # The terminal status is what Job controllers count: it is sent until the API server
        # takes it (an outage of any length), the pod is gone, or the executor stops.
        self._dirty = True
        while self._dirty and not self._gone and not self._shutdown:
            if time.monotonic() >= self._retry_at:
                self._publish(phase, reason, message)
            if self._dirty:
                self._wake.wait(max(0.0, self._retry_at - time.monotonic()))
                self._wake.clear()
        if stop == "delete":
            self._delete_after_status()

    def _delete_after_status(self) -> None:
        """Remove the deleted pod's object, as kubelet does, retrying through an outage."""
        while not self._gone and not self._shutdown:
            try:
                delete_now(self._api, self._pod)
                return
            except Exception as err:
                log.warning(
                    "pod %s/%s: final delete failed, will retry: %s", self.namespace, self.name, err
                )
                self._wake.wait(self._retry_s)
                self._wake.clear()
                self._retry_s = min(self._retry_s * 2, STATUS_RETRY_MAX_S)

    # --- containers ------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        cfg = self._config
        env = {
            "PATH": ":".join([*cfg.path_prefix, *SYSTEM_PATH]),
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": self.name,
            "LANG": "C.UTF-8",
            "PYTHONPATH": ":".join(cfg.pythonpath),
            # Images for Python workers usually set this; without it logs arrive late.
            "PYTHONUNBUFFERED": "1",
        }
        env.update(cfg.extra_env)
        return env

    def _argv(self, spec: JSON, env: Mapping[str, str]) -> list[str]:
        command, args = expand_command(spec, env)
        if command:
            return command + args
        image_cmd = self._config.image_commands.get(spec.get("image", ""))
        if image_cmd is None:
            raise FileNotFoundError(
                f"container {spec['name']} sets no command and the testbed cannot run image "
                f"{spec.get('image')!r}'s entrypoint; set command, or map the image in "
                "BedOptions.image_commands"
            )
        return [*image_cmd, *args]

    def _cwd(self, spec: JSON) -> Path:
        wd = spec.get("workingDir")
        if wd and Path(wd).is_dir():
            return Path(wd)
        return Path(self._config.workdir)

    def _step(self, slot: _Slot, current: float) -> None:
        if slot.done:
            return
        if slot.attempt is None:
            if current >= slot.next_start:
                self._start(slot)
            return
        rc = slot.attempt.popen.poll()
        if rc is None:
            probe = slot.attempt.probe
            if probe is not None and probe.due(current):
                ready = probe.run(slot.attempt.env, slot.attempt.cwd)
                if ready != slot.view.ready:
                    slot.view.ready = ready
                    self._dirty = True
            return
        self._record_exit(slot, rc)

    def _start(self, slot: _Slot) -> None:
        spec, view = slot.spec, slot.view
        try:
            pod_env = container_env(self._pod, spec, self._refs)
        except ConfigError as err:
            if view.waiting_reason != "CreateContainerConfigError" or view.waiting_message != str(
                err
            ):
                view.waiting_reason = "CreateContainerConfigError"
                view.waiting_message = str(err)
                self._dirty = True
            # kubelet retries on its sync loop; a Secret created a moment later is picked up.
            slot.next_start = time.monotonic() + 1.0
            return
        env = self._base_env()
        env.update(pod_env)
        log_path = self.pod_dir / spec["name"] / f"{view.restart_count}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at = now()
        cwd = self._cwd(spec)
        try:
            argv = self._argv(spec, pod_env)
            with open(log_path, "ab") as logf:
                popen = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    # Its own session: deletion signals the whole process tree.
                    start_new_session=True,
                )
        except (OSError, ValueError) as err:
            # containerd reports a failed exec as StartError with exit code 128.
            log_path.write_text(f"testbed executor: cannot start container: {err}\n")
            view.terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(err),
                "startedAt": started_at,
                "finishedAt": now(),
            }
            self._after_exit(slot)
            return
        pid_file = Path(self._config.pid_dir) / str(popen.pid)
        ticks = procs.start_ticks(popen.pid)
        pid_file.write_text(str(ticks or -1))
        probe_spec = spec.get("readinessProbe")
        probe = ReadinessProbe(probe_spec, spec, time.monotonic()) if probe_spec else None
        slot.attempt = _Attempt(popen, ticks or -1, log_path, pid_file, env, cwd, probe)
        view.started_at = started_at
        view.terminated = None
        view.waiting_message = None
        view.container_id = f"testbed://{popen.pid}"
        # Without a readiness probe kubelet calls a running container ready.
        view.ready = probe is None
        self._dirty = True

    def _record_exit(self, slot: _Slot, rc: int) -> None:
        attempt = slot.attempt
        assert attempt is not None
        slot.attempt = None
        attempt.pid_file.unlink(missing_ok=True)
        # A signal death reads like a shell's: 128 + signal number (137 for SIGKILL).
        exit_code = rc if rc >= 0 else 128 - rc
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": slot.view.started_at,
            "finishedAt": now(),
            "containerID": slot.view.container_id,
        }
        if exit_code != 0 and slot.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            # A process cannot write the container's /dev/termination-log here, so the
            # log tail is the only message there can be.
            message = termination_log_tail(attempt.log_path)
            if message:
                terminated["message"] = message
        slot.view.terminated = terminated
        self._after_exit(slot)

    def _after_exit(self, slot: _Slot) -> None:
        view = slot.view
        view.ready = False
        self._dirty = True
        assert view.terminated is not None
        exit_code = int(view.terminated["exitCode"])
        policy = self._restart_policy
        if slot.is_init:
            # Init containers are retried on failure unless the pod never restarts.
            restart = policy != "Never" and exit_code != 0
        else:
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if not restart or self._stop_reason() is not None:
            slot.done = True
            slot.succeeded = exit_code == 0
            return
        view.last_terminated = view.terminated
        view.terminated = None
        view.started_at = None
        view.restart_count += 1
        backoff = min(
            self._config.restart_backoff_s * 2 ** (view.restart_count - 1),
            self._config.restart_backoff_max_s,
        )
        view.waiting_reason = "CrashLoopBackOff"
        view.waiting_message = (
            f"back-off {backoff:g}s restarting failed container={view.name} "
            f"pod={self.name}_{self.namespace}({self.uid})"
        )
        slot.next_start = time.monotonic() + backoff

    def _kill_all(self, grace_s: float) -> None:
        """SIGTERM every running container's process group, SIGKILL after grace_s."""
        running = [s for s in self._init + self._main if s.attempt is not None]
        for slot in running:
            assert slot.attempt is not None
            if slot.attempt.popen.poll() is None or procs.group_is_ours(
                slot.attempt.popen.pid, slot.attempt.start_ticks
            ):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(slot.attempt.popen.pid, signal.SIGTERM)
        started = time.monotonic()
        while any(s.attempt is not None and s.attempt.popen.poll() is None for s in running):
            # A second delete may shorten the grace period (kubectl delete --force does).
            pod_grace = self._pod["metadata"].get("deletionGracePeriodSeconds")
            limit = grace_s if pod_grace is None else min(grace_s, float(pod_grace))
            if self._gone or time.monotonic() - started >= limit:
                break
            time.sleep(0.05)
        for slot in running:
            attempt = slot.attempt
            assert attempt is not None
            # The group, not just the leader: children may outlive a leader that exited. A
            # reaped leader's number may belong to a new session by now (a pid reused by
            # the test's operator was SIGKILLed this way): only a group still ours.
            if procs.group_is_ours(attempt.popen.pid, attempt.start_ticks):
                procs.stop_group(attempt.popen.pid, signal.SIGKILL, 0.0, attempt.popen)
            rc = attempt.popen.poll()
            self._record_exit(slot, -signal.SIGKILL if rc is None else rc)
            slot.done = True

    # --- status ----------------------------------------------------------------------
    def _update_conditions(self, terminal_phase: str | None = None) -> None:
        pending_init = [s.view.name for s in self._init if not s.succeeded]
        if pending_init and terminal_phase is None:
            self._conditions.set(
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending_init)}]",
            )
        elif not pending_init:
            self._conditions.set("Initialized", True)
        unready = [s.view.name for s in self._main if not s.view.ready]
        if terminal_phase == "Succeeded":
            reason, message = "PodCompleted", None
        else:
            reason, message = (
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            )
        for kind in ("ContainersReady", "Ready"):
            if unready or terminal_phase:
                self._conditions.set(kind, False, reason, message)
            else:
                self._conditions.set(kind, True)

    def _phase(self) -> str:
        in_init = any(not s.done for s in self._init)
        if not in_init and any(
            s.view.started_at or s.view.terminated or s.view.restart_count for s in self._main
        ):
            return "Running"
        return "Pending"

    def _publish(
        self, phase: str | None = None, reason: str | None = None, message: str | None = None
    ) -> None:
        if self._gone:
            return
        status = pod_status(
            phase or self._phase(),
            self._conditions,
            self._start_time,
            [s.view for s in self._init],
            [s.view for s in self._main],
            reason,
            message,
        )
        # The uid makes the patch fail (409) rather than touch a same-named successor pod.
        body = {"metadata": {"uid": self.uid}, "status": status}
        path = f"/api/v1/namespaces/{q(self.namespace)}/pods/{q(self.name)}/status"
        try:
            self._api.patch(path, body, STRATEGIC_MERGE_PATCH)
        except ApiError as err:
            if err.status in (404, 409):
                self._gone = True
            elif err.status == 422:
                log.error("pod %s/%s: status rejected: %s", self.namespace, self.name, err)
                self._dirty = False
            else:
                self._publish_failed(err)
            return
        except Exception as err:  # API server down or restarting: connection refused
            self._publish_failed(err)
            return
        self._dirty = False
        self._retry_at = 0.0
        self._retry_s = STATUS_RETRY_S
        if self._publish_failing:
            self._publish_failing = False
            log.info("pod %s/%s: status accepted again", self.namespace, self.name)

    def _publish_failed(self, err: Exception) -> None:
        # The status stays dirty; the pod's loop sends the then-current status again later.
        if not self._publish_failing:
            log.warning(
                "pod %s/%s: status patch failed, will retry: %s", self.namespace, self.name, err
            )
            self._publish_failing = True
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, STATUS_RETRY_MAX_S)
