"""aggressive (He et al. 2019): the inner-loop stopping rule on scripted losses, the order of updates, the MI-based
switch-off, checkpointed state, and a run that counts its inner steps apart from the budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.techniques import aggressive as aggressive_module
from ablate.techniques.aggressive import Aggressive, LossWindow
from ablate.techniques.base import Step, StepControl, TrainContext
from ablate.data.tokenize import SpecialIds
from ablate.core.technique_registry import resolve_techniques
from conftest import tiny_overrides

STEP = Step(global_step=0, phase_step=0, epoch=0, phase="vae")


def make(**fields) -> Aggressive:
    resolved = resolve_techniques({"aggressive": fields})["aggressive"]
    return Aggressive(Aggressive.Config.model_validate(resolved),
                      TrainContext(nz=2, steps_per_epoch=10, special_ids=SpecialIds(pad=0, bos=1, eos=2, unk=3)))


def steps_until_stop(losses_per_token: list[float], check_every: int, tokens: int = 10) -> int:
    window = LossWindow(check_every)
    for i, loss in enumerate(losses_per_token):
        if window.add(loss * tokens, tokens):
            return i + 1
    return len(losses_per_token)


def test_window_rule_on_scripted_losses():
    # windows of 3: means 5, 4, 3 (falling), then 3.5 (rose): stop after the 12th step
    losses = [6, 5, 4, 5, 4, 3, 4, 3, 2, 3, 4, 3.5, 1, 1, 1]
    assert steps_until_stop(losses, check_every=3) == 12
    # a flat window (equal means) is not an increase: the rule continues ("pre − cur < 0" stops)
    assert steps_until_stop([2, 2, 2, 2, 2, 2, 2], check_every=3) == 7
    # the first window compares with 1e4
    assert steps_until_stop([2e4] * 5, check_every=2) == 2


@dataclass
class FakeBatch:
    size: int
    dec_mask: torch.Tensor
    name: str


@dataclass
class FakeObjective:
    loss: torch.Tensor


@dataclass
class FakeEvaluated:
    objective: FakeObjective
    parts: object = None


def scripted_control(losses: list[float]):
    """A StepControl whose losses come from a script; it records the updates made."""
    log: list[tuple[str, str]] = []
    drawn = iter(range(1000))
    script = iter(losses)

    def evaluate(batch):
        return FakeEvaluated(FakeObjective(torch.tensor(float(next(script)))))

    def update(evaluated, params):
        log.append((params, float(evaluated.objective.loss)))

    control = StepControl(evaluate=evaluate, update=update,
                          random_batch=lambda: FakeBatch(2, torch.ones(2, 5, dtype=torch.bool), f"r{next(drawn)}"),
                          count_inner=lambda b: log.append(("inner", b.name)))
    return control, log


def test_take_step_runs_encoder_steps_then_one_decoder_step():
    technique = make(max_inner=10, check_every=2)
    # per-sentence losses; 2 sentences of 5 tokens: windows of 2 → per token 0.9, 0.7, 0.8 (rose): stop after 6;
    # the 7th value is the outer (decoder) step's
    control, log = scripted_control([5, 4, 4, 3, 4, 4, 99, 1, 1, 1])
    outer = FakeBatch(2, torch.ones(2, 5, dtype=torch.bool), "outer")
    technique.take_step(outer, control, STEP)
    updates = [entry for entry in log if entry[0] != "inner"]
    assert updates == [("encoder", v) for v in (5, 4, 4, 3, 4, 4)] + [("decoder", 99)]
    inner_batches = [entry[1] for entry in log if entry[0] == "inner"]
    assert inner_batches == ["outer", "r0", "r1", "r2", "r3", "r4"]  # the current batch first, then fresh ones


def test_max_inner_caps_the_loop_and_pretraining_phase_is_left_alone():
    technique = make(max_inner=4, check_every=100)
    control, log = scripted_control([1.0] * 10)
    technique.take_step(FakeBatch(2, torch.ones(2, 3, dtype=torch.bool), "outer"), control, STEP)
    assert [e[0] for e in log if e[0] != "inner"] == ["encoder"] * 4 + ["decoder"]
    pretrain = Step(global_step=0, phase_step=0, epoch=0, phase="pretrain")
    assert technique.take_step(FakeBatch(2, torch.ones(2, 3, dtype=torch.bool), "outer"), control, pretrain) is None


class ConstantEncoder(torch.nn.Module):
    """A model whose posterior is N(0, I) for every sentence (the MI itself is scripted in these tests)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode(self, batch):
        return torch.zeros(batch.size, 2), torch.zeros(batch.size, 2)


def valid_batch() -> FakeBatch:
    batch = FakeBatch(3, torch.ones(3, 2, dtype=torch.bool), "v")
    batch.to = lambda device: batch
    return batch


def test_switches_off_for_good_when_validation_mi_falls(monkeypatch):
    technique = make()
    script = iter([0.5, 0.8, 0.7, 0.9])
    monkeypatch.setattr(aggressive_module, "mutual_information", lambda mu, logvar, generator=None: (next(script), 2))
    states = []
    for _ in range(4):
        technique.end_epoch(ConstantEncoder(), [valid_batch()])
        states.append(technique.active)
    assert states == [True, True, False, False]
    assert technique.mi_history == pytest.approx([0.5, 0.8, 0.7])  # no MI is computed once off
    restored = make()
    restored.load_state_dict(technique.state_dict())
    assert restored.active is False and restored.mi_history == pytest.approx(technique.mi_history)


def test_first_epoch_compares_with_zero(monkeypatch):
    technique = make()
    monkeypatch.setattr(aggressive_module, "mutual_information", lambda mu, logvar, generator=None: (-0.01, 2))
    technique.end_epoch(ConstantEncoder(), [valid_batch()])
    assert technique.active is False


def test_a_run_counts_inner_steps_apart_and_leaves_the_budget_alone(tmp_path, one_torch_thread):
    from ablate.engine.run import execute

    config = build_config(tiny_overrides(**{"techniques": {"aggressive": {"max_inner": 5, "check_every": 2},
                                                           "kl_annealing": {"schedule": "linear",
                                                                            "warmup_steps": 10}},
                                            "train.max_steps": 6, "model.init_uniform": 0.1}), "<test>")
    outcome = execute(config, tmp_path, progress=False, save_model=False)
    assert outcome.ok, outcome.row.get("error_message")
    assert outcome.row["train_steps"] == 6
    assert 6 <= outcome.row["train_inner_steps"] <= 30
    betas = [c["beta"] for c in outcome.curves if c["split"] == "train"]
    assert betas == pytest.approx([min(1.0, t / 10) for t in range(6)], abs=0.11)  # outer steps only


def test_only_one_technique_takes_over_the_step():
    assert resolve_techniques({"aggressive": {}, "free_bits": {"target_total": 2}})  # composes with others
