"""When a difference is resolved: the paired t-test over seeds (the t distribution from the regularized incomplete beta
function, `betainc`, Numerical Recipes §6.4) and the combined standard error of a mean over seeds (seed spread and the
rows' measurement standard errors), within which a difference is "within noise"."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

SIGNIFICANCE = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction by the modified Lentz method,
    Press et al., Numerical Recipes, §6.4), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) for convergence."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x = {x} is outside [0, 1]")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny, eps = 1e-300, 3e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(log_front) * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of mean(x − y) = 0: mean, std (ddof 1) and n of the differences, t, df, p.
    With n < 2, t and p are NaN. With zero spread, p is 0 for a nonzero mean and 1 for a zero mean."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"mean": mean, "std": std, "n": n, "t": math.nan, "df": math.nan, "p": math.nan}
    if std == 0.0:
        t = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
        return {"mean": mean, "std": std, "n": n, "t": t, "df": n - 1, "p": 1.0 if mean == 0.0 else 0.0}
    t = mean / (std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "t": t, "df": n - 1, "p": t_two_sided_p(t, n - 1)}


def significance_marker(p: float) -> str:
    if p is None or math.isnan(p):
        return ""
    for threshold, marker in SIGNIFICANCE:
        if p < threshold:
            return marker
    return ""


NOISE_Z = 2.0  # a difference within NOISE_Z combined standard errors of 0 is "within noise" (≈ 95 %)


def _measurement_se(rows: pd.DataFrame, split: str, name: str) -> np.ndarray:
    """Each row's measurement standard error of {split}.{name} ({split}.{name}_se; NaN where not recorded)."""
    column = f"{split}.{name}_se"
    return rows[column].astype(float).to_numpy() if column in rows.columns else np.full(len(rows), math.nan)


def combined_se(values: Sequence[float] | pd.Series, measurement_se: np.ndarray) -> float:
    """The standard error of a mean over seeds with both sources of noise: the seed spread (std / √n, n ≥ 2) and
    the rows' measurement standard errors (√(mean se²) / √n). Added, so conservative: the seed spread already holds
    part of the measurement noise. NaN when neither is known."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return math.nan
    seed = float(values.std(ddof=1)) ** 2 / n if n > 1 else math.nan
    se = np.asarray(measurement_se, dtype=float)
    se = se[~np.isnan(se)]
    meas = float(np.mean(se ** 2)) / n if len(se) else math.nan
    parts = [p for p in (seed, meas) if not math.isnan(p)]
    return math.sqrt(sum(parts)) if parts else math.nan


def within_noise(difference: float, se: float) -> bool:
    """Whether a difference cannot be told from 0: |difference| < NOISE_Z · se (False when se is unknown)."""
    return not math.isnan(se) and not math.isnan(difference) and abs(difference) < NOISE_Z * se
