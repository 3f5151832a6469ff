"""The admission policy's shape: what Kubernetes would refuse or silently ignore in it."""

from __future__ import annotations

import yaml

from optuna_operator import admission, api


def test_messages_never_call_the_authorizer() -> None:
    # Kubernetes leaves `authorizer` out of messageExpression's environment: such a message
    # fails at run time and the user sees only "failed expression: ...".
    spec = admission.policy_manifest()["spec"]
    authorizing = {v["name"] for v in spec["variables"] if "authorizer" in v["expression"]}
    for rule in spec["validations"]:
        message = rule.get("messageExpression", "")
        assert "authorizer" not in message, rule["expression"]
        assert not any(f"variables.{name}" in message for name in authorizing), message
        assert rule.get("message") or message, rule["expression"]
        assert rule["reason"] in ("Forbidden", "Invalid")


def test_only_spec_writes_to_the_main_resource_are_checked() -> None:
    spec = admission.policy_manifest()["spec"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    # Listing a subresource (tuningstudies/status) here would check the operator's writes.
    assert rule["resources"] == [api.PLURAL]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert spec["matchConditions"] == [
        {
            "name": "spec-written",
            "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
        }
    ]
    assert spec["failurePolicy"] == "Fail"


def test_deploy_file_holds_the_policy_and_its_binding() -> None:
    policy, binding = yaml.safe_load_all(admission.deploy_yaml())
    assert policy == admission.policy_manifest()
    assert binding["spec"] == {
        "policyName": admission.POLICY_NAME,
        "validationActions": ["Deny"],
    }


def test_allowed_volume_kinds_are_the_restricted_standards() -> None:
    assert set(admission.ALLOWED_VOLUME_KINDS) == {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }


def test_the_overlays_secrets_and_volumes_are_checked_like_the_workers_fields() -> None:
    # spec.workers.podTemplate hands Secrets to pods through its containers (env, envFrom)
    # and its volumes; each list must reach the variables the validations read.
    variables = {
        v["name"]: v["expression"] for v in admission.policy_manifest()["spec"]["variables"]
    }
    overlay = "object.spec.workers.podTemplate.spec"
    for field in ("initContainers", "containers"):
        assert f"{overlay}.{field}" in variables["containerSecretNames"], field
    for name in ("secretNames", "projectedSecretVolumes", "hostVolumes"):
        assert f"{overlay}.volumes" in variables[name], name
        assert "object.spec.workers.volumes" in variables[name], name


def test_a_studys_dashboard_overlay_is_checked_like_the_workers() -> None:
    # spec.dashboard.podTemplate (a study's own dashboard) hands Secrets and volumes to the
    # dashboard pod the same ways; its schema refuses a ServiceAccount.
    spec = admission.policy_manifest()["spec"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    overlay = "object.spec.dashboard.podTemplate.spec"
    for field in ("initContainers", "containers"):
        assert f"{overlay}.{field}" in variables["containerSecretNames"], field
    for name in ("secretNames", "projectedSecretVolumes", "hostVolumes"):
        assert f"{overlay}.volumes" in variables[name], name
    (host,) = [r for r in spec["validations"] if "hostVolumes" in r["expression"]]
    assert "spec.dashboard.podTemplate.spec.volumes" in host["messageExpression"]
