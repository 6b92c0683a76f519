"""Name → technique. Strict configs with "did you mean", conflict checks, the listing for `ablate techniques`.

Techniques live on the one registry class (ablate.core.registry.Registry): each technique module registers its class
with `@register`, and every module of this package is imported on first use, so adding a file adds a technique.
The order of application is each technique's declared `order` (unique, checked here), never the file or name order.
"""

from __future__ import annotations

from typing import Any

from ablate.core.technique_configs import TECHNIQUES
from ablate.techniques.base import Technique, TrainContext


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: add a technique under its `name`; its `order` must be declared and unused."""
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise TypeError(f"technique {cls!r} must be a Technique subclass")
    if "order" not in vars(cls) or not isinstance(cls.order, int):
        raise TypeError(f"technique '{cls.name}' must declare its order of application (class attribute `order`)")
    clash = [other.name for other in TECHNIQUES.registered().values() if other is not cls and other.order == cls.order]
    if clash:
        raise ValueError(f"technique '{cls.name}' declares order {cls.order}, already that of '{clash[0]}'")
    return TECHNIQUES.register(cls.name, cls)


def techniques() -> dict[str, type[Technique]]:
    """Every registered technique, by name, in the fixed order of application (their declared `order`)."""
    return TECHNIQUES.all()


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
