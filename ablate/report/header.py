"""A study's header (provenance, dates, compute) and the metric conventions its rows were measured under."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ablate.core.progress import format_seconds
from ablate.models.kernels import arithmetic
from ablate.report import tables
from ablate.report.inputs import StudyInput
from ablate.sweep.cells import study_hash


# ----------------------------------------------------------------------------- header


def header(study: StudyInput) -> dict[str, Any]:
    rows = pd.concat([f for f in (study.ok, study.failed) if not f.empty], ignore_index=True, sort=False) \
        if not (study.ok.empty and study.failed.empty) else pd.DataFrame()
    recorded = study.meta.get("study_hash")
    overrides = study.meta.get("overrides") or []
    overrides = [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []
    # the hash covers the --set overrides the study was swept with (study.json), as the sweep computed it
    actual = study_hash(study.study_text, overrides) if study.study_text is not None else None
    seconds = math.nan
    if not rows.empty:
        seconds = float(rows.get("train_seconds", pd.Series(dtype=float)).fillna(0).sum()
                        + rows.get("eval_seconds", pd.Series(dtype=float)).fillna(0).sum())
    versions = []
    for col in sorted(c for c in rows.columns if c.startswith("version.")) if not rows.empty else []:
        versions.append((col.split(".", 1)[1], tables.value_counts(rows, col)))

    def first_last(col: str, pick) -> str:
        if rows.empty or col not in rows:
            return "–"
        values = rows[col].dropna().astype(str)
        return pick(values) if not values.empty else "–"

    return {
        "study": study.name,
        "folder": str(study.folder),
        "study_file": study.meta.get("study_file", "–"),
        "study_hash": recorded or actual or "–",
        "hash_mismatch": bool(recorded and actual and recorded != actual),
        "overrides": overrides,
        "created": study.meta.get("created", "–"),
        "updated": study.meta.get("updated", "–"),
        "first_start": first_last("started_at", min),
        "last_finish": first_last("finished_at", max),
        "commits": tables.value_counts(rows, "git_commit"),
        "versions": versions,
        "devices": tables.value_counts(rows, "device"),
        "hosts": tables.value_counts(rows, "host"),
        "cpus": tables.value_counts(rows, "cpu"),
        "kernels": kernel_counts(rows),
        "compute": format_seconds(seconds, words=True),
        "compute_seconds": seconds,
        "n_ok": len(study.ok),
        "n_failed_attempts": len(study.failed),
        "study_text": study.study_text,
    }


def kernel_counts(rows: pd.DataFrame) -> list[tuple[str, int]]:
    """The CPU kernels the rows ran (their `kernels` value, in today's form and without how each was chosen:
    ablate.models.kernels.arithmetic) with counts: a study whose rows ran several kernel sets on one model did not
    round alike, and one seed's training moves with its rounding (README.md). Rows that predate the record have none."""
    if rows.empty or "kernels" not in rows:
        return []
    same = rows["kernels"].map(lambda v: arithmetic(v) if isinstance(v, str) else v)
    return tables.value_counts(pd.DataFrame({"kernels": same}), "kernels")


# ----------------------------------------------------------------------------- conventions


def conventions(rows: pd.DataFrame, split: str) -> list[str]:
    """The evaluation conventions of a table's rows, one phrase each; values that differ are flagged MIXED."""
    def values(column: str, frame: pd.DataFrame = rows) -> list[Any]:
        if frame.empty or column not in frame:
            return []
        return sorted(frame[column].dropna().unique().tolist(), key=str)

    def shown(column: str, frame: pd.DataFrame = rows) -> str:
        found = values(column, frame)
        text = ", ".join(_fmt_convention(v) for v in found)
        return text + (" (MIXED between rows: not comparable)" if len(found) > 1 else "")

    out = []
    # a model without a latent (nz 0: a language model) has an exact NLL, which no K changes
    no_latent = ~tables.has_latent(rows)
    latent_rows = rows[~no_latent] if (~no_latent).any() else rows
    if values("eval.iw_samples", latent_rows):
        exact = "; exact NLL for the rows without a latent" if no_latent.any() and (~no_latent).any() else ""
        out.append(f"IW samples K = {shown('eval.iw_samples', latent_rows)}{exact}")
    pool_col = f"{split}.mi_pool" if values(f"{split}.mi_pool") else "eval.mi_pool"
    if values(pool_col):
        bounds = ", ".join(f"{math.log(float(v)):.2f}" for v in values(pool_col) if float(v) > 1)
        kind = f"{shown('eval.mi_pool_kind')}; " if values("eval.mi_pool_kind") else ""
        out.append(f"MI pool M = {shown(pool_col)} ({kind}MI ≤ log M = {bounds or '–'})")
    if values("eval.au_delta"):
        out.append(f"AU δ = {shown('eval.au_delta')}")
    if values("eval.token_unit"):
        eos = {True: "counting </s>", False: "not counting </s>"}
        bos = {True: "counting <s>", False: "not counting <s>"}
        parts = [f"PPL token unit = {shown('eval.token_unit')}"]
        for column, words in (("eval.ppl_counts_eos", eos), ("eval.ppl_counts_bos", bos)):
            found = values(column)
            if found:
                parts.append(" / ".join(words.get(bool(v), str(v)) for v in found)
                             + (" (MIXED)" if len(found) > 1 else ""))
        out.append(", ".join(parts) + "; PPL/word per word + </s>")
    return out


def probe_baselines(rows: pd.DataFrame, split: str) -> str | None:
    """The majority-class accuracy of each probed factor (what a probe reaches from an uninformative z)."""
    prefix = f"{split}.probe_majority."
    cols = sorted(c for c in rows.columns if c.startswith(prefix) and rows[c].notna().any())
    if not cols:
        return None
    parts = [f"{c[len(prefix):]} {rows[c].mean():.3f}" for c in cols]
    return (f"Probe accuracies compare with the majority-class baseline ({split}, mean over rows): "
            + ", ".join(parts) + ".")


def _fmt_convention(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
