"""When a worker process collects garbage.

A worker process starts by importing Optuna, NumPy, SQLAlchemy and pydantic: about 100,000
objects, nearly all of which live as long as the process. Python's collector runs again and
again while they are imported and finds almost nothing to free. The worker turns it off
for those imports (`pause_for_start_up`; 55 ms, about 12% of them, measured) and on again
once it has read its settings (`resume_after_start_up`), before it imports the user's
objective: an objective's module may build and drop large structures at import time, and
only the collector frees those that hold references to each other.

Nothing is frozen (`gc.freeze`): objects in the permanent generation are never collected,
not even at exit, and a module's globals live in a reference cycle with its functions, so
a file an objective's module left open would not be flushed when the process ends
(tests/unit/test_worker_garbage.py).
"""

from __future__ import annotations

import gc

__all__ = ["pause_for_start_up", "resume_after_start_up"]


def pause_for_start_up() -> None:
    """No collections until resume_after_start_up (the imports make what lives on)."""
    gc.disable()


def resume_after_start_up() -> None:
    """Collect again, for the objective and the trials."""
    gc.enable()
