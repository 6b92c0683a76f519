"""train.lr_decay: He et al. 2019's decay-on-plateau rule on a scripted validation sequence, and in a run."""

from __future__ import annotations

from ablate.core.config import TrainConfig
from ablate.core.config_reading import build_config
from ablate.engine.train_state import TrainState, decay_on_plateau
from conftest import tiny_overrides


def test_rule_on_scripted_validation_losses():
    cfg = TrainConfig(lr_decay={"factor": 0.5, "patience": 2, "min_epochs": 4, "max_decays": 5})
    state = TrainState()
    losses = [10, 9, 9.5, 9.6, 9.7, 9.8, 8, 8.5, 8.6]
    decayed = []
    for epoch, loss in enumerate(losses, start=1):
        state.epochs_in_phase = epoch
        decayed.append(decay_on_plateau(state, cfg, loss))
    # epochs 3, 4 do not improve on 9: patience reached at epoch 4, but a decay needs more than 4 epochs;
    # epoch 5: a third non-improvement → decay, the reference becomes 9.7; epoch 6 (9.8 > 9.7) counts 1;
    # epoch 7 improves (8); epochs 8, 9 don't → decay at 9
    assert decayed == [False, False, False, False, True, False, False, False, True]
    assert state.decays == 2 and state.lr_scale == 0.25


def test_a_run_stops_after_max_decays(tmp_path, one_torch_thread):
    from ablate.engine.run import execute

    # lr 1.0 with Adam diverges in quality at once: validation never improves after the first epoch
    config = build_config(tiny_overrides(**{"train.epochs": 40, "train.lr": 0.5,
                                            "train.lr_decay": {"patience": 1, "min_epochs": 0, "max_decays": 2}}),
                          "<test>")
    outcome = execute(config, tmp_path, progress=False, save_model=False)
    assert outcome.ok, outcome.row.get("error_message")
    assert outcome.row["train_steps"] < 40 * 10  # stopped by the rule, well before the 40 epochs


def test_a_decaying_pretraining_phase_follows_the_rule_and_hands_on_its_best_state(tmp_path, one_torch_thread):
    """Li et al.'s text_beta.py: the autoencoder trains under He et al.'s rule on the validation rec, ends at its
    last decay, and the VAE starts from its best epoch (then a fresh rule for the VAE phase)."""
    import torch

    from ablate.engine.run import build, prepare
    from ablate.core.progress import RunProgress
    from ablate.techniques.base import TrainContext
    from ablate.techniques.base import build_techniques
    from ablate.engine.train import Trainer

    config = build_config(tiny_overrides(**{
        "train.epochs": 3, "train.lr": 0.5,
        "train.lr_decay": {"patience": 1, "min_epochs": 0, "max_decays": 2},
        "techniques": {"encoder_pretraining": {"epochs": 30, "lr_decay": True}}}), "<test>")
    prepared = prepare(config)
    model = build(config, prepared)
    context = TrainContext(nz=model.nz, special_ids=prepared.tokenizer.special_ids, seed=config.seed,
                           steps_per_epoch=config.train.steps_per_epoch(len(prepared.splits["train"])))
    trainer = Trainer(model, build_techniques(config.techniques, context), prepared.splits["train"],
                      prepared.splits["valid"], prepared.tokenizer.framing, config.train, torch.device("cpu"),
                      config.seed, 64)
    assert trainer.pretrain_decays
    progress = RunProgress(False, 0)
    recs, over = [], False
    while not over:
        trainer.train_epoch(progress)
        over = trainer.end_epoch(progress)
        recs.append(trainer.curves[-1]["rec"])
    state = trainer.state
    assert state.decays == 2 and state.phase == "pretrain" and len(recs) < 30  # ended by the rule
    # replay the rule on the recorded validation recs: the same decays at the same epochs
    replay = TrainState()
    for epoch, rec in enumerate(recs, start=1):
        replay.epochs_in_phase = epoch
        decay_on_plateau(replay, config.train, rec)
    assert replay.decays == 2 and replay.lr_scale == state.lr_scale == 0.25
    best = min(recs)
    assert state.best_pretrain_rec == best
    trainer.start_vae_phase()
    assert state.phase == "vae" and state.decays == 0 and state.lr_scale == 1.0
    for name, value in trainer.best_pretrain.items():  # the VAE phase starts from the best autoencoder
        assert torch.equal(model.state_dict()[name], value), name
