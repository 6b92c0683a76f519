"""train.freeze (parameters held fixed, by module-path patterns) and train.grad_accum (one optimiser step over
several batches), against hand-worked cases and the full-batch step they must equal."""

from __future__ import annotations

import copy

import pytest
import torch

from ablate.cli.main import main
from ablate.core.config import ConfigError
from ablate.core.config_reading import build_config
from ablate.data.batching import make_batch
from ablate.models.freeze import freeze, matches, module_overview
from ablate.engine.run import build, execute, prepare
from ablate.engine.train import Trainer
from conftest import tiny_overrides


def test_a_pattern_names_the_modules_under_it():
    assert matches("lm.model.layers.0-23", "lm.model.layers.5.mlp.up_proj.weight")
    assert matches("lm.model.layers.0-23", "lm.model.layers.23.input_layernorm.weight")
    assert not matches("lm.model.layers.0-23", "lm.model.layers.24.input_layernorm.weight")
    assert not matches("lm.model.layers.0-23", "lm.model.norm.weight")
    assert not matches("lm.mod", "lm.model.norm.weight")  # whole components only
    assert matches("*.lstm", "encoder.lstm.weight_ih_l0") and matches("*.lstm", "decoder.lstm.bias_hh_l0")
    assert matches("decoder.out.weight", "decoder.out.weight")
    assert not matches("decoder.out.weight.x", "decoder.out.weight")


def _tiny():
    config = build_config(tiny_overrides())
    return build(config, prepare(config))


def test_freeze_counts_each_value_once_and_lists_the_modules_when_nothing_matches():
    model = _tiny()
    by_name = dict(model.named_parameters())
    expected = sum(by_name[n].numel() for n in by_name if n.startswith(("decoder.lstm.", "encoder.embed.")))
    assert freeze(model, ["decoder.lstm", "encoder.embed", "decoder.lstm.weight_ih_l0"]) == expected
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n in by_name if n.startswith(("decoder.lstm.", "encoder.embed."))}
    assert module_overview(model) == sorted(["decoder.embed", "decoder.lstm", "decoder.out", "decoder.z_to_cell",
                                             "encoder.embed", "encoder.lstm", "encoder.to_posterior"])
    with pytest.raises(ConfigError, match=r"'decoder.lstmm' names no parameter.*did you mean 'decoder.lstm'\?.*"
                                          r"its modules: decoder.embed, decoder.lstm"):
        freeze(_tiny(), ["decoder.lstmm"])


def test_frozen_parameters_keep_their_values_and_the_row_records_them(tmp_path):
    patterns = ["decoder.lstm", "encoder.embed"]
    config = build_config(tiny_overrides(**{"train.freeze": patterns}))
    initial = build(config, prepare(config)).state_dict()  # the run builds the same model from the same seed
    outcome = execute(config, tmp_path, progress=False)
    assert outcome.row["status"] == "ok", outcome.row.get("error_message")
    trained = torch.load(outcome.model_path, weights_only=True)["model"]
    for name, value in initial.items():
        frozen = any(matches(p, name) for p in patterns)
        assert torch.equal(trained[name], value) == frozen, name
    total = sum(v.numel() for v in initial.values())
    held = sum(v.numel() for n, v in initial.items() if any(matches(p, n) for p in patterns))
    assert (outcome.row["params_total"], outcome.row["params_trainable"]) == (total, total - held)
    assert outcome.row["config.train.freeze"] == '["decoder.lstm", "encoder.embed"]'


def test_freeze_holds_through_a_phase_that_unfreezes_the_decoder(tmp_path):
    """encoder_pretraining with freeze_decoder unfreezes the whole decoder for the VAE phase; train.freeze stays."""
    config = build_config(tiny_overrides(**{"train.freeze": ["decoder.out"], "techniques": {
        "encoder_pretraining": {"epochs": 1, "freeze_decoder": True}}}))
    initial = build(config, prepare(config)).state_dict()
    outcome = execute(config, tmp_path, progress=False)
    trained = torch.load(outcome.model_path, weights_only=True)["model"]
    assert torch.equal(trained["decoder.out.weight"], initial["decoder.out.weight"])
    assert not torch.equal(trained["decoder.lstm.weight_hh_l0"], initial["decoder.lstm.weight_hh_l0"])


def test_bad_freeze_patterns_are_one_line_before_anything_is_written(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "out"), "--set", "train.freeze=[decoder..out]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.freeze" in err and "'' is not a name, * or a range a-b" in err and "\n" not in err
    assert main(["run", "--out", str(tmp_path / "out"), "--set", "train.freeze=[lm.layers.9-2]"]) == 2
    assert "the range 9-2 is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _one_step(model, cfg_overrides: dict, groups, monkeypatch) -> dict[str, torch.Tensor]:
    """Parameter change of one Trainer step over `groups` (z = μ: the step is deterministic)."""
    monkeypatch.setattr("ablate.engine.train.sample_posterior", lambda mu, logvar: mu)
    config = build_config(tiny_overrides(**cfg_overrides))
    prepared = prepare(config)
    trainer = Trainer(model, [], prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
                      config.train, torch.device("cpu"), 0, 32)
    before = copy.deepcopy(model.state_dict())
    trainer.step(groups, groups)
    return {n: model.state_dict()[n] - before[n] for n in before}


def test_an_accumulated_step_equals_the_step_on_the_whole_batch(monkeypatch):
    """grad_accum: batches of 5 and 3 sentences in one step = one step on the 8 together (the loss is a mean over
    sentences, so the batches weigh 5/8 and 3/8); SGD makes the update the gradient itself."""
    config = build_config(tiny_overrides())
    prepared = prepare(config)
    split, framing = prepared.splits["train"], prepared.tokenizer.framing
    lengths = [len(ids) for ids in split.tokens]
    common = max(set(lengths), key=lengths.count)  # one length: no padding difference between the batchings
    same = [i for i, n in enumerate(lengths) if n == common][:8]
    assert len(same) == 8
    model = build(config, prepared)
    model.decoder.drop_in.p = model.decoder.drop_out.p = 0.0
    sgd = {"train.optimizer": "sgd", "train.lr": 1.0, "train.grad_clip": None}
    whole = _one_step(copy.deepcopy(model), sgd, [make_batch(split, same, framing)], monkeypatch)
    parts = _one_step(copy.deepcopy(model), {**sgd, "train.grad_accum": 2},
                      [make_batch(split, same[:5], framing), make_batch(split, same[5:], framing)], monkeypatch)
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-6), name
    assert any(whole[name].abs().max() > 1e-4 for name in whole)


def test_grad_accum_counts_optimiser_steps(tmp_path):
    outcome = execute(build_config(tiny_overrides(**{"train.grad_accum": 3})), tmp_path, progress=False,
                      save_model=False)
    batches = -(-300 // 32)
    assert outcome.row["train_steps"] == -(-batches // 3)
    with pytest.raises(ConfigError, match=r"train.grad_accum: aggressive takes its own optimiser steps; use "
                                          r"grad_accum 1"):  # refused when the config is read, before any run
        build_config(tiny_overrides(**{"train.grad_accum": 2, "techniques": {"aggressive": {}}}))
