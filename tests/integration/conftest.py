"""Everything under tests/integration runs against the real test bed (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
