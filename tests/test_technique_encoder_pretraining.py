"""encoder_pretraining: when the phase switches (epochs, steps, patience), β = 0 in phase 1 whatever kl_annealing
says, the decoder frozen in phase 1, a reset that re-initialises the decoder only, and a run resumed from its
checkpoints that ends exactly where the uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.engine.run import build, prepare
from ablate.techniques.base import PhaseProgress, Step, Technique, TrainContext, kl_weight
from ablate.data.tokenize import SpecialIds
from ablate.techniques.encoder_pretraining import EncoderPretraining, patience_exhausted
from ablate.techniques.base import build_techniques
from ablate.core.technique_registry import resolve_techniques
from ablate.engine.train import train

SPECIAL = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)
CONTEXT = TrainContext(nz=2, steps_per_epoch=4, special_ids=SPECIAL)
N_TRAIN, BATCH = 64, 16  # 4 steps per epoch


def technique(**fields) -> EncoderPretraining:
    resolved = resolve_techniques({"encoder_pretraining": fields})["encoder_pretraining"]
    return EncoderPretraining(EncoderPretraining.Config.model_validate(resolved), CONTEXT)


def tiny(techniques: dict, epochs: int = 2, **train_fields):
    config = build_config({
        "data": {"synthetic": {"n_train": N_TRAIN, "n_valid": 16, "n_test": 8}},
        "model": {"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 8, "nz": 2},
        "techniques": techniques,
        "train": {"batch_size": BATCH, "epochs": epochs, **train_fields},
        "eval": {"batch_size": 16},
    })
    prepared = _prepared(config)
    model = build(config, prepared)
    context = TrainContext(nz=2, steps_per_epoch=N_TRAIN // BATCH, special_ids=prepared.tokenizer.special_ids)
    return config, prepared, model, build_techniques(config.techniques, context)


_PREPARED: dict[str, object] = {}


def _prepared(config):
    """The tiny corpus is the same for every test here: prepare it once."""
    key = config.data.model_dump_json() + config.model.model_dump_json()
    if key not in _PREPARED:
        _PREPARED[key] = prepare(config)
    return _PREPARED[key]


def run(config, prepared, model, techniques, checkpoint: Path | None = None):
    return train(model, techniques, prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
                 config.train, torch.device("cpu"), config.seed, eval_batch_size=16, checkpoint=checkpoint,
                 progress=False)


# ---------------------------------------------------------------- the rule that ends phase 1


def test_ends_after_epochs():
    t = technique(epochs=2)
    assert not t.pretraining_finished(PhaseProgress(epochs=1, steps=999))
    assert t.pretraining_finished(PhaseProgress(epochs=2, steps=8))


def test_ends_after_steps():
    t = technique(steps=5)
    assert not t.pretraining_finished(PhaseProgress(epochs=0, steps=4))
    assert t.pretraining_finished(PhaseProgress(epochs=0, steps=5))


def test_ends_when_validation_rec_stops_improving():
    t = technique(epochs=100, patience=2)
    assert not t.pretraining_finished(PhaseProgress(3, 30, [5.0, 4.0, 4.5]))
    assert t.pretraining_finished(PhaseProgress(4, 40, [5.0, 4.0, 4.5, 4.2]))
    assert not t.pretraining_finished(PhaseProgress(4, 40, [5.0, 4.0, 4.5, 3.9]))
    assert patience_exhausted([5.0, 4.0, 3.95, 3.92], patience=2, min_delta=0.1)
    assert not patience_exhausted([5.0, 4.0, 3.95, 3.92], patience=2)
    assert not patience_exhausted([], patience=1)


def test_needs_an_end():
    with pytest.raises(ValueError, match="techniques.encoder_pretraining: pretraining needs an end"):
        resolve_techniques({"encoder_pretraining": {"patience": 2}})
    with pytest.raises(ValueError, match="did you mean 'freeze_decoder'"):
        resolve_techniques({"encoder_pretraining": {"epochs": 1, "freeze_decoders": True}})


def test_beta_is_zero_in_phase_one_whatever_annealing_says():
    annealing = build_techniques({"kl_annealing": resolve_techniques(
        {"kl_annealing": {"schedule": "constant", "beta": 0.7}})["kl_annealing"]}, CONTEXT)
    both = [technique(epochs=1)] + annealing
    assert kl_weight(both, 1.0, Step(50, 50, 3, "pretrain")) == 0.0
    assert kl_weight(both, 1.0, Step(50, 0, 3, "vae")) == pytest.approx(0.7)


# ---------------------------------------------------------------- in the training loop


def test_phase_switch_after_steps_then_annealing_restarts():
    config, prepared, model, techniques = tiny(
        {"encoder_pretraining": {"steps": 3},
         "kl_annealing": {"schedule": "linear", "start": 0.0, "warmup_steps": 4}}, epochs=2)
    result = run(config, prepared, model, techniques)
    train_rows = [r for r in result.curves if r["split"] == "train"]
    assert [r["phase"] for r in train_rows] == ["pretrain"] * 3 + ["vae"] * 8
    assert [r["beta"] for r in train_rows[:3]] == [0.0] * 3  # the autoencoder phase
    assert [r["beta"] for r in train_rows[3:]] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert [r["step"] for r in train_rows] == list(range(11))
    valid_rows = [r for r in result.curves if r["split"] == "valid"]
    assert [r["phase"] for r in valid_rows] == ["pretrain", "vae", "vae"]
    assert result.state.global_step == 11 and result.state.phase == "vae"


def test_phase_switch_after_epochs():
    config, prepared, model, techniques = tiny(
        {"encoder_pretraining": {"epochs": 2}, "kl_annealing": {"schedule": "constant", "beta": 0.5}}, epochs=1)
    result = run(config, prepared, model, techniques)
    phases = [(r["phase"], r["epoch"], r["beta"]) for r in result.curves if r["split"] == "train"]
    assert phases == [("pretrain", 0, 0.0)] * 4 + [("pretrain", 1, 0.0)] * 4 + [("vae", 2, 0.5)] * 4


def test_decoder_frozen_in_phase_one_then_trainable():
    config, prepared, model, techniques = tiny(
        {"encoder_pretraining": {"steps": 4, "freeze_decoder": True}}, epochs=0)
    decoder0 = [p.detach().clone() for p in model.decoder_parameters()]
    encoder0 = [p.detach().clone() for p in model.encoder_parameters()]
    result = run(config, prepared, model, techniques)
    assert result.state.global_step == 4 and result.state.phase == "vae"  # train.epochs 0: no VAE steps
    assert all(torch.equal(a, b) for a, b in zip(decoder0, model.decoder_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(encoder0, model.encoder_parameters()))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen when the VAE phase starts


def test_reset_reinitialises_the_decoder_only():
    config, prepared, model, _ = tiny({})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    technique(epochs=1, reset_decoder=True).start_phase("vae", model)
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.encoder_parameters())
    for name, p in model.decoder.named_parameters():
        bound = config.model.emb_init_uniform if name.startswith("embed") else config.model.init_uniform
        assert float(p.detach().abs().max()) <= bound and float(p.detach().std()) > 0, name
    # without reset_decoder nothing changes
    technique(epochs=1).start_phase("vae", model)
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.encoder_parameters())


class Interrupt(Technique):
    """Test-only: raises in corrupt() after `limit` training batches (a crash in the middle of an epoch)."""

    name = "interrupt"

    def __init__(self, limit: int | None) -> None:
        super().__init__(None, CONTEXT)  # type: ignore[arg-type]
        self.limit, self.calls = limit, 0

    def corrupt(self, batch, generator):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt("simulated crash")
        return batch


def test_resumed_run_continues_identically(tmp_path):
    """Crash in phase 1's successor epoch and again in the VAE phase; resume each time from the epoch-end
    checkpoint; the final parameters and the curves equal those of the uninterrupted run."""
    techniques_cfg = {"encoder_pretraining": {"epochs": 1, "reset_decoder": True},
                      "kl_annealing": {"schedule": "linear", "start": 0.0, "warmup_steps": 5},
                      "denoising": {"mode": "word_dropout", "p": 0.3}}
    config, prepared, model, techniques = tiny(techniques_cfg, epochs=2)
    straight = run(config, prepared, model, techniques + [Interrupt(None)])
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    checkpoint = tmp_path / "run.pt"
    for limit in (6, 6, None):  # crash at global step 6 (epoch 2), resume from step 4, crash at 10, resume from 8
        config, prepared, model, techniques = tiny(techniques_cfg, epochs=2)
        try:
            resumed = run(config, prepared, model, techniques + [Interrupt(limit)], checkpoint=checkpoint)
        except KeyboardInterrupt:
            assert limit is not None
            continue
        assert limit is None
    assert resumed.state.global_step == straight.state.global_step == 12
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    pd.testing.assert_frame_equal(pd.DataFrame(resumed.curves), pd.DataFrame(straight.curves))
