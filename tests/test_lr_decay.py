"""train.lr_decay: He et al. 2019's decay-on-plateau rule on a scripted validation sequence, and in a run."""

from __future__ import annotations

from ablate.config import TrainConfig, build_config
from ablate.train import TrainState, decay_on_plateau
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
    from ablate.run import execute

    # lr 1.0 with Adam diverges in quality at once: validation never improves after the first epoch
    config = build_config(tiny_overrides(**{"train.epochs": 40, "train.lr": 0.5,
                                            "train.lr_decay": {"patience": 1, "min_epochs": 0, "max_decays": 2}}),
                          "<test>")
    outcome = execute(config, tmp_path, progress=False, save_model=False)
    assert outcome.ok, outcome.row.get("error_message")
    assert outcome.row["train_steps"] < 40 * 10  # stopped by the rule, well before the 40 epochs
