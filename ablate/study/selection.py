"""A study's rule for "best": the validation column(s) that rank settings and search trials, and an optional
constraint they must meet — `select: {by: valid.nll, where: "valid.au >= 8"}` in a study file.

Selecting by validation NLL alone drives a remedy to its weakest setting (a strong decoder's likelihood is best
near collapse); a constraint such as "at least 8 active units" compares remedies among the settings that keep z
in use. The sweep's search arms get the constraint as Optuna constraints (TPE samples feasible trials first), and
the report chooses each arm's setting among the feasible ones.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
CONDITION = re.compile(r"^\s*(valid\.[A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<)\s*"
                       r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Condition:
    column: str  # a validation column of the result rows, e.g. valid.au
    op: str
    value: float

    def holds(self, row: Mapping[str, Any]) -> bool:
        got = row.get(self.column)
        return isinstance(got, (int, float)) and math.isfinite(got) and OPS[self.op](float(got), self.value)

    def violation(self, row: Mapping[str, Any]) -> float:
        """Optuna's constraint value: ≤ 0 when the condition holds, > 0 by how much it is missed (1 when the
        column is missing)."""
        got = row.get(self.column)
        if not isinstance(got, (int, float)) or not math.isfinite(got):
            return 1.0
        if self.holds(row):
            return 0.0
        return max(abs(float(got) - self.value), 1e-9)

    def text(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


def parse_where(text: str, known: Callable[[str], bool]) -> tuple[Condition, ...]:
    """'valid.au >= 8 and valid.kl > 1' → conditions; ValueError with the fix on anything else. `known(column)`
    says whether a column is a declared validation metric."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("where must be a condition such as \"valid.au >= 8\" (several joined by 'and')")
    out = []
    for part in re.split(r"\s+and\s+", text.strip()):
        found = CONDITION.match(part)
        if not found:
            raise ValueError(f"{part.strip()!r} is not a condition: write <valid column> <op> <number>, op one of "
                             f"{', '.join(OPS)}, e.g. \"valid.au >= 8\"; join several with 'and'")
        column, op, value = found.groups()
        if not known(column):
            raise ValueError(f"{column!r} is not a validation metric of the rows (valid.<metric>, e.g. valid.au)")
        out.append(Condition(column, op, float(value)))
    return tuple(out)


def admits(conditions: Sequence[Condition], row: Mapping[str, Any]) -> bool:
    return all(c.holds(row) for c in conditions)


def where_text(conditions: Sequence[Condition]) -> str:
    return " and ".join(c.text() for c in conditions)


def conditions_from_json(items: Sequence[Sequence[Any]]) -> tuple[Condition, ...]:
    """The [[column, op, value], ...] a search spec stores in the ledger."""
    return tuple(Condition(str(c), str(o), float(v)) for c, o, v in items)
