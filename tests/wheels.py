"""A pure-Python wheel built in a test, for pip to install from a local folder (what an
air-gapped cluster's PIP_NO_INDEX + PIP_FIND_LINKS point at) without reaching an index."""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["build_wheel"]


def build_wheel(directory: Path, name: str, version: str, source: str) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` holding module `<name>` with `source`."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: optuna-operator-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in {**files, f"{dist_info}/RECORD": record}.items():
            wheel.writestr(member, text)
    return path
