"""The building blocks every part of the spec and status is written in: the `Model` base
(camelCase on the wire), the shared annotated field types (names, quantities, image
references, free-form objects), the `Direction` enum and container `Resources`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from optuna_operator.api.cel import DNS_SUBDOMAIN, PRINTABLE, RESOURCE_NAME, cel, rules

__all__ = [
    "Choice",
    "Direction",
    "FreeObject",
    "ImageRef",
    "IntOrAuto",
    "LabelValue",
    "MetricName",
    "Model",
    "ObjectName",
    "ParamName",
    "Quantity",
    "Resources",
    "Scalar",
    "defaulted",
]


class Model(BaseModel):
    """Base: camelCase on the wire, unknown fields ignored (the API server prunes them)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def defaulted(model: type[Model]) -> dict[str, Any]:
    """Schema default for an object field the user may leave out. The API server checks a
    default against the CEL rules before filling nested defaults, so it must be complete."""
    return {"default": model().to_wire()}


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


# Categorical values: strings or integers, typed so CEL rules can compare them. (Floats and
# booleans reach a command as text anyway; use "0.5" or "true".)
Choice = Annotated[
    int | str, WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": 128})
]
# Warm-start parameter values, for function objectives: any scalar.
Scalar = Annotated[
    str | bool | int | float,
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "maxLength": 64,
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",  # noqa: E501
        }
    ),
]
IntOrAuto = Annotated[
    int | Literal["auto"],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int ? self >= 1 : self == 'auto'",
                    "must be a positive integer or 'auto'",
                )
            ],
        }
    ),
]
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of an object in the study's namespace (lowercase RFC 1123 subdomain).",
    ),
]
ImageRef = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]
MetricName = Annotated[str, Field(min_length=1, max_length=63, pattern=PRINTABLE)]

ParamName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        min_length=1,
        max_length=63,
        description="Parameter name: letters, digits and underscores, not starting with a "
        "digit (it is also used as an environment variable and a placeholder).",
    ),
]


# Quantity kinds the API server only takes in some forms (extended resources as integers).
_EXTENDED = "k.contains('/') && !k.startsWith('kubernetes.io/')"


def _quantities(field: str) -> list[dict[str, str]]:
    """What the API server checks of one resource map in a pod."""
    return [
        cel(
            f"!has(self.{field}) || self.{field}.all(k, k.matches('{RESOURCE_NAME}'))",
            f"resources.{field}: names are cpu, memory, ephemeral-storage, hugepages-<size> or "
            "a domain-qualified extended resource such as nvidia.com/gpu",
        ),
        cel(
            f"!has(self.{field}) || self.{field}.all(k, "
            f"!quantity(string(self.{field}[k])).isLessThan(quantity('0')))",
            f"resources.{field}: quantities cannot be negative",
        ),
        cel(
            f"!has(self.{field}) || self.{field}.all(k, !({_EXTENDED}) "
            f"|| quantity(string(self.{field}[k])).isInteger())",
            f"resources.{field}: extended resources such as nvidia.com/gpu take whole numbers",
        ),
    ]


class Resources(Model):
    """Container resources (core/v1 ResourceRequirements without claims)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            *_quantities("limits"),
            *_quantities("requests"),
            cel(
                "!has(self.requests) || !has(self.limits) || self.requests.all(k, "
                "!(k in self.limits) || quantity(string(self.requests[k]))"
                ".compareTo(quantity(string(self.limits[k]))) <= 0)",
                "resources: a request cannot exceed the limit of the same resource",
            ),
            cel(
                f"!has(self.requests) || self.requests.all(k, !({_EXTENDED}) "
                "|| has(self.limits) && k in self.limits && quantity(string(self.requests[k]))"
                ".compareTo(quantity(string(self.limits[k]))) == 0)",
                "resources: extended resources such as nvidia.com/gpu cannot be overcommitted; "
                "set the limit, equal to the request (or only the limit)",
            ),
        )
    )
    limits: dict[str, Quantity] | None = Field(
        None,
        description="Upper bounds, e.g. {cpu: 2, memory: 4Gi, nvidia.com/gpu: 1}.",
        json_schema_extra={"maxProperties": 32},
    )
    requests: dict[str, Quantity] | None = Field(
        None, description="Scheduling requests.", json_schema_extra={"maxProperties": 32}
    )
