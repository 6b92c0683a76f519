"""kl_annealing: β_t at hand-chosen steps for every schedule and shape, the cyclical sawtooth, strict configs."""

from __future__ import annotations

import math

import pytest

from ablate.core.config import ConfigError
from ablate.core.config_reading import build_config
from ablate.techniques.base import Step, TrainContext
from ablate.data.tokenize import SpecialIds
from ablate.techniques.kl_annealing import KLAnnealing
from ablate.core.technique_registry import resolve_techniques

SPECIAL = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)


def make(steps_per_epoch: int = 10, **fields) -> KLAnnealing:
    resolved = resolve_techniques({"kl_annealing": fields})["kl_annealing"]
    context = TrainContext(nz=4, steps_per_epoch=steps_per_epoch, special_ids=SPECIAL)
    return KLAnnealing(KLAnnealing.Config.model_validate(resolved), context)


def betas(technique: KLAnnealing, steps) -> list[float]:
    return [technique.beta(t) for t in steps]


def test_constant():
    t = make(schedule="constant", beta=0.4)
    assert betas(t, [0, 1, 1000, 10**6]) == [0.4] * 4


def test_linear_from_start_to_one():
    t = make(schedule="linear", start=0.1, warmup_steps=10)
    assert betas(t, [0, 5, 10, 20]) == pytest.approx([0.1, 0.55, 1.0, 1.0])


def test_linear_default_is_ten_epochs_from_zero():
    t = make(steps_per_epoch=10, schedule="linear")  # He/Li: 0 → 1 over 10 epochs
    assert t.warmup_steps == 100
    assert betas(t, [0, 25, 50, 100, 150]) == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])


def test_linear_warmup_in_epochs():
    t = make(steps_per_epoch=4, schedule="linear", warmup_epochs=2.5)
    assert t.warmup_steps == 10
    assert t.beta(5) == pytest.approx(0.5)


def test_sigmoid_bowman_defaults():
    t = make(schedule="sigmoid")
    assert t.beta(2500) == pytest.approx(0.5)
    assert t.beta(0) == pytest.approx(1 / (1 + math.exp(6.25)))  # 0.00193
    assert t.beta(5000) == pytest.approx(1 / (1 + math.exp(-6.25)))  # 0.99807
    assert t.beta(10**7) == pytest.approx(1.0)


def test_sigmoid_custom():
    t = make(schedule="sigmoid", k=0.1, x0=10)
    assert t.beta(10) == pytest.approx(0.5)
    assert t.beta(20) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_cyclical_linear_fu_et_al():
    # T = 40, M = 4: period 10; R = 0.5: β rises over steps 0..5 of each cycle, then 1.
    t = make(schedule="cyclical", total_steps=40, n_cycles=4, ratio=0.5, shape="linear")
    assert betas(t, range(0, 11)) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 0])
    assert betas(t, [12, 25, 31, 39]) == pytest.approx([0.4, 1.0, 0.2, 1.0])
    assert betas(t, [40, 45, 1000]) == [1.0, 1.0, 1.0]  # after the M cycles β stays 1


def test_cyclical_non_integer_period():
    # T = 30, M = 4: T/M = 7.5, the cycle restarts every ⌈7.5⌉ = 8 steps, τ = (t mod 8) / 7.5.
    t = make(schedule="cyclical", total_steps=30, n_cycles=4, ratio=0.5)
    assert t.beta(2) == pytest.approx((2 / 7.5) / 0.5)
    assert t.beta(7) == 1.0
    assert t.beta(8) == 0.0
    assert t.beta(9) == pytest.approx((1 / 7.5) / 0.5)


def test_cyclical_cosine_shape():
    t = make(schedule="cyclical", total_steps=40, n_cycles=4, ratio=0.5, shape="cosine")
    assert t.beta(0) == pytest.approx(0.0)
    assert t.beta(1) == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.2))  # 0.0955
    assert t.beta(5) == pytest.approx(1.0)
    assert t.beta(7) == 1.0


def test_cyclical_sigmoid_shape():
    t = make(schedule="cyclical", total_steps=80, n_cycles=4, ratio=0.5, shape="sigmoid")  # period 20
    assert t.beta(0) == pytest.approx(1 / (1 + math.exp(6)))  # 0.00247
    assert t.beta(5) == pytest.approx(0.5)  # v = 0.5
    assert t.beta(10) == pytest.approx(1 / (1 + math.exp(-6)))  # v = 1 (Fu et al.'s sigmoid ends at 0.9975)
    assert t.beta(11) == 1.0


def test_cyclical_zero_optimus():
    # T = 40, M = 4, r0 = 0.5, ra = 0.25: per cycle of 10 steps β = 0 for 0..5, rises over 5..7.5, then 1.
    t = make(schedule="cyclical_zero", total_steps=40, n_cycles=4, ratio_zero=0.5, ratio_increase=0.25)
    assert betas(t, range(0, 11)) == pytest.approx([0, 0, 0, 0, 0, 0, 0.4, 0.8, 1, 1, 0])
    assert betas(t, [36, 40]) == pytest.approx([0.4, 1.0])


@pytest.mark.parametrize("shape", ["linear", "cosine", "sigmoid"])
def test_cyclical_sawtooth(shape):
    t = make(schedule="cyclical", total_steps=200, n_cycles=4, ratio=0.5, shape=shape)
    seq = betas(t, range(200))
    drops = [i for i in range(1, 200) if seq[i] < seq[i - 1] - 0.5]
    assert drops == [50, 100, 150]  # β falls back to ≈0 at the start of each cycle …
    for i in range(150):
        assert seq[i] == pytest.approx(seq[i + 50])  # … and every cycle is the same tooth
    rising = seq[:26]
    assert all(b2 >= b1 for b1, b2 in zip(rising, rising[1:]))  # monotone rise over the first R of a cycle
    assert seq[26:50] == [1.0] * 24
    assert min(seq) < 0.01


def test_cyclical_default_total_is_ten_epochs():
    t = make(steps_per_epoch=8, schedule="cyclical")
    assert t.total_steps == 80
    assert t.beta(20) == 0.0 and t.beta(10) == pytest.approx(1.0)


def test_cyclical_total_in_epochs():
    t = make(steps_per_epoch=8, schedule="cyclical_zero", total_epochs=5)
    assert t.total_steps == 40


def test_counts_steps_of_the_current_phase():
    t = make(schedule="linear", warmup_steps=10)
    assert t.kl_weight(Step(global_step=1000, phase_step=5, epoch=7, phase="vae")) == pytest.approx(0.5)


def test_resolved_config_fills_the_schedule_defaults_only():
    resolved = resolve_techniques({"kl_annealing": {"schedule": "cyclical"}})["kl_annealing"]
    assert resolved["n_cycles"] == 4 and resolved["ratio"] == 0.5 and resolved["shape"] == "linear"
    assert resolved["start"] is None and resolved["k"] is None and resolved["ratio_zero"] is None
    assert resolve_techniques({"kl_annealing": resolved})["kl_annealing"] == resolved  # idempotent
    linear = resolve_techniques({"kl_annealing": {}})["kl_annealing"]
    assert linear["schedule"] == "linear" and linear["start"] == 0.0


@pytest.mark.parametrize("fields, fragment", [
    ({"schedule": "linear", "beta": 0.5}, "'beta' does not apply to schedule linear"),
    ({"schedule": "constant", "start": 0.1, "beta": 0.5}, "'start' does not apply to schedule constant"),
    ({"schedule": "cyclical_zero", "shape": "cosine"}, "'shape' does not apply to schedule cyclical_zero"),
    ({"schedule": "sigmoid", "warmup_steps": 10}, "'warmup_steps' does not apply to schedule sigmoid"),
    ({"schedule": "constant"}, "schedule constant needs beta"),
    ({"schedule": "linear", "warmup_steps": 10, "warmup_epochs": 1}, "not both"),
    ({"schedule": "cyclical", "total_steps": 10, "total_epochs": 1}, "not both"),
    ({"schedule": "cyclical_zero", "ratio_zero": 0.8, "ratio_increase": 0.4}, "ratio_zero + ratio_increase"),
    ({"schedule": "cosine"}, "schedule"),
    ({"schedule": "linear", "start": 1.5}, "start"),
])
def test_strict_config_errors(fields, fragment):
    with pytest.raises(ValueError, match="techniques.kl_annealing") as info:
        resolve_techniques({"kl_annealing": fields})
    assert fragment in str(info.value)


def test_wrong_field_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        build_config({"techniques": {"kl_annealing": {"schedule": "linear", "beta": 0.5}}}, "x.yaml")
    message = str(info.value)
    assert message.startswith("x.yaml: ") and "\n" not in message and "beta" in message
