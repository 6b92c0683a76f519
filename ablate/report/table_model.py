"""The table model of the report (columns, cells, rows, the numbers behind them) and its writers: CSV, LaTeX and JSON
beside the HTML (as HELM's table module: the model and its writers in one small place)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.results.safe_files import spreadsheet_safe, write_text_atomic
from ablate.metrics.schema import Metric


# ----------------------------------------------------------------------------- rendered tables


@dataclass
class Col:
    label: str
    tooltip: str = ""
    numeric: bool = False


@dataclass
class Cell:
    text: str
    sort: Any = None          # the value sorted on (the mean for metric cells); None: the text
    bold: bool = False
    cls: str = ""
    title: str = ""

    @property
    def sort_attr(self) -> str:
        if self.sort is None:
            return self.text
        if isinstance(self.sort, (int, float)):
            value = float(self.sort)
            if math.isnan(value):
                return ""
            return ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else repr(value)
        return str(self.sort)


@dataclass
class Table:
    id: str
    title: str
    columns: list[Col]
    rows: list[list[Cell]]
    data: pd.DataFrame                  # the numbers behind it, written as CSV and JSON
    notes: list[str] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    footer: list[list[Cell]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)   # format → path relative to index.html


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def mean_std_n(m: Metric, mean: Any, std: Any, n: Any) -> str:
    mean, std = _num(mean), _num(std)
    n = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
    if n == 0 or math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{m.fmt(mean)} ({n})"
    return f"{m.fmt(mean)} ± {m.fmt(std)} ({n})"


def _count(value: Any) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{int(v)}"


# ----------------------------------------------------------------------------- writing tables


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "−": r"$-$", "Δ": r"$\Delta$", "β": r"$\beta$", "δ": r"$\delta$", "–": "--",
                 "—": "---", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "→": r"$\to$", "<": r"$<$",
                 ">": r"$>$", "‖": r"$\|$"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(LATEX_UNICODE.get(ch, ch) for ch in out)


def to_latex(table: Table) -> str:
    align = "".join("r" if c.numeric else "l" for c in table.columns)
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c.label) for c in table.columns) + r" \\", r"\midrule"]
    for row in table.rows:
        lines.append(" & ".join((f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text))
                                for c in row) + r" \\")
    if table.footer:
        lines.append(r"\midrule")
        for row in table.footer:
            lines.append(" & ".join(latex_escape(c.text) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {latex_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_table(table: Table, folder: Path, rel: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / table.id
    write_text_atomic(stem.with_suffix(".csv"),
                      spreadsheet_safe(table.data).to_csv(index=False, lineterminator="\n"))
    records = [{k: _jsonable(v) for k, v in rec.items()} for rec in table.data.to_dict(orient="records")]
    payload = {"title": table.title, "columns": [c.label for c in table.columns], "notes": table.notes,
               "rows": records}
    write_text_atomic(stem.with_suffix(".json"),
                      json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    write_text_atomic(stem.with_suffix(".tex"), to_latex(table))
    table.files = {ext: f"{rel}/{table.id}.{ext}" for ext in ("csv", "tex", "json")}
