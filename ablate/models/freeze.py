"""`train.freeze`: parameters that do not train, named by patterns over the model's parameter names.

A pattern is dotted components, each a name, `*` (any one component) or an integer range `a-b` (layer indices);
it freezes every parameter under the module it names. For the Optimus family with SmolLM2,
`[lm.model.embed_tokens, lm.model.layers.0-23]` freezes the decoder's embeddings (tied to its output layer) and its
first 24 of 30 layers. A pattern that names no parameter is an error listing the model's modules.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from ablate.core.config import ConfigError
from ablate.core.registry import did_you_mean


def _component_matches(want: str, have: str) -> bool:
    if want == "*":
        return True
    if want[0].isdigit() and "-" in want:
        low, high = (int(x) for x in want.split("-"))
        return have.isdigit() and low <= int(have) <= high
    return want == have


def matches(pattern: str, parameter: str) -> bool:
    """Whether the parameter lies under the module `pattern` names."""
    want, have = pattern.split("."), parameter.split(".")
    return len(want) <= len(have) and all(_component_matches(w, h) for w, h in zip(want, have))


def module_overview(model: nn.Module) -> list[str]:
    """The model's modules in a few names: each parameter's path up to its first layer index, the indices as one
    range (`lm.model.layers.0-29`), else its module (`to_posterior`)."""
    ranges: dict[str, set[int]] = defaultdict(set)
    plain: set[str] = set()
    for name, _ in model.named_parameters():
        parts = name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if index is None:
            plain.add(".".join(parts[:-1]) or parts[0])
        else:
            ranges[".".join(parts[:index])].add(int(parts[index]))
    out = plain | {f"{k}.{min(v)}-{max(v)}" if len(v) > 1 else f"{k}.{min(v)}" for k, v in ranges.items()}
    return sorted(out)


def freeze(model: nn.Module, patterns: list[str]) -> int:
    """Stop the parameters the patterns name from training; returns how many values were frozen. A pattern that
    names nothing is a ConfigError listing the model's modules."""
    params = dict(model.named_parameters(remove_duplicate=False))
    frozen: dict[int, nn.Parameter] = {}
    for pattern in patterns:
        hits = [p for name, p in params.items() if matches(pattern, name)]
        if not hits:
            modules = module_overview(model)
            hint = did_you_mean(pattern, modules)
            raise ConfigError(f"train.freeze: {pattern!r} names no parameter of this model{hint}; its modules: "
                              f"{', '.join(modules)}")
        frozen.update({id(p): p for p in hits})
    for param in frozen.values():
        param.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())
