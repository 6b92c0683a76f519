"""The one metric schema of the report: name, label, direction, format, unit, definition.

Every table, tooltip, plot axis and "best" marker of `ablate report` reads these entries, so a metric is
described once. `name` is the column suffix of a result row (`{split}.{name}`, see ablate.results); probe
accuracies (`probe.<factor>`) get an entry per factor found in the results (`metric(name)`).

Directions: "min" (lower is better), "max" (higher is better) or None where neither is better — KL is the
rate, and both too little (collapse) and too much (an autoencoder) are failures, so it gets no "best".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

Direction = Optional[Literal["min", "max"]]


@dataclass(frozen=True)
class Metric:
    name: str              # column suffix: valid.<name>, test.<name>
    label: str             # table header
    direction: Direction   # "min" | "max" | None (no best)
    format: str            # format spec of the value (and of its std over seeds)
    unit: str
    definition: str        # tooltip text

    def fmt(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return format(value, self.format)

    def better(self, a: float, b: float) -> bool:
        """Whether a is strictly better than b under this metric's direction."""
        if self.direction == "min":
            return a < b
        if self.direction == "max":
            return a > b
        return False


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("ppl", "PPL", "min", ".2f", "per token",
           "Perplexity exp(Σ NLL / Σ T) with the importance-weighted NLL (K samples) and T the tokens of the "
           "model's own unit (words or subwords, + </s>, not <s>: see eval.token_unit). Compares only between "
           "models with the same tokenizer."),
    Metric("ppl_word", "PPL/word", "min", ".2f", "per word",
           "Perplexity per word: the same IW NLL divided by words + </s>. Comparable between word- and "
           "subword-level models, since a sentence's NLL does not depend on the tokenizer."),
    Metric("nll", "NLL", "min", ".2f", "nats/sentence",
           "Importance-weighted negative log-likelihood −log p̂(x) (Burda et al. 2016), K samples from q(z|x), "
           "mean over sentences. A tighter bound than −ELBO."),
    Metric("nelbo", "−ELBO", "min", ".2f", "nats/sentence",
           "Negative ELBO = Rec + KL (a positive number), one sample z ~ q(z|x), mean over sentences."),
    Metric("rec", "Rec", "min", ".2f", "nats/sentence",
           "Reconstruction −log p(x|z), z ~ q(z|x) (one reparameterised sample), summed over the sentence's "
           "tokens, mean over sentences (distortion)."),
    Metric("kl", "KL", None, ".3f", "nats/sentence",
           "KL(q(z|x) ‖ N(0, I)), the plain (never thresholded) KL, mean over sentences: the rate. "
           "No best: near 0 is posterior collapse, very large is an autoencoder."),
    Metric("mi", "MI", "max", ".3f", "nats",
           "Mutual information I_q(x; z) (He et al. 2019 estimator, aggregate posterior over a pool of M "
           "sentences). Bounded above by log M: compare only at equal M. Small negatives are estimator noise."),
    Metric("au", "AU", "max", ".1f", "dimensions",
           "Active units: dimensions j with Var_x(E_q[z_j]) ≥ δ (Burda et al. 2016), unbiased variance over the "
           "evaluation set. AU = 0 means no dimension carries information."),
]}

# The columns of the main table, in order (probe accuracies are appended when present).
MAIN_METRICS = ["ppl", "ppl_word", "nelbo", "nll", "rec", "kl", "mi", "au"]

# Collapse flag (a row of a table): AU = 0 or KL below this many nats per sentence.
COLLAPSE_KL = 0.1

PROBE_PREFIX = "probe."


def probe_metric(factor: str) -> Metric:
    return Metric(f"{PROBE_PREFIX}{factor}", f"probe {factor}", "max", ".3f", "accuracy",
                  f"Accuracy of a linear probe predicting the ground-truth factor '{factor}' of the synthetic corpus "
                  f"from one posterior sample z ~ q(z|x) per sentence, i.e. what the decoder can read (fit on train, "
                  f"scored on this split). Compare with the majority-class baseline "
                  f"(probe_majority.{factor}).")


def metric(name: str) -> Metric:
    """The schema entry of a metric name (column suffix), probes included."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith(PROBE_PREFIX):
        return probe_metric(name[len(PROBE_PREFIX):])
    raise KeyError(f"unknown metric '{name}' (known: {', '.join(METRICS)}, probe.<factor>)")


def metrics_in(columns, split: str = "test") -> list[Metric]:
    """The schema entries whose `{split}.{name}` column is present: main metrics in order, then probes sorted."""
    cols = set(columns)
    found = [METRICS[n] for n in MAIN_METRICS if f"{split}.{n}" in cols]
    probes = sorted(c[len(split) + 1:] for c in cols if c.startswith(f"{split}.{PROBE_PREFIX}"))
    return found + [metric(p) for p in probes]

