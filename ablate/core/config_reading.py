"""Reading a run config: its YAML file (through safe_yaml), `--set KEY=VALUE` overrides, `--quick`, and the one-line
error of a bad one (the file, the line, the key, the closest valid key)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ValidationError

from ablate.core import safe_yaml
from ablate.core.config import ConfigError, RunConfig, model_name, walk_fields
from ablate.core.errors import shorten, validation_line
from ablate.core.registry import did_you_mean


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); the value is parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
    key, _, raw = text.partition("=")
    if safe_yaml.control_character(key):
        raise ConfigError(f"--set: the key contains the control character {safe_yaml.control_character(key)}; "
                          "keys are dotted config names, e.g. train.lr")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key; expected KEY=VALUE, e.g. --set train.epochs=2")
    if not raw.strip():
        return path, None
    try:
        value, _ = safe_yaml.parse(raw)
    except safe_yaml.YAMLRefused as error:
        raise ConfigError(f"--set {shorten(text)}: the value is not valid YAML ({error.problem}); "
                          "e.g. --set train.epochs=2 or --set 'eval.splits=[valid]'") from None
    return path, value


def set_path(data: dict[str, Any], path: Sequence[Any], value: Any) -> None:
    """data[p0][p1]...[pn] = value, creating (or replacing non-mapping) sections on the way: the one dotted-key
    setter (`--set` overrides, a study's swept values)."""
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (creating sections as needed). `techniques.<name>=null` removes the
    technique (in a YAML file `<name>:` with no value means its defaults; on the command line null means off)."""
    for text in overrides:
        path, value = parse_override(text)
        if value is None and len(path) == 2 and path[0] == "techniques":
            techniques = data.get("techniques")
            if isinstance(techniques, dict):
                techniques.pop(path[1], None)
            continue
        set_path(data, path, copy.deepcopy(value))
    return data


def suggest(word: str, options: list[str]) -> str:
    """"; did you mean 'x'?" for the closest option, or '' when nothing is close (ablate.core.registry's one rule)."""
    return did_you_mean(word, options)


def _fields_at(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    """The valid field names of the model at a key path of RunConfig (for 'did you mean')."""
    _, holds = walk_fields(loc, model_name(data.get("model")))
    return list(holds.model_fields) if isinstance(holds, type) and issubclass(holds, BaseModel) else []


def explain(error: ValidationError, data: dict[str, Any], source: str,
            lines: dict[tuple, int] | None = None) -> ConfigError:
    """Turn pydantic's first error into one line: file, line (when `lines` maps key paths to lines), key path,
    problem, fix (ablate.core.errors)."""
    line = validation_line(error, fields_at=lambda loc: _fields_at(loc, data))
    loc = tuple(p for p in error.errors()[0]["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    named = re.search(r"'((?:techniques|model|train|data|eval)(?:\.[\w-]+)+)'", line)  # a key the message quotes
    if named and len(named.group(1).split(".")) > len(loc):
        loc = tuple(named.group(1).split("."))
    found = _line_of(loc, lines)
    return ConfigError(f"{source}:{f' line {found}:' if found else ''} {line}")


def _line_of(path: tuple, lines: dict[tuple, int] | None) -> int | None:
    """The line of the deepest prefix of a key path the file has (an unknown key: the key itself)."""
    return next((lines[path[:n]] for n in range(len(path), 0, -1) if lines and path[:n] in lines), None)


def build_config(data: dict[str, Any], source: str = "<config>", lines: dict[tuple, int] | None = None
                 ) -> RunConfig:
    """Validate a nested dict into a RunConfig or raise a one-line ConfigError (naming the line when `lines`, a
    key path → line map of the file, is given)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping of sections (data, model, train, ...)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise explain(error, data, source, lines) from None
    except ConfigError as error:  # a technique's own validation: its key path is quoted in the message
        named = re.search(r"'((?:techniques|model|train|data|eval)(?:\.[\w-]+)+)'", str(error))
        line = _line_of(tuple(named.group(1).split(".")) if named else (), lines)
        raise ConfigError(f"{source}:{f' line {line}:' if line else ''} {error}") from None


def read_yaml_file(path: str | Path, what: str) -> tuple[str, dict[str, Any], Any]:
    """(text, mapping, root node) of a config or study file (ablate.core.safe_yaml); every problem one ConfigError
    line naming the file (and the line). An empty file is an error, never "all defaults"."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        text = safe_yaml.read_text(path)
        data, root = safe_yaml.parse(text)
    except safe_yaml.YAMLRefused as error:
        raise ConfigError(error.at(path)) from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write a {what} (see studies/examples/) "
                          "or give no file to `ablate run` for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping of keys to values (got a "
                          f"{type(data).__name__})")
    return text, data, root


def is_study(data: dict[str, Any]) -> bool:
    """Whether a YAML mapping is a study (arms, a study name) rather than a run config."""
    return "arms" in data or "study" in data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (a run config or a study) as data; see read_yaml_file."""
    return read_yaml_file(path, "run config")[1]


# `--quick`: a first look
QUICK = ["data.max_train=2000", "train.max_steps=200", "eval.max_sentences=200", "eval.iw_samples=50"]


def with_quick(overrides: list[str], quick: bool) -> list[str]:
    """`--quick` as --set overrides before the user's own (which win): the first 2,000 training sentences (a
    pretraining phase's epochs too), 200 VAE-phase steps, 200 sentences per evaluated split, K = 50 — a first look,
    numbers not comparable with full runs."""
    return (QUICK + list(overrides)) if quick else list(overrides)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None) and apply `--set` overrides (an error an
    override causes names the override, not the file)."""
    source = str(path) if path else "<defaults>"
    data, lines = {}, None
    if path:
        _, data, root = read_yaml_file(path, "run config")
        lines = safe_yaml.line_map(root) if root is not None else None
    return blame_overrides(lambda given: build_config(apply_overrides(copy.deepcopy(data), given), source, lines),
                           list(overrides or []), source)


def blame_overrides(load: Callable[[list[str]], Any], overrides: list[str], source: str) -> Any:
    """`load(overrides)`; when it fails only because of an override, the error names that `--set KEY=VALUE`
    (the first whose addition breaks it) instead of the file."""
    try:
        return load(overrides)
    except ConfigError as error:
        if not overrides:
            raise
        try:
            load([])
        except ConfigError:
            raise error from None  # the file itself is wrong
        for n in range(1, len(overrides) + 1):
            try:
                load(overrides[:n])
            except ConfigError as culprit:
                if str(culprit).startswith("--set"):
                    raise
                problem = re.sub(r"^(line \d+: )?(arm '[^']*': )?", "", str(culprit).removeprefix(f"{source}: "))
                raise ConfigError(f"--set {shorten(overrides[n - 1])}: {problem}") from None
        raise
