"""Everything that speaks SQL: pool settings (pools.py) and Optuna's storages (engines.py),
the operator's own admin connections and their guards (admin.py), each namespace's PostgreSQL
role and schema (tenancy.py), the operator's view of studies (storages.py: one engine per
URL and the Optuna child calls; study_store.py: the work on each study and its caches;
study_rows.py: a study's own rows in plain SQL; study_setup.py: creating, resuming,
claiming and deleting a study; summary.py: the refresh's small queries), the Optuna work
the operator hands to a child process so it never imports Optuna (optuna_child.py),
trial-change notifications (notify.py), parameter importances in a bounded child process
(importances.py), and the workers' storage with heartbeats and the exact trial budget's
slot claim (worker_storage.py, outage.py)."""
