"""Each metric is declared once (ablate.metrics.schema) and everything reads the declaration: a newly declared
metric reaches the result row, the CLI summary and the report; "best" means one thing in the ledger and the report."""

from __future__ import annotations

import json
import math

import pytest

from ablate.cli.main import format_metrics
from ablate.core.config_reading import build_config
from ablate.metrics.schema import METRICS, SELECT, Metric, SplitStats, emitted, in_table, selection_value
from ablate.report import tables
from ablate.report.build import build_report
from ablate.results.rows import row_schema
from ablate.engine.run import execute
from conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NLL_PER_TOKEN = Metric("nll_per_token", "NLL/token", "min", ".4f", "nats/token",
                       "IW NLL per token of the model's unit (log of PPL).", emit=lambda s: s.nll_sum / s.tokens,
                       tables=frozenset({"summary", "main"}))


def test_every_emitted_metric_is_declared_and_typed():
    stats = SplitStats(sentences=4, tokens=40, words=30, truncated=1, kl_sum=2.0, rec_sum=100.0, nll_sum=90.0,
                       mi=0.5, mi_pool=4, au=3)
    values = emitted(stats)
    assert set(values) == {n for n, m in METRICS.all().items() if m.emit is not None} | \
        {n + "_se" for n, m in METRICS.all().items() if m.se is not None}
    assert math.isnan(values["nll_se"]) and math.isnan(values["mi_se"])  # no per-sentence values, no bootstrap
    assert values["nelbo"] == pytest.approx(25.5) and values["nll"] == pytest.approx(22.5)
    assert values["ppl"] == pytest.approx(math.exp(90.0 / 40)) and values["ppl_word"] == pytest.approx(math.exp(3))
    schema = row_schema({f"valid.{k}": v for k, v in values.items()})
    assert all(str(schema.field(f"valid.{k}").type) == "double" for k in values)
    with pytest.raises(ValueError, match="'valid.undeclared' is neither"):
        row_schema({"valid.undeclared": 1.0})


def test_a_newly_declared_metric_reaches_the_row_the_summary_and_the_report(tmp_path):
    with METRICS.temporarily("nll_per_token", NLL_PER_TOKEN):
        outcome = execute(build_config(tiny_overrides(**{"eval.probe": False})), tmp_path, progress=False)
        row = outcome.row
        assert outcome.ok
        # independent: NLL per sentence × sentences / tokens
        expected = row["valid.nll"] * row["valid.n_sentences"] / row["valid.n_tokens"]
        assert row["valid.nll_per_token"] == pytest.approx(expected, rel=1e-9)
        assert "nll_per_token" in format_metrics(row)
        out = tmp_path / "report"
        build_report([tmp_path], out)
        main = json.loads(next(out.rglob("*-main-*.json")).read_text())
        assert "NLL/token" in main["columns"]
    assert "nll_per_token" not in METRICS


def test_best_means_one_thing_in_the_ledger_and_the_report():
    """Issue 13's defect: the ledger ranked trials by valid −ELBO, the report chose settings by valid NLL."""
    assert tables.DEFAULT_SELECT == SELECT == ("valid.nll", "valid.nelbo")
    row = {"valid.nll": 80.0, "valid.nelbo": 90.0}
    assert selection_value(row) == 80.0 and selection_value({"valid.nelbo": 90.0}) == 90.0
    assert selection_value({}) == float("inf")


def test_the_ledger_ranks_a_sweep_by_the_declared_selection(tmp_path):
    from ablate.results.rows import ok_and_failed
    from ablate.sweep.ledger import Ledger
    from ablate.sweep.runner import run_sweep
    from malformed_inputs import STUDY

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0
    ok, _ = ok_and_failed(tmp_path / "results" / "bad" / "rows")
    trial = next(t for t in Ledger.open_existing("bad", tmp_path / "results" / "bad").trials())
    assert trial.value == pytest.approx(ok["valid.nll"].iloc[0]) and trial.value != ok["valid.nelbo"].iloc[0]


def test_table_membership_is_declared():
    assert in_table("main") == ["ppl", "ppl_word", "nelbo", "nll", "rec", "kl", "mi", "mi_paired", "au"]
    assert in_table("delta") == ["nll", "kl", "mi", "mi_paired", "au"]
    assert in_table("best") == ["ppl", "nll", "kl", "mi", "mi_paired", "au"]
    assert in_table("sensitivity") == ["nll", "rec", "kl", "mi", "au"]


def test_a_value_that_rounds_to_zero_prints_without_a_sign():
    """Issue 26 (10): tables printed "-0.00"."""
    kl = METRICS.get("kl")  # .3f
    assert kl.fmt(-0.0004) == "0.000" and kl.fmt(-0.0006) == "-0.001" and kl.fmt(-1e-12) == "0.000"
    assert METRICS.get("ppl").fmt(-0.001) == "0.00" and kl.fmt(float("nan")) == "–"
