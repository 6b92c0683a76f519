"""A search arm's declaration: instead of a grid, an Optuna sampler explores a space, with the same number of trials
for every arm that searches (a fair tuning budget).

    search:
      sampler: tpe                # tpe | random
      trials: 30                  # per dataset × model × seed
      seed: 0                     # the sampler's seed (a study with a fixed seed gives the same trials)
      parallel: 1                 # trials asked before earlier ones are told (1: sequential, reproducible)
      objective: valid.nll        # or a list, e.g. [valid.nelbo, valid.mi]: the Pareto front is kept
      space:
        techniques.free_bits.lambda_per_dim: {low: 0.05, high: 2, log: true}
        train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
        model.nz: {choices: [16, 32]}
        train.batch_size: {low: 16, high: 64, step: 16, int: true}

Each trial is a cell (its config: the arm's, with the trial's values set) in the same ledger as the grid cells:
resumable, killable, run exactly once. Objectives are validation metrics; their direction comes from the metric
declarations (ablate.metrics.schema), so `valid.mi` is maximised and `valid.nelbo` minimised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLERS = ("tpe", "random")
SEARCH_KEYS = ["sampler", "trials", "seed", "parallel", "objective", "space"]
RANGE_KEYS = ["low", "high", "log", "step", "int"]
MAX_TRIALS = 10_000


class SearchError(ValueError):
    """A bad search declaration: (key path inside `search`, message)."""

    def __init__(self, path: tuple[Any, ...], message: str):
        super().__init__(message)
        self.path = path


@dataclass
class SearchSpec:
    """One search: an arm on one dataset × model × seed, with its budget, sampler, space and objectives."""

    arm: str
    dataset: str
    model: str
    seed: int
    sampler: str
    trials: int
    sampler_seed: int
    parallel: int
    objectives: list[str]
    space: dict[str, dict[str, Any]]
    base: dict[str, Any] = field(default_factory=dict)  # the arm's raw run config (seed set), before the trial's values
    where: list[list[Any]] = field(default_factory=list)  # the study's select constraint: [[column, op, value], ...]

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.dataset}/{self.model}/seed{self.seed}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpec":
        return cls(**json.loads(text))

    def directions(self) -> list[str]:
        from ablate.metrics.schema import metric

        return ["maximize" if metric(o.split(".", 1)[1]).direction == "max" else "minimize" for o in self.objectives]

    def raw_at(self, params: dict[str, Any]) -> dict[str, Any]:
        """The arm's raw run config with a trial's values set at their dotted keys."""
        import copy

        from ablate.core.config_reading import set_path

        data = copy.deepcopy(self.base)
        for key, value in params.items():
            set_path(data, [p for p in key.split(".") if p], value)
        return data

    def corners(self) -> list[dict[str, Any]]:
        """The space's lowest and highest points (every key at low or the first choice; at high or the last)."""
        low = {k: (p["choices"][0] if "choices" in p else p["low"]) for k, p in self.space.items()}
        high = {k: (p["choices"][-1] if "choices" in p else p["high"]) for k, p in self.space.items()}
        return [low, high]


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions of a validated space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, p in space.items():
        if "choices" in p:
            out[key] = CategoricalDistribution(p["choices"])
        elif p.get("int"):
            out[key] = IntDistribution(int(p["low"]), int(p["high"]), log=bool(p.get("log")),
                                       step=int(p.get("step", 1)))
        else:
            out[key] = FloatDistribution(float(p["low"]), float(p["high"]), log=bool(p.get("log")), step=p.get("step"))
    return out


def parse_search(raw: Any) -> dict[str, Any]:
    """The checked `search` mapping of an arm (defaults filled) or SearchError naming the key."""
    from ablate.metrics.schema import METRICS

    if not isinstance(raw, dict):
        raise SearchError((), "search must be a mapping {sampler, trials, seed, space, objective}")
    unknown = [k for k in raw if k not in SEARCH_KEYS]
    if unknown:
        from ablate.core.registry import did_you_mean

        hint = did_you_mean(str(unknown[0]), SEARCH_KEYS) or "; allowed: " + ", ".join(SEARCH_KEYS)
        raise SearchError((unknown[0],), f"unknown key{hint}")
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SearchError(("sampler",), f"sampler is one of {', '.join(SAMPLERS)} (got {sampler!r})")
    trials, seed, parallel = raw.get("trials"), raw.get("seed", 0), raw.get("parallel", 1)
    for name, value, low in (("trials", trials, 1), ("seed", seed, 0), ("parallel", parallel, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_TRIALS * 100:
            raise SearchError((name,), f"{name} must be a whole number ≥ {low}" + (" (the trial budget per "
                              "dataset × model × seed, e.g. 30)" if name == "trials" else "") + f" (got {value!r})")
    if trials > MAX_TRIALS:
        raise SearchError(("trials",), f"trials must be at most {MAX_TRIALS:,} (got {trials})")
    objective = raw.get("objective", "valid.nll")
    objectives = [objective] if isinstance(objective, str) else objective
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        raise SearchError(("objective",), "objective is a validation metric (valid.nll) or a list of them")
    for o in objectives:
        split, _, name = o.partition(".")
        if split != "valid":
            raise SearchError(("objective",), f"{o}: a search optimises a validation metric (valid.<metric>); the "
                              "test split is only reported")
        if name not in METRICS or METRICS.get(name).direction not in ("min", "max"):
            from ablate.core.registry import did_you_mean

            raise SearchError(("objective",),
                              f"{o}: not a metric with a direction{did_you_mean(name, METRICS.names())}")
    if len(set(objectives)) != len(objectives):
        raise SearchError(("objective",), "an objective is listed twice")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise SearchError(("space",), "space must map config keys to ranges, e.g. "
                          "{techniques.free_bits.lambda_per_dim: {low: 0.05, high: 2, log: true}}")
    return {"sampler": sampler, "trials": trials, "sampler_seed": seed, "parallel": parallel,
            "objectives": objectives, "space": {str(k): _parse_range(str(k), v) for k, v in space.items()}}


def _parse_range(key: str, p: Any) -> dict[str, Any]:
    at = ("space", key)
    if not isinstance(p, dict):
        raise SearchError(at, "a range is {low, high[, log, step, int]} or {choices: [...]}")
    if "choices" in p:
        if set(p) != {"choices"} or not isinstance(p["choices"], list) or not p["choices"]:
            raise SearchError(at, "choices is a non-empty list, alone: {choices: [16, 32]}")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in p["choices"]):
            raise SearchError(at, "choices are plain values (numbers, strings, true/false, null)")
        return {"choices": list(p["choices"])}
    unknown = [k for k in p if k not in RANGE_KEYS]
    if unknown:
        raise SearchError(at + (unknown[0],), f"unknown key; a range has {', '.join(RANGE_KEYS)}")
    low, high = p.get("low"), p.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise SearchError(at, f"a range needs numbers low < high (got low={low!r}, high={high!r})")
    if p.get("log") and low <= 0:
        raise SearchError(at, "a log range needs low > 0")
    if p.get("log") and p.get("step") is not None:
        raise SearchError(at, "a range is log or stepped, not both")
    if p.get("int") and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchError(at, "an int range needs whole low and high")
    for flag in ("log", "int"):
        if flag in p and not isinstance(p[flag], bool):
            raise SearchError(at + (flag,), f"{flag} is true or false (got {p[flag]!r})")
    step = p.get("step")
    if step is not None:
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not 0 < step <= high - low:
            raise SearchError(at + ("step",), f"step is a number > 0 and at most high − low = {high - low:g} "
                              f"(got {step!r})")
        if p.get("int") and not float(step).is_integer():
            raise SearchError(at + ("step",), f"an int range needs a whole step (got {step!r})")
    return {k: p[k] for k in RANGE_KEYS if k in p}
