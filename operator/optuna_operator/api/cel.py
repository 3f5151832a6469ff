"""How a rule is written: the `x-kubernetes-validations` (CEL) helpers, and the regular
expressions that both a field's `pattern` and a CEL rule's `matches()` use.

Every model file builds its rules from these; they know nothing of the models.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DNS_SUBDOMAIN",
    "PRINTABLE",
    "QUALIFIED_KEY",
    "RESOURCE_NAME",
    "cel",
    "cel_list",
    "only_for",
    "options_only_for",
    "rules",
]


def cel(rule: str, message: str) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message}


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(entries)}


def only_for(field: str, type_name: str, section: str) -> dict[str, str]:
    """The rule that `section.field` (the options of one type) is set only with that type."""
    return cel(
        f"!has(self.{field}) || self.type == '{type_name}'",
        f"{section}.{field} is only valid when {section}.type is {type_name}",
    )


def options_only_for(section: str, **types: str) -> list[dict[str, str]]:
    """`only_for` for each options field (keyword) and the type it belongs to (value)."""
    return [only_for(field, type_name, section) for field, type_name in types.items()]


def cel_list(items: tuple[str, ...]) -> str:
    """Strings as a CEL list literal, for `x in [...]`."""
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


# Kubernetes object names (RFC 1123 subdomain), as the API server checks them in pod specs.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Label and annotation keys: an optional DNS-subdomain prefix and a 63-character name.
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# Resource names the API server accepts in a container: the standard ones, hugepages-<size>
# and domain-qualified extended resources.
RESOURCE_NAME = (
    r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z.]+|"
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)
# No control characters (newlines, escapes): the text reaches terminals, `eval` and logs.
PRINTABLE = r"^[^\x00-\x1F\x7F]*$"
