"""Polling with a deadline and a message that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    check: Callable[[], T], what: str, timeout_s: float = 60.0, interval_s: float = 0.25
) -> T:
    """Call check until it returns something truthy and return that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout_s:g}s waiting for {what}; last: {value!r}"
            )
        time.sleep(interval_s)
