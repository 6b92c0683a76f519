"""Name → technique. Strict configs with "did you mean", conflict checks, the listing for `ablate techniques`.

Techniques live on the one registry class (ablate.registry.Registry): each technique module registers its class
with `@register`, and every module of this package is imported on first use, so adding a file adds a technique.
The order of application is each technique's declared `order` (unique, checked here), never the file or name order.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ablate.registry import Registry, UnknownName, did_you_mean
from ablate.techniques.base import Technique, TrainContext

TECHNIQUES: Registry[type[Technique]] = Registry("technique", base=Technique, discover=("ablate.techniques",),
                                                  order_key=lambda cls: cls.order)


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: add a technique under its `name`; its `order` must be declared and unused."""
    if "order" not in vars(cls) or not isinstance(cls.order, int):
        raise TypeError(f"technique '{cls.name}' must declare its order of application (class attribute `order`)")
    clash = [other.name for other in TECHNIQUES._entries.values() if other is not cls and other.order == cls.order]
    if clash:
        raise ValueError(f"technique '{cls.name}' declares order {cls.order}, already that of '{clash[0]}'")
    return TECHNIQUES.register(cls.name, cls)


def techniques() -> dict[str, type[Technique]]:
    """Every registered technique, by name, in the fixed order of application (their declared `order`)."""
    return TECHNIQUES.all()


def get(name: str) -> type[Technique]:
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
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            fields = list(cls.Config.model_fields)
            hint = did_you_mean(key, fields) or f"; fields: {', '.join(fields)}"
            raise ValueError(f"unknown key 'techniques.{name}.{key}'{hint}") from None
        msg = first["msg"].removeprefix("Value error, ")
        where = f"techniques.{name}.{key}" if key else f"techniques.{name}"
        raise ValueError(f"{where}: {msg} (got {first.get('input')!r})") from None


def resolve_techniques(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate every technique config (defaults filled) and reject conflicting combinations."""
    resolved = {name: _validate_one(name, fields) for name, fields in sorted(raw.items())}
    replacing = [name for name in resolved if get(name).replaces_kl_term]
    if len(replacing) > 1:
        raise ValueError(
            f"techniques {' and '.join(replacing)} both replace the KL term; keep one of them "
            "(free bits thresholds the KL, the constraint targets a value C: they cannot both define it)"
        )
    taking_over = [name for name in resolved if get(name).takes_over_step]
    if len(taking_over) > 1:
        raise ValueError(f"techniques {' and '.join(taking_over)} both take over the optimiser step; keep one of them")
    return resolved


def technique_versions(resolved: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: get(name).version for name in resolved}


def build_techniques(resolved: dict[str, dict[str, Any]], context: TrainContext) -> list[Technique]:
    """Instantiate the configured techniques in the registry's fixed order."""
    return [cls(cls.Config.model_validate(resolved[name]), context) for name, cls in techniques().items()
            if name in resolved]


def posterior_transforms(resolved: dict[str, dict[str, Any]], nz: int) -> list[Any]:
    """The modules the configured techniques add after the encoder (e.g. BN-VAE), in the registry's order."""
    modules = []
    for name, cls in techniques().items():
        if name in resolved:
            module = cls.posterior_transform(cls.Config.model_validate(resolved[name]), nz)
            if module is not None:
                modules.append(module)
    return modules


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
