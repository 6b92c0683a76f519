"""One-line error messages from what validation found: the one translation of a pydantic error (key path, problem,
the value shown bounded, "did you mean" for an unknown key), used by the run config and every technique config."""

from __future__ import annotations

import reprlib
from typing import Any, Callable

from pydantic import ValidationError

from ablate.core.registry import did_you_mean


def shorten(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: an error line never prints an unbounded value."""
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = limit, limit, 6, 4, 2
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_line(error: ValidationError, prefix: tuple[str, ...] = (), skip: tuple[str, ...] = (),
                    fields_at: Callable[[tuple[Any, ...]], list[str]] = lambda loc: [],
                    no_match: Callable[[list[str]], str] = lambda fields: "; remove it or check the spelling") -> str:
    """'<key>: <problem> (got <value>)' or "unknown key '<key>'; did you mean '<field>'?" for pydantic's first error.

    `prefix` is prepended to the key path (e.g. ('techniques', 'free_bits')), `skip` drops location parts that are
    not keys (a discriminated union's tag), `fields_at(loc)` gives the valid keys where an unknown one was found.
    """
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if p not in skip)
    key = ".".join(str(p) for p in prefix + loc)
    if first["type"] == "extra_forbidden":
        fields = fields_at(loc[:-1])
        return f"unknown key '{key}'{did_you_mean(str(loc[-1]), fields) or no_match(fields)}"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = f" (got {shorten(value)})" if not isinstance(value, dict) and first["type"] != "missing" else ""
    return f"{key + ': ' if key else ''}{message}{shown}"


class Fault(RuntimeError):
    """A fault outside the user's input that ends a command with one line and exit status 1 (e.g. a storage
    server unreachable for longer than the command waits); what was written stays."""
