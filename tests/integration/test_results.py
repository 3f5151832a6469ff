"""Results handed on: the best trial exported to a ConfigMap, and a study warm-started from
another one's finished trials."""

from __future__ import annotations

import optuna
from kubernetes import client
from optuna.trial import TrialState
from tests.integration.studies import Studies, study_body, wait_for


def test_export_writes_the_best_trial_and_follows_it(
    studies: Studies, kube_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    studies.create(
        study_body(
            "exported",
            directions=["minimize"],
            objective={"function": "tests.integration.objectives:improving"},
            budget={"trials": 10},
            export={"configMapName": "best-params"},
        )
    )

    def exported() -> dict[str, str] | None:
        try:
            data = core.read_namespaced_config_map("best-params", studies.namespace).data
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(data or {})

    first = wait_for(exported, 120, "the export ConfigMap")
    status = studies.wait_phase("exported", "Succeeded")
    final = exported()
    assert final is not None
    best = status["bestTrial"]
    assert final["optuna_best_trial"] == str(best["number"]) == "9"
    assert int(first["optuna_best_trial"]) < 9  # it was written early and updated since
    assert final["x"] == str(best["params"]["x"]) and final["depth"] == str(best["params"]["depth"])
    assert float(final["optuna_best_value"]) == best["values"][0] == -9.0
    assert final["optuna_study"] == f"{studies.namespace}.exported"
    owner = core.read_namespaced_config_map("best-params", studies.namespace).metadata
    assert owner.owner_references[0].kind == "TuningStudy"


def test_warm_start_copies_the_finished_trials_first(studies: Studies) -> None:
    studies.create(study_body("source", budget={"trials": 6}))
    studies.wait_phase("source", "Succeeded")
    studies.create(
        study_body(
            "warm",
            budget={"trials": 9},
            sampler={"type": "TPE", "seed": 2, "tpe": {"nStartupTrials": 5}},
            warmStart={"studyName": f"{studies.namespace}.source"},
        )
    )
    status = studies.wait_phase("warm", "Succeeded")
    storage_url = studies.storage_url()  # the namespace's own schema
    source = optuna.load_study(study_name=f"{studies.namespace}.source", storage=storage_url)
    warm = optuna.load_study(study_name=f"{studies.namespace}.warm", storage=storage_url)
    copied = [t for t in warm.trials if "warm_start_from" in t.user_attrs]
    fresh = [t for t in warm.trials if "warm_start_from" not in t.user_attrs]
    source_done = [t for t in source.trials if t.state == TrialState.COMPLETE]
    assert [t.params for t in copied] == [t.params for t in source_done]
    assert [t.value for t in copied] == [t.value for t in source_done]
    # The history is there before the first new trial: TPE (5 startup trials) samples the
    # first new trial from it. The copies do not count towards budget.trials (the default):
    # nine trials of its own run, and the status shows the copies apart.
    assert [t.number for t in copied] == list(range(len(copied)))
    assert min(t.number for t in fresh) == len(copied)
    assert len([t for t in fresh if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 9
    assert status["trials"]["copied"] == len(copied) == len(source_done)
    assert status["progress"] == "9/9"
    assert status["trials"]["complete"] + status["trials"]["pruned"] == 9 + len(copied)


def test_warm_start_is_capped_and_may_count_towards_the_budget(studies: Studies) -> None:
    studies.create(study_body("history", budget={"trials": 6}))
    studies.wait_phase("history", "Succeeded")
    studies.create(
        study_body(
            "capped",
            budget={"trials": 5},
            sampler={"type": "Random"},
            warmStart={
                "studyName": f"{studies.namespace}.history",
                "maxTrials": 2,
                "countTowardsBudget": True,
            },
        )
    )
    status = studies.wait_phase("capped", "Succeeded")
    storage_url = studies.storage_url()
    source = optuna.load_study(study_name=f"{studies.namespace}.history", storage=storage_url)
    capped = optuna.load_study(study_name=f"{studies.namespace}.capped", storage=storage_url)
    copied = [t for t in capped.trials if "warm_start_from" in t.user_attrs]
    source_done = [t for t in source.trials if t.state == TrialState.COMPLETE]
    # The two most recent complete trials, and they count: three trials of its own run.
    assert [t.params for t in copied] == [t.params for t in source_done[-2:]]
    assert status["trials"]["copied"] == 2
    assert status["progress"] == "5/5"
    finished = [t for t in capped.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5
