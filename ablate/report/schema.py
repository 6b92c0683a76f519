"""The report's view of the metric declarations (ablate.metrics.schema): every table, tooltip, plot axis and
"best" marker of `ablate report` reads them, so a metric is described once. What is the report's own: the collapse
flag.
"""

from __future__ import annotations

from typing import Any

from ablate.metrics.schema import PROBE_PREFIX, Metric, in_table, metric

# Collapse flag (a row of a table): AU = 0 or KL below this many nats per sentence.
COLLAPSE_KL = 0.1


def main_metrics() -> list[str]:
    """The columns of the main table, in order (probe accuracies are appended when present)."""
    return in_table("main")


def metrics_in(rows: Any, split: str = "test") -> list[Metric]:
    """The declarations whose `{split}.{name}` column is present (`rows`: a DataFrame, or its columns): main-table
    metrics in order, then probes sorted. PPL per word is left out where every row's tokens are words: it is
    PPL itself there."""
    cols = set(rows.columns if hasattr(rows, "columns") else rows)
    words = hasattr(rows, "columns") and "eval.token_unit" in cols and len(rows) > 0 and \
        bool((rows["eval.token_unit"] == "word").all())
    found = [metric(n) for n in main_metrics() if f"{split}.{n}" in cols and not (words and n == "ppl_word")]
    probes = sorted(c[len(split) + 1:] for c in cols if c.startswith(f"{split}.{PROBE_PREFIX}"))
    return found + [metric(p) for p in probes]
