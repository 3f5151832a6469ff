"""A container's environment and command line, resolved the way kubelet resolves them.

Order and semantics follow kubelet's makeEnvironmentVariables: envFrom first (with prefix),
then env in order, where a value may reference earlier variables as $(VAR); command and
args are expanded against the result. Missing references that are not optional are errors
that kubelet reports as CreateContainerConfigError and retries.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["ConfigError", "Refs", "container_env", "expand", "expand_command"]

JSON = dict[str, Any]


class ConfigError(Exception):
    """A referenced Secret, ConfigMap or key is missing; the container cannot start yet."""


class Refs(Protocol):
    """Look-ups the environment needs; None when the object does not exist."""

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None: ...

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None: ...


def decode_secret(secret: JSON) -> dict[str, str]:
    data = {
        k: base64.b64decode(v).decode("utf-8", "replace")
        for k, v in (secret.get("data") or {}).items()
    }
    data.update(secret.get("stringData") or {})
    return data


def config_map_data(cm: JSON) -> dict[str, str]:
    data: dict[str, str] = dict(cm.get("data") or {})
    for key, value in (cm.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value).decode("utf-8", "replace")
    return data


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes $(VAR) expansion: $$ escapes, unknown references stay as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            advance = 1
            if rest[0] == "$":
                out.append("$")
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                else:
                    name = rest[1:close]
                    value = lookup(name)
                    out.append(value if value is not None else f"$({name})")
                    advance = close + 1
            else:
                out.append("$" + rest[0])
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _field_ref(pod: JSON, path: str) -> str:
    meta = pod.get("metadata", {})
    status = pod.get("status", {})
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", ""),
        # The executor runs every pod on the loopback address (see podstatus).
        "status.podIP": status.get("podIP") or "127.0.0.1",
        "status.podIPs": status.get("podIP") or "127.0.0.1",
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.hostIPs": status.get("hostIP") or "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise ConfigError(f"fieldRef {path!r} is not supported by the testbed executor")


def _source(refs: Refs, namespace: str, kind: str, name: str) -> Mapping[str, str] | None:
    return refs.secret(namespace, name) if kind == "secret" else refs.config_map(namespace, name)


def container_env(pod: JSON, container: JSON, refs: Refs) -> dict[str, str]:
    """The variables the pod spec defines for container (not the image's or the node's)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            ref = source.get(key)
            if ref is None:
                continue
            data = _source(refs, namespace, kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind} "{ref["name"]}" not found')
            for k, v in data.items():
                env[prefix + k] = v

    for var in container.get("env") or []:
        name = var["name"]
        value_from = var.get("valueFrom")
        if value_from is None:
            env[name] = expand(var.get("value", ""), env.get)
            continue
        if "fieldRef" in value_from:
            env[name] = _field_ref(pod, value_from["fieldRef"]["fieldPath"])
            continue
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            ref = value_from.get(key)
            if ref is None:
                continue
            data = _source(refs, namespace, kind, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    break
                what = (
                    f'{kind} "{ref["name"]}"'
                    if data is None
                    else f'key "{ref["key"]}" in {kind} "{ref["name"]}"'
                )
                raise ConfigError(f"couldn't find {what} for env var {name}")
            env[name] = data[ref["key"]]
            break
        else:
            raise ConfigError(
                f"env var {name}: {sorted(value_from)} is not supported by the testbed executor"
            )
    return env


def expand_command(container: JSON, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    command = [expand(c, env.get) for c in container.get("command") or []]
    args = [expand(a, env.get) for a in container.get("args") or []]
    return command, args
