"""The ValidatingAdmissionPolicy that keeps a TuningStudy from lending its author the
operator's rights: the single source of `deploy/admission-policy.yaml` and of the chart's
`files/admission-policy.yaml` (`make crds` writes both, `make crds-check` fails on drift).

The operator creates worker pods with its own ServiceAccount, so without this policy anyone
who may create a TuningStudy could run pods, mount Secrets and use ServiceAccounts of the
namespace that they may not touch themselves. The policy asks the API server's authorizer
(the same RBAC that would judge the author's own pod) before the study is stored:

- `create` on pods in the namespace: a study is a way of creating pods;
- `impersonate` on the ServiceAccount named by spec.workers.serviceAccountName: what the
  built-in `edit` and `admin` roles grant precisely because running a pod as an account is
  acting as it (kubernetes bootstrap policy, `system:aggregate-to-edit`);
- `get` on every Secret the workers would read: env/envFrom, secret and projected volumes
  (of spec.workers and of every container and volume of spec.workers.podTemplate and of
  spec.dashboard.podTemplate, a study's own dashboard pod), spec.storage.secretRef,
  spec.dashboard.secretRef;
- `get` on the ConfigMap of spec.objective.source: its key becomes code the workers run;
- `use` on the PriorityClass of spec.workers.priorityClassName: the verb PodSecurityPolicy
  used for cluster-scoped objects a pod selects; nobody holds it until an admin grants it;
- volumes only of the kinds the restricted Pod Security Standard allows (no hostPath, nfs...),
  in spec.workers.volumes, spec.workers.podTemplate.spec.volumes and
  spec.dashboard.podTemplate.spec.volumes alike.

A dashboard.podTemplate names no ServiceAccount (its schema refuses one), so only its
Secrets and volumes are the author's to answer for.

Only writes that change `spec` are checked, so the operator's own writes (status, its
finalizer, any metadata) never are, and neither are label edits by other tools.
"""

from __future__ import annotations

from typing import Any

import yaml

from optuna_operator import api
from optuna_operator.lifecycle.advice import DEFAULT_STARTUP_TRIALS, STARTUP_SHARE_LIMIT

__all__ = [
    "ADVICE_FILE",
    "ADVICE_POLICY_NAME",
    "ALLOWED_VOLUME_KINDS",
    "POLICY_FILE",
    "POLICY_NAME",
    "advice_policy_manifest",
    "binding_manifest",
    "chart_policy_yaml",
    "deploy_yaml",
    "policy_files",
    "policy_manifest",
]

POLICY_NAME = "tuningstudy-author-permissions.optuna-operator.io"
# deploy/admission-policy.yaml and charts/optuna-operator/files/admission-policy.yaml.
POLICY_FILE = "admission-policy.yaml"

# The volume sources the restricted Pod Security Standard admits (plus the name field).
ALLOWED_VOLUME_KINDS = api.ALLOWED_VOLUME_KINDS

_WORKERS = "object.spec.workers"


def _list(field: str) -> str:
    """A workers list field, or an empty list (the CRD defaults `workers`, not its lists)."""
    return f"(has({_WORKERS}.{field}) ? {_WORKERS}.{field} : [])"


_OVERLAY = f"{_WORKERS}.podTemplate"
_DASHBOARD = "object.spec.dashboard"
_DASHBOARD_OVERLAY = f"{_DASHBOARD}.podTemplate"


def _overlay_list(field: str, overlay: str = _OVERLAY) -> str:
    """A list of spec.workers.podTemplate.spec (or of another overlay's spec), or an empty
    list."""
    guard = f"has({_DASHBOARD}) && " if overlay == _DASHBOARD_OVERLAY else ""
    return (
        f"({guard}has({overlay}) && has({overlay}.spec) && has({overlay}.spec.{field}) "
        f"? {overlay}.spec.{field} : [])"
    )


def _overlays_list(field: str) -> str:
    """A list of both overlays' specs: spec.workers.podTemplate's and
    spec.dashboard.podTemplate's (a study's own dashboard)."""
    return f"{_overlay_list(field)} + {_overlay_list(field, _DASHBOARD_OVERLAY)}"


# Every volume the study's pods get from it: workers.volumes and both overlays'.
_VOLUMES = f"({_list('volumes')} + {_overlays_list('volumes')})"
# The overlays' containers: init containers, sidecars and the worker's or dashboard's patch.
_OVERLAY_CONTAINERS = f"({_overlays_list('initContainers')} + {_overlays_list('containers')})"


def _can(resource: str, verb: str, name: str | None = None, group: str = "") -> str:
    # Always in the study's namespace, even for cluster-scoped PriorityClasses: RBAC then
    # accepts a RoleBinding there (this namespace may use it) as well as a ClusterRoleBinding.
    check = f"authorizer.group('{group}').resource('{resource}').namespace(request.namespace)"
    if name is not None:
        check += f".name({name})"
    return f"{check}.check('{verb}').allowed()"


def _who() -> str:
    return "request.userInfo.username"


_SECRET_NAMES = "\n+ ".join(
    [
        _list("env") + ".filter(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
        " && has(e.valueFrom.secretKeyRef.name)).map(e, e.valueFrom.secretKeyRef.name)",
        _list("envFrom")
        + ".filter(e, has(e.secretRef) && has(e.secretRef.name)).map(e, e.secretRef.name)",
        _VOLUMES
        + ".filter(v, has(v.secret) && has(v.secret.secretName)).map(v, v.secret.secretName)",
        "(has(object.spec.storage) ? [object.spec.storage.secretRef.name] : [])",
        "(has(object.spec.dashboard) && has(object.spec.dashboard.secretRef)"
        " ? [object.spec.dashboard.secretRef.name] : [])",
    ]
)

_ALLOWED_KINDS_CEL = "[" + ", ".join(f"'{k}'" for k in ("name", *ALLOWED_VOLUME_KINDS)) + "]"

# messageExpression cannot call the authorizer (Kubernetes leaves it out of that
# environment), so messages list what the study names; only expressions ask RBAC.
VARIABLES: list[dict[str, str]] = [
    {
        "name": "secretNames",
        "expression": _SECRET_NAMES,
    },
    {
        # One list per overlay container (CEL here has no flatten): the Secrets its env and
        # envFrom read.
        "name": "containerSecretNames",
        "expression": _OVERLAY_CONTAINERS
        + ".map(c, (has(c.env) ? c.env.filter(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
        " && has(e.valueFrom.secretKeyRef.name)).map(e, e.valueFrom.secretKeyRef.name) : [])"
        " + (has(c.envFrom) ? c.envFrom.filter(e, has(e.secretRef) && has(e.secretRef.name))"
        ".map(e, e.secretRef.name) : []))",
    },
    {
        "name": "projectedSecretVolumes",
        "expression": _VOLUMES + ".filter(v, has(v.projected) && has(v.projected.sources)"
        " && v.projected.sources.exists(s, has(s.secret) && has(s.secret.name)))",
    },
    {
        "name": "hostVolumes",
        "expression": _VOLUMES + f".filter(v, v.exists(k, !(k in {_ALLOWED_KINDS_CEL})))"
        f".map(v, v.name + ' (' + v.filter(k, !(k in {_ALLOWED_KINDS_CEL}))[0] + ')')",
    },
]


def _denied(rest: str) -> str:
    """A messageExpression naming the requester; `rest` continues the CEL string literal."""
    return "'TuningStudy refused: ' + " + _who() + " + ' may not " + rest


_SA = f"{_WORKERS}.serviceAccountName"
_PRIORITY = f"{_WORKERS}.priorityClassName"
_EXPORT = "object.spec.export"
_SOURCE = "object.spec.objective.source"

VALIDATIONS: list[dict[str, str]] = [
    {
        "expression": _can("pods", "create"),
        "messageExpression": _denied(
            "create pods in namespace ' + request.namespace + '. A TuningStudy runs worker "
            "pods for its author, so its author needs the create verb on pods there (the edit "
            "and admin roles have it).'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": f"!has({_SA}) || " + _can("serviceaccounts", "impersonate", _SA),
        "messageExpression": _denied(
            f"impersonate serviceaccount ' + {_SA} + ' in namespace ' + request.namespace + "
            "'. spec.workers.serviceAccountName runs the workers as that account, which needs "
            "the impersonate verb on it (the edit and admin roles have it).'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": f"variables.secretNames.all(n, {_can('secrets', 'get', 'n')})",
        "messageExpression": _denied(
            "get every secret this study hands its workers (' + "
            "variables.secretNames.join(', ') + ') in namespace ' + request.namespace + '. "
            "spec.workers.env, envFrom, volumes, spec.storage and spec.dashboard pass the "
            "Secrets they name to the pods of the study, so their author needs the get verb on "
            "each.'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": "variables.containerSecretNames.all(ns, ns.all(n, "
        f"{_can('secrets', 'get', 'n')}))",
        "messageExpression": _denied(
            "get every secret the containers of spec.workers.podTemplate and "
            "spec.dashboard.podTemplate read (' + "
            "variables.containerSecretNames.map(ns, ns.join(', ')).filter(t, size(t) > 0)"
            ".join(', ') + ') in namespace ' + request.namespace + '. Their env and envFrom "
            "pass those Secrets to the pods of the study, so their author needs the get verb "
            "on each.'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": "variables.projectedSecretVolumes.all(v, v.projected.sources.all(s, "
        f"!has(s.secret) || !has(s.secret.name) || {_can('secrets', 'get', 's.secret.name')}))",
        "messageExpression": _denied(
            "get every secret projected into volume(s) ' + "
            "variables.projectedSecretVolumes.map(v, v.name).join(', ') + ' in namespace ' + "
            "request.namespace + '. The author of a TuningStudy needs the get verb on every "
            "Secret its pods mount.'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": f"!has({_PRIORITY}) || "
        + _can("priorityclasses", "use", _PRIORITY, group="scheduling.k8s.io"),
        "messageExpression": _denied(
            f"use priorityclass ' + {_PRIORITY} + '. spec.workers.priorityClassName needs the "
            "use verb on that PriorityClass (apiGroup scheduling.k8s.io); ask an admin to "
            "grant it.'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": f"!has({_SOURCE}) || "
        + _can("configmaps", "get", f"{_SOURCE}.configMapKeyRef.name"),
        "messageExpression": _denied(
            f"get configmap ' + {_SOURCE}.configMapKeyRef.name + ' in namespace ' + "
            "request.namespace + '. spec.objective.source hands that ConfigMap to the worker "
            "pods as the code of the objective, so its author needs the get verb on it (the view, "
            "edit and admin roles have it).'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": f"!has({_EXPORT}) || "
        + _can("configmaps", "update", f"{_EXPORT}.configMapName"),
        "messageExpression": _denied(
            f"update configmap ' + {_EXPORT}.configMapName + ' in namespace ' + "
            "request.namespace + '. spec.export has the operator write that ConfigMap, so its "
            "author needs the update verb on it (the edit and admin roles have it).'"
        ),
        "reason": "Forbidden",
    },
    {
        "expression": "size(variables.hostVolumes) == 0",
        "messageExpression": "'TuningStudy refused: spec.workers.volumes, "
        "spec.workers.podTemplate.spec.volumes or spec.dashboard.podTemplate.spec.volumes: "
        "volume ' + "
        "variables.hostVolumes[0] + ' is not allowed. Worker and dashboard pods may use only "
        "the volume "
        "kinds of the restricted Pod Security Standard: " + ", ".join(ALLOWED_VOLUME_KINDS) + ".'",
        "reason": "Forbidden",
    },
]


_SPEC = "object.spec"
_SPACE = f"{_SPEC}.objective.searchSpace"
_GRID = f"{_SPEC}.sampler.grid.searchSpace"
_HAS_SPACE = f"has({_SPEC}.objective.searchSpace)"
_HAS_GRID = f"has({_SPEC}.sampler.grid) && has({_SPEC}.sampler.grid.searchSpace)"
_IS_GRID = f"has({_SPEC}.sampler.type) && {_SPEC}.sampler.type == 'Grid'"
_ENQUEUED = f"(has({_SPEC}.enqueueTrials) ? {_SPEC}.enqueueTrials : [])"
# A fixed value v fits parameter p of a command objective's declarative search space.
_FITS = (
    "(!has(p.categorical) || v in p.categorical.choices)"
    " && (!has(p.int) || type(v) == int && v >= p.int.low && v <= p.int.high)"
    " && (!has(p.float) || (type(v) == int || type(v) == double)"
    " && double(v) >= p.float.low && double(v) <= p.float.high)"
)

# Spec rules the CRD's own CEL cannot express: enqueueTrials and grid values mix numbers,
# strings and booleans, which a structural schema cannot type for CEL. What Optuna would do
# with them at run time: ignore an enqueued parameter the objective never suggests, use an
# out-of-range fixed or grid value with only a warning, fail every trial whose parameter is
# missing from the grid or whose grid trial was enqueued with some parameters unset.
CONSISTENCY: list[dict[str, str]] = [
    {
        "expression": f"!{_HAS_SPACE} || {_ENQUEUED}.all(t, t.all(k, "
        f"{_SPACE}.exists(p, p.name == k)))",
        "messageExpression": "'spec.enqueueTrials: parameter(s) ' + "
        f"{_ENQUEUED}.map(t, t.filter(k, !{_SPACE}.exists(p, p.name == k)))"
        ".filter(ks, size(ks) > 0)[0].join(', ') + ' are not declared in "
        "spec.objective.searchSpace; a command objective would ignore them'",
    },
    {
        "expression": f"!{_HAS_SPACE} || {_ENQUEUED}.all(t, {_SPACE}.all(p, "
        f"!(p.name in t) || [t[p.name]].all(v, {_FITS})))",
        "messageExpression": "'spec.enqueueTrials: the value of ' + "
        f"{_SPACE}.filter(p, {_ENQUEUED}.exists(t, p.name in t && "
        f"![t[p.name]].all(v, {_FITS})))[0].name + ' does not fit its parameter in "
        "spec.objective.searchSpace (one of the choices; an integer or number between low "
        "and high)'",
    },
    {
        "expression": f"!({_IS_GRID}) || !{_HAS_GRID} || !{_HAS_SPACE} || "
        f"{_GRID}.all(k, {_SPACE}.exists(p, p.name == k)) && {_SPACE}.all(p, p.name in {_GRID})",
        "message": "spec.sampler.grid.searchSpace must list exactly the parameters of "
        "spec.objective.searchSpace: Optuna's GridSampler fails a trial whose parameter it "
        "has no values for",
    },
    {
        "expression": f"!({_IS_GRID}) || !{_HAS_GRID} || !{_HAS_SPACE} || {_SPACE}.all(p, "
        f"!(p.name in {_GRID}) || {_GRID}[p.name].all(v, {_FITS}))",
        "messageExpression": "'spec.sampler.grid.searchSpace: a value of ' + "
        f"{_SPACE}.filter(p, p.name in {_GRID} && !{_GRID}[p.name].all(v, {_FITS}))[0].name "
        "+ ' does not fit its parameter in spec.objective.searchSpace (one of the choices; an "
        "integer or number between low and high)'",
    },
    {
        "expression": f"!({_IS_GRID}) || ({_HAS_GRID} ? {_ENQUEUED}.all(t, {_GRID}.all(k, k in t)) "
        f": !{_HAS_SPACE} || {_ENQUEUED}.all(t, {_SPACE}.all(p, has(p.when) || p.name in t)))",
        "message": "with spec.sampler.type Grid every spec.enqueueTrials entry must set every "
        "grid parameter: Optuna's GridSampler fails a partly fixed trial",
    },
]
# `{name}` in a command argument that names no parameter would reach the command as
# written. The worker fills only search-space names (protocol.py) and must leave other
# braces alone (awk programs, `${VAR}`, `{{name}}` escapes), so a misspelt parameter is
# caught here: a `{identifier}` not after `$` or `{`.
_PLACEHOLDER = "(^|[^${])[{][A-Za-z_][A-Za-z0-9_]*[}]"
_COMMAND = f"(has({_SPEC}.objective.command) ? {_SPEC}.objective.command : [])"
_NAMES = f"({_HAS_SPACE} ? {_SPACE}.map(p, p.name) : [])"
_UNKNOWN = (
    f"a.findAll('{_PLACEHOLDER}').filter(m, !({_NAMES}.exists(n, m.endsWith('{{' + n + '}}'))))"
)
CONSISTENCY.append(
    {
        "expression": f"{_COMMAND}.all(a, size({_UNKNOWN}) == 0)",
        "messageExpression": "'spec.objective.command: the placeholder ' + "
        f"{_COMMAND}.map(a, {_UNKNOWN}).filter(ms, size(ms) > 0)[0][0].split('{{')[1]"
        ".split('}')[0] + ' names no parameter of spec.objective.searchSpace; fix the name "
        "(a literal brace in a script: put the script in a file)'",
    }
)
for _rule in CONSISTENCY:
    _rule["reason"] = "Invalid"


def policy_manifest(name: str = POLICY_NAME) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes 1.30+)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            # An authorizer that cannot answer must not let a study through.
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [api.GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        # The main resource only: status and finalizer writes are the
                        # operator's and never reach this policy.
                        "resources": [api.PLURAL],
                    }
                ]
            },
            "matchConditions": [
                {
                    # The operator writes metadata (its finalizer) on the main resource; only
                    # a write that changes what the workers run needs the author's rights.
                    "name": "spec-written",
                    "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
                }
            ],
            "variables": VARIABLES,
            "validations": VALIDATIONS + CONSISTENCY,
        },
    }


def binding_manifest(name: str = POLICY_NAME, policy_name: str = POLICY_NAME) -> dict[str, Any]:
    """The binding that turns the policy on, in every namespace, refusing what it fails."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": policy_name, "validationActions": ["Deny"]},
    }


HEADER = "# Generated by `make crds` from operator/optuna_operator/admission.py. Do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """Long CEL as literal blocks, short CEL (full of single quotes) double-quoted: both read
    as written."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if len(text) > 80 else '"' if "'" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


def deploy_yaml() -> str:
    """deploy/admission-policy.yaml: the policy and its binding, for `kubectl apply`."""
    return HEADER + _dump(policy_manifest()) + "---\n" + _dump(binding_manifest())


def chart_policy_yaml() -> str:
    """The policy alone; the chart names it per release and binds it from its values."""
    return HEADER + _dump(policy_manifest())


# ------------------------------------------------------------------------- budget advice
ADVICE_POLICY_NAME = "tuningstudy-budget-advice.optuna-operator.io"
ADVICE_FILE = "budget-advice-policy.yaml"


def _startup_trials_cel() -> str:
    """advice.startup_trials in CEL: the sampler's startup trials, its options' or Optuna's
    default (0 for samplers without a model)."""
    sampler = f"{_SPEC}.sampler"
    options = {"TPE": "tpe", "GP": "gp", "CMAES": "cmaes", "NSGAII": "nsga", "NSGAIII": "nsga"}
    expression = "0"
    for type_name, default in reversed(list(DEFAULT_STARTUP_TRIALS.items())):
        field = options[type_name]
        key = "populationSize" if field == "nsga" else "nStartupTrials"
        given = f"{sampler}.{field}.{key}"
        value = f"(has({sampler}.{field}) && has({given}) ? {given} : {default})"
        expression = f"(variables.samplerType == '{type_name}' ? {value} : {expression})"
    return expression


def advice_policy_manifest(name: str = ADVICE_POLICY_NAME) -> dict[str, Any]:
    """A second policy, bound with validationActions [Warn]: `kubectl apply` prints the
    advice of lifecycle/advice.py that the spec alone shows, and stores the study anyway."""
    trials = f"{_SPEC}.budget.trials"
    sampler = f"{_SPEC}.sampler"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Ignore",  # advice only: never in the way of a study
            "matchConstraints": policy_manifest()["spec"]["matchConstraints"],
            "variables": [
                {
                    "name": "samplerType",
                    "expression": f"has({sampler}) && has({sampler}.type) ? {sampler}.type : 'TPE'",
                },
                {"name": "startupTrials", "expression": _startup_trials_cel()},
            ],
            "validations": [
                {
                    "expression": f"!has({trials}) || double(variables.startupTrials) "
                    f"< {STARTUP_SHARE_LIMIT} * double({trials})",
                    "messageExpression": "'the ' + variables.samplerType + ' sampler samples "
                    "its first ' + string(variables.startupTrials) + ' trials at random, at "
                    f"least half of budget.trials (' + string({trials}) + '): raise "
                    "budget.trials or lower the sampler\\'s startup trials (status condition "
                    "BudgetAdvice)'",
                    "reason": "Invalid",
                }
            ],
        },
    }


def policy_files(chart: bool) -> dict[str, str]:
    """What `make crds` writes: deploy/ gets each policy with its binding, the chart the
    policies alone (its templates name and bind them)."""
    if chart:
        return {
            POLICY_FILE: chart_policy_yaml(),
            ADVICE_FILE: HEADER + _dump(advice_policy_manifest()),
        }
    advice = (
        _dump(advice_policy_manifest())
        + "---\n"
        + _dump(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": ADVICE_POLICY_NAME},
                "spec": {"policyName": ADVICE_POLICY_NAME, "validationActions": ["Warn"]},
            }
        )
    )
    return {POLICY_FILE: deploy_yaml(), ADVICE_FILE: advice}
