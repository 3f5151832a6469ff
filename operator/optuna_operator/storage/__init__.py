"""Everything that speaks SQL: engines and Optuna storages (engines.py), the operator's own
admin connections and their guards (admin.py), each namespace's PostgreSQL role and schema
(tenancy.py), the operator's view of studies (study_store.py: one storage per URL and the
caches; study_setup.py: creating, resuming, claiming and deleting a study; summary.py: the
refresh's small queries), trial-change notifications (notify.py), parameter importances in a
bounded child process (importances.py), and the workers' storage with heartbeats and the
exact trial budget's slot claim (worker_storage.py, outage.py)."""
