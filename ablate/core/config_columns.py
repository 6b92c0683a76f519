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

from ablate.core.config import CONTAINER, walk_fields
from ablate.core.technique_registry import TECHNIQUES

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
        annotation, _ = walk_fields(parts, None)
        return None if annotation is None else annotation_type(annotation)
    annotation, holds = walk_fields(parts, str(row.get("config.model.name")))
    if holds is CONTAINER:
        return pa.string()  # a dict or list field (kept as JSON), or a key inside one
    if annotation is None:
        return None
    return pa.string() if holds is not None else annotation_type(annotation)
