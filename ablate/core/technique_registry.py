"""The technique registry, in one file: name → Technique class, registration (`@register`, a declared and unused
`order`), each technique's config validated in one place, conflict rules, and the listing for `ablate techniques`.

It sits in the bottom layer so that `ablate.core.config` can validate a run's techniques without importing them: the
technique classes live in ablate.techniques and register themselves here, found by discovery on first use, so
adding a file there adds a technique. Each entry is a Technique class (ablate.techniques.base): it has `Config` (a
pydantic model), `version`, `order`, `replaces_kl_term` and `takes_over_step`. The order of application is each
technique's declared `order` (unique, checked here), never the file or name order.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ablate.core.errors import validation_line
from ablate.core.registry import Registry, UnknownName

TECHNIQUES: Registry[Any] = Registry("technique", discover=("ablate.techniques",), order_key=lambda cls: cls.order)
TECHNIQUE_ATTRIBUTES = ("name", "Config", "version", "paper", "summary")  # what every Technique class has


def register(cls: Any) -> Any:
    """Class decorator: add a technique (an ablate.techniques.base.Technique subclass) under its `name`; its `order`
    must be declared and unused."""
    if not (isinstance(cls, type) and all(hasattr(cls, a) for a in TECHNIQUE_ATTRIBUTES)):
        raise TypeError(f"technique {cls!r} must be a Technique subclass (ablate.techniques.base)")
    if "order" not in vars(cls) or not isinstance(cls.order, int):
        raise TypeError(f"technique '{cls.name}' must declare its order of application (class attribute `order`)")
    clash = [other.name for other in TECHNIQUES.registered().values() if other is not cls and other.order == cls.order]
    if clash:
        raise ValueError(f"technique '{cls.name}' declares order {cls.order}, already that of '{clash[0]}'")
    return TECHNIQUES.register(cls.name, cls)


def techniques() -> dict[str, Any]:
    """Every registered technique, by name, in the fixed order of application (their declared `order`)."""
    return TECHNIQUES.all()


def get(name: str) -> Any:
    """The technique class of a name, or a one-line error with the closest name."""
    try:
        return TECHNIQUES.get(name)
    except UnknownName:
        raise ValueError(f"unknown technique 'techniques.{name}'{TECHNIQUES.hint(name)}") from None


def technique_config(name: str, fields: Any) -> Any:
    """A technique's config object from its fields (None or {} for the defaults): the one place a technique's config
    is validated — when a run config is read (`resolve_techniques`) and when the techniques are built from it."""
    cls = get(name)
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise ValueError(f"techniques.{name} must be a mapping of its fields (e.g. {{}} for the defaults)")
    try:
        return cls.Config.model_validate(fields)
    except ValidationError as error:
        raise ValueError(validation_line(error, prefix=("techniques", name),
                                         fields_at=lambda loc: list(cls.Config.model_fields),
                                         no_match=lambda fields: f"; fields: {', '.join(fields)}")) from None


def resolve_techniques(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate every technique config (defaults filled) and reject conflicting combinations."""
    resolved = {name: technique_config(name, fields).model_dump(mode="json") for name, fields in sorted(raw.items())}
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


def describe() -> list[dict[str, Any]]:
    """For `ablate techniques`: name, version, paper, summary and each field with its default and help."""
    rows = []
    for name, cls in techniques().items():
        fields = []
        for field_name, info in cls.Config.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            fields.append({"name": field_name, "default": default, "required": info.is_required(),
                           "help": info.description or ""})
        rows.append({"name": name, "version": cls.version, "paper": cls.paper, "summary": cls.summary,
                     "replaces_kl_term": cls.replaces_kl_term, "fields": fields})
    return rows
