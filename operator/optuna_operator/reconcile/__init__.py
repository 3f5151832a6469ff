"""Level-based reconcile of one TuningStudy, one file per step, read in this order:

1. `prepare.py`: what the database must hold before it can be read (the namespace's role
   and Secret, the Optuna study), set up on first sight and only checked afterwards;
2. `observe.py`: reads only: the study's summary (database), measured against its
   budgets (lifecycle/), the children as they should be (children/desired.py), the
   worker Jobs and the dashboard (from the watch caches the controller hands in);
3. `decide.py`: a pure function of spec + observations says what each child should do and
   when to look again;
4. `act.py`: apply or delete exactly what the plan names; nothing is sent when nothing
   differs;
5. `status.py`: a pure function derives the status and the events.

`model.py` holds what the steps hand each other; `reconciler.py` is the loop that runs
them. The controller (controller.py) decides *when* it runs: on changes of the study or
its children, and periodically only while work runs.
"""

from optuna_operator.children.applied import APPLIED_HASH_ANNOTATION
from optuna_operator.reconcile.decide import decide, decide_phase
from optuna_operator.reconcile.model import (
    Acted,
    ChildConflict,
    Children,
    Event,
    JobState,
    Observed,
    Outcome,
    Phase,
    Plan,
    StorageProblem,
    StorageRef,
)
from optuna_operator.reconcile.observe import termination_message
from optuna_operator.reconcile.reconciler import Reconciler
from optuna_operator.reconcile.status import build_status

__all__ = [
    "APPLIED_HASH_ANNOTATION",
    "Acted",
    "ChildConflict",
    "Children",
    "Event",
    "JobState",
    "Observed",
    "Outcome",
    "Phase",
    "Plan",
    "Reconciler",
    "StorageProblem",
    "StorageRef",
    "build_status",
    "decide",
    "decide_phase",
    "termination_message",
]
