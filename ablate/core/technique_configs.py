"""The technique registry as the run config sees it: names, config classes, versions and conflict rules.

It sits below the config layer so that `ablate.core.config` can validate a run's techniques without importing them: the
technique classes live in ablate.techniques and register themselves here (ablate.techniques.registry.register),
found by discovery on first use. Each entry is a Technique class: it has `Config` (a pydantic model), `version`,
`order`, `replaces_kl_term` and `takes_over_step`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ablate.core.errors import validation_line
from ablate.core.registry import Registry, UnknownName

TECHNIQUES: Registry[Any] = Registry("technique", discover=("ablate.techniques",), order_key=lambda cls: cls.order)


def get(name: str) -> Any:
    """The technique class of a name, or a one-line error with the closest name."""
    try:
        return TECHNIQUES.get(name)
    except UnknownName:
        raise ValueError(f"unknown technique 'techniques.{name}'{TECHNIQUES.hint(name)}") from None


def _validate_one(name: str, fields: Any) -> dict[str, Any]:
    cls = get(name)
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise ValueError(f"techniques.{name} must be a mapping of its fields (e.g. {{}} for the defaults)")
    try:
        return cls.Config.model_validate(fields).model_dump(mode="json")
    except ValidationError as error:
        raise ValueError(validation_line(error, prefix=("techniques", name),
                                         fields_at=lambda loc: list(cls.Config.model_fields),
                                         no_match=lambda fields: f"; fields: {', '.join(fields)}")) from None


def resolve_techniques(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate every technique config (defaults filled) and reject conflicting combinations."""
    resolved = {name: _validate_one(name, fields) for name, fields in sorted(raw.items())}
    replacing = [name for name in resolved if get(name).replaces_kl_term]
    if len(replacing) > 1:
        raise ValueError(
            f"techniques {' and '.join(replacing)} both replace the KL term; keep one of them "
            "(free bits thresholds the KL, the constraint targets a value C: they cannot both define it)"
        )
    taking_over = step_takers(resolved)
    if len(taking_over) > 1:
        raise ValueError(f"techniques {' and '.join(taking_over)} both take over the optimiser step; keep one of them")
    return resolved


def step_takers(resolved: dict[str, Any]) -> list[str]:
    """The techniques among `resolved` that take over the optimiser step (He et al.'s aggressive training)."""
    return [name for name in resolved if get(name).takes_over_step]


def technique_versions(resolved: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: get(name).version for name in resolved}
