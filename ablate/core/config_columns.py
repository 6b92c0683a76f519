"""The arrow type of every `config.<dotted key>` column of a result row, from the config's declared field types, so
that a column has one type in every row (a value left unset is null, never the string "None").

`int` → int64, `float` (or int | float) → float64, `bool` → bool, `str`/`Literal[str]` → string; a union of
other kinds (e.g. eval.mi_pool: "dataset" or an integer M), lists and mappings → string (lists are stored as
JSON, as ablate.core.config.flatten writes them). The model section is typed by its family (config.model.name),
techniques by their registered config classes.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel

from ablate.core.config import RunConfig, model_config_class
from ablate.core.technique_configs import TECHNIQUES

_NONE = type(None)


def annotation_type(annotation: Any) -> pa.DataType:
    """The arrow type a field annotation's values are stored as."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        kinds = [annotation_type(a) for a in typing.get_args(annotation) if a is not _NONE]
        if len(set(kinds)) == 1:
            return kinds[0]
        if set(kinds) <= {pa.int64(), pa.float64()}:
            return pa.float64()
        return pa.string()
    if origin is Literal:
        kinds = {annotation_type(type(v)) for v in typing.get_args(annotation)}
        return kinds.pop() if len(kinds) == 1 else pa.string()
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    return pa.string()


def _field(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields.get(name)
    return None if info is None else info.annotation


def config_column_type(column: str, row: dict[str, Any]) -> pa.DataType | None:
    """The declared type of a `config.` column (None when the key is not a declared field)."""
    parts = column.split(".")[1:]
    if not parts:
        return None
    if parts[0] in ("technique_versions", "techniques") and len(parts) == 1:
        return pa.string()  # none configured: "{}"
    if parts[0] == "technique_versions":
        return pa.int64() if len(parts) == 2 else None
    if parts[0] == "techniques":
        if len(parts) == 2:
            return pa.string()  # a technique whose config has no fields: "{}"
        if len(parts) != 3 or parts[1] not in TECHNIQUES:
            return None
        annotation = _field(TECHNIQUES.get(parts[1]).Config, parts[2])
        return None if annotation is None else annotation_type(annotation)
    model: Any = RunConfig
    for i, part in enumerate(parts):
        if parts[:1] == ["model"] and i == 1:
            model = model_config_class(str(row.get("config.model.name")))
            if model is None:
                return None
        annotation = _field(model, part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if annotation is None:
            return pa.string() if model is dict else None
        nested = _model_in(annotation)
        if i == len(parts) - 1:
            return pa.string() if nested is not None or _is_container(annotation) else annotation_type(annotation)
        model = nested if nested is not None else (dict if _is_container(annotation) else None)
        if model is dict:
            return pa.string()
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (Optional[Model] included)."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_container(annotation: Any) -> bool:
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    return any(typing.get_origin(c) in (dict, list) or c in (dict, list) for c in candidates)
