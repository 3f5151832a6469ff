"""Kubeconfig files for the bed's clients, and reading one back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Credentials", "read_kubeconfig", "write_kubeconfig"]


@dataclass(frozen=True)
class Credentials:
    """A client-certificate identity on one API server; paths, not inline data."""

    server: str
    ca_cert: Path
    client_cert: Path
    client_key: Path


def write_kubeconfig(path: Path, creds: Credentials, user: str) -> None:
    # File paths rather than embedded data keep the file short and readable for humans.
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {
                    "server": creds.server,
                    "certificate-authority": str(creds.ca_cert),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(creds.client_cert),
                    "client-key": str(creds.client_key),
                },
            }
        ],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": user}}],
        "current-context": "testbed",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def read_kubeconfig(path: Path) -> Credentials:
    """The current context's server and certificate paths (as written above)."""
    config = yaml.safe_load(path.read_text())
    current = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    return Credentials(
        server=str(cluster["server"]),
        ca_cert=Path(cluster["certificate-authority"]),
        client_cert=Path(user["client-certificate"]),
        client_key=Path(user["client-key"]),
    )
