"""Everything that speaks SQL: engines and Optuna storages (engines.py), each namespace's
PostgreSQL role and schema (tenancy.py), the operator's view of studies (study_store.py),
parameter importances in a bounded child process (importances.py), and the workers'
storage with heartbeats and the exact trial budget's slot claim (worker_storage.py)."""
