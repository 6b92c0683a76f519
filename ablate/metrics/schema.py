"""Every metric of a result row, declared once: name, how it is emitted, direction, format, unit, definition, and
which tables show it. Evaluation (ablate.engine.evaluate) emits exactly these, the row schema (ablate.results.rows) types them,
the CLI summary, the report's tables, plots and "best" markers, and the ledger's ranking all read this module —
as HELM's schema drives its tables. Adding a metric is one `declare(...)` here (and its test).

`name` is the column suffix of a result row (`{split}.{name}`). Probe accuracies (`probe.<factor>`, beside
`probe_majority.<factor>`) are emitted per ground-truth factor by the probe code; `metric(name)` describes them.

Directions: "min" (lower is better), "max" (higher is better) or None where neither is better — KL is the rate,
and both too little (collapse) and too much (an autoencoder) are failures, so it gets no "best".

Tables: "summary" (the lines `ablate run` prints), "main" (the report's main table, in declaration order), "best"
(the best-setting-per-technique table), "delta" (paired differences against the baseline arm), "sensitivity"
(the report's sensitivity plots), "verdict" (what z carries in the verdict table; its costs are the SELECT metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from torch import Tensor

from ablate.metrics.estimators import perplexity
from ablate.core.registry import Registry
from ablate.metrics.uncertainty import exp_ratio_se, mean_se

Direction = Optional[Literal["min", "max"]]
Table = Literal["summary", "main", "best", "delta", "sensitivity", "verdict"]


@dataclass(frozen=True)
class SplitStats:
    """What evaluation accumulates over one split; every declared metric is a function of it."""

    sentences: int
    tokens: int  # in the model's unit, </s> counted, <s> not
    words: int  # words + </s>
    truncated: int
    kl_sum: float  # Σ_i KL(q(z|x_i) ‖ p(z))
    rec_sum: float  # Σ_i −log p(x_i|z_i), one posterior sample
    nll_sum: float  # Σ_i IW estimate of −log p(x_i)
    mi: float
    mi_pool: int
    au: int
    mi_paired: float = math.nan  # the paired (low-variance) MI estimate; NaN where it was not computed
    per_sentence: dict[str, Tensor] = field(default_factory=dict)  # kl, rec, nll, tokens, words per sentence
    bootstrap_se: dict[str, float] = field(default_factory=dict)  # mi, mi_paired, au: SD over bootstrap resamples

    def per(self, key: str) -> Tensor | None:
        return self.per_sentence.get(key)


@dataclass(frozen=True)
class Metric:
    name: str              # column suffix: valid.<name>, test.<name>
    label: str             # table header
    direction: Direction   # "min" | "max" | None (no best)
    format: str            # format spec of the value (and of its std over seeds)
    unit: str
    definition: str        # tooltip text
    emit: Callable[[SplitStats], float] | None = None  # None: emitted elsewhere (probes)
    tables: frozenset[str] = frozenset()
    se: Callable[[SplitStats], float] | None = None  # its standard error ({split}.{name}_se; ablate.metrics.uncertainty)

    def fmt(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        text = format(value, self.format)
        # a value that rounds to zero prints without a sign ("-0.00" reads as a negative number)
        return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text

    def better(self, a: float, b: float) -> bool:
        """Whether a is strictly better than b under this metric's direction."""
        if self.direction == "min":
            return a < b
        if self.direction == "max":
            return a > b
        return False


METRICS: Registry[Metric] = Registry("metric", base=Metric)


def declare(metric: Metric) -> Metric:
    return METRICS.register(metric.name, metric)


def _tables(*names: Table) -> frozenset[str]:
    return frozenset(names)


def _mean_se(*keys: str) -> Callable[[SplitStats], float]:
    """SE of the mean over sentences of the sum of per-sentence values (NaN when they were not kept)."""
    def se(s: SplitStats) -> float:
        parts = [s.per(k) for k in keys]
        return mean_se(sum(parts)) if all(p is not None for p in parts) else math.nan
    return se


def _ppl_se(denominator: str) -> Callable[[SplitStats], float]:
    """SE of exp(Σ NLL / Σ denominator) by the delta method."""
    def se(s: SplitStats) -> float:
        nll, den = s.per("nll"), s.per(denominator)
        return exp_ratio_se(nll, den) if nll is not None and den is not None else math.nan
    return se


def _bootstrap_se(name: str) -> Callable[[SplitStats], float]:
    return lambda s: s.bootstrap_se.get(name, math.nan)


declare(Metric("ppl", "PPL", "min", ".2f", "per token",
               "Perplexity exp(Σ NLL / Σ T) with the importance-weighted NLL (K samples) and T the tokens of the "
               "model's own unit (words or subwords, + </s>, not <s>: see eval.token_unit). Compares only between "
               "models with the same tokenizer.",
               emit=lambda s: perplexity(s.nll_sum, s.tokens), tables=_tables("summary", "main", "best"),
               se=_ppl_se("tokens")))
declare(Metric("ppl_word", "PPL/word", "min", ".2f", "per word",
               "Perplexity per word: the same IW NLL divided by words + </s>. Comparable between word- and "
               "subword-level models, since a sentence's NLL does not depend on the tokenizer.",
               emit=lambda s: perplexity(s.nll_sum, s.words), tables=_tables("summary", "main"), se=_ppl_se("words")))
declare(Metric("nelbo", "−ELBO", "min", ".2f", "nats/sentence",
               "Negative ELBO = Rec + KL (a positive number), one sample z ~ q(z|x), mean over sentences.",
               emit=lambda s: (s.rec_sum + s.kl_sum) / s.sentences, tables=_tables("summary", "main"),
               se=_mean_se("rec", "kl")))
declare(Metric("nll", "NLL", "min", ".2f", "nats/sentence",
               "Importance-weighted negative log-likelihood −log p̂(x) (Burda et al. 2016), K samples from q(z|x), "
               "mean over sentences. A tighter bound than −ELBO.",
               emit=lambda s: s.nll_sum / s.sentences,
               tables=_tables("summary", "main", "best", "delta", "sensitivity"), se=_mean_se("nll")))
declare(Metric("rec", "Rec", "min", ".2f", "nats/sentence",
               "Reconstruction −log p(x|z), z ~ q(z|x) (one reparameterised sample), summed over the sentence's "
               "tokens, mean over sentences (distortion).",
               emit=lambda s: s.rec_sum / s.sentences, tables=_tables("summary", "main", "sensitivity"),
               se=_mean_se("rec")))
declare(Metric("kl", "KL", None, ".3f", "nats/sentence",
               "KL(q(z|x) ‖ N(0, I)), the plain (never thresholded) KL, mean over sentences: the rate. "
               "No best: near 0 is posterior collapse, very large is an autoencoder.",
               emit=lambda s: s.kl_sum / s.sentences,
               tables=_tables("summary", "main", "best", "delta", "sensitivity", "verdict"), se=_mean_se("kl")))
declare(Metric("mi", "MI", "max", ".3f", "nats",
               "Mutual information I_q(x; z) (He et al. 2019 estimator, aggregate posterior over a pool of M "
               "sentences). Bounded above by log M: compare only at equal M. Small negatives are estimator noise.",
               emit=lambda s: s.mi, tables=_tables("summary", "main", "best", "delta", "sensitivity", "verdict"),
               se=_bootstrap_se("mi")))
declare(Metric("mi_paired", "MI (paired)", "max", ".3f", "nats",
               "Mutual information I_q(x; z) with both terms at the same S draws per sentence (eval.mi_samples), "
               "same pool as MI: at collapse exactly 0, and far less noise than He et al.'s one-draw estimate "
               "(ablate.metrics.estimators.mutual_information_paired). Bounded above by log M.",
               emit=lambda s: s.mi_paired, tables=_tables("main", "best", "delta"), se=_bootstrap_se("mi_paired")))
declare(Metric("au", "AU", "max", ".1f", "dimensions",
               "Active units: dimensions j with Var_x(E_q[z_j]) ≥ δ (Burda et al. 2016), unbiased variance over the "
               "evaluation set. AU = 0 means no dimension carries information.",
               emit=lambda s: float(s.au), tables=_tables("summary", "main", "best", "delta", "sensitivity", "verdict"),
               se=_bootstrap_se("au")))
# the counts and the pool size behind the numbers above (in every row, in no table)
declare(Metric("mi_pool", "MI pool", None, ".0f", "sentences", "M: sentences per aggregate-posterior pool of MI.",
               emit=lambda s: float(s.mi_pool)))
declare(Metric("n_sentences", "sentences", None, ".0f", "sentences", "Sentences evaluated.",
               emit=lambda s: float(s.sentences)))
declare(Metric("n_tokens", "tokens", None, ".0f", "tokens", "Tokens of the model's unit, </s> counted.",
               emit=lambda s: float(s.tokens)))
declare(Metric("n_words", "words", None, ".0f", "words", "Words + </s>.", emit=lambda s: float(s.words)))
declare(Metric("n_truncated", "truncated", None, ".0f", "sentences",
               "Sentences cut to data.max_length tokens.", emit=lambda s: float(s.truncated)))

# How "best" is chosen everywhere (the report's setting per arm, the ledger's trial value): the first of these
# validation columns present. NLL first: the tighter bound; −ELBO when no IW NLL was computed.
SELECT: tuple[str, ...] = ("valid.nll", "valid.nelbo")

PROBE_PREFIX = "probe."
PROBE_MAJORITY_PREFIX = "probe_majority."


def in_table(table: Table) -> list[str]:
    """The names of the metrics a table shows, in declaration order."""
    return [name for name, m in METRICS.all().items() if table in m.tables]


SE_SUFFIX = "_se"  # {split}.{name}_se: the standard error of {split}.{name}


def emitted(stats: SplitStats) -> dict[str, float]:
    """Every declared metric with an emitter, and the standard error of each that declares one, computed from one
    split's statistics."""
    out = {name: m.emit(stats) for name, m in METRICS.all().items() if m.emit is not None}
    out.update({name + SE_SUFFIX: m.se(stats) for name, m in METRICS.all().items() if m.se is not None})
    return out


def probe_metric(factor: str) -> Metric:
    return Metric(f"{PROBE_PREFIX}{factor}", f"probe {factor}", "max", ".3f", "accuracy",
                  f"Accuracy of a linear probe predicting the ground-truth factor '{factor}' of the synthetic corpus "
                  f"from one posterior sample z ~ q(z|x) per sentence, i.e. what the decoder can read (fit on train, "
                  f"scored on this split). Compare with the majority-class baseline "
                  f"(probe_majority.{factor}).")


def metric(name: str) -> Metric:
    """The declaration of a metric name (column suffix), probes included."""
    if name in METRICS:
        return METRICS.get(name)
    if name.startswith(PROBE_PREFIX):
        return probe_metric(name[len(PROBE_PREFIX):])
    raise KeyError(f"unknown metric '{name}' (known: {', '.join(METRICS.names())}, probe.<factor>)")


def is_metric_column(column: str) -> bool:
    """Whether a row column is `{split}.{declared metric}` or a probe's (what the row schema types float64)."""
    split, _, name = column.partition(".")
    if split not in ("valid", "test") or not name:
        return False
    if name.endswith(SE_SUFFIX) and name[: -len(SE_SUFFIX)] in METRICS:
        return METRICS.get(name[: -len(SE_SUFFIX)]).se is not None
    return name in METRICS or name.startswith((PROBE_PREFIX, PROBE_MAJORITY_PREFIX))


def selection_value(row: dict[str, object]) -> float:
    """The value `SELECT` ranks a row by (the first finite one; inf when none): the ledger's trial value."""
    for column in SELECT:
        value = row.get(column)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return math.inf
