"""One progress line for a whole run (ablate.core.progress): its ETA against a hand-worked case on a fake clock, and
the line a real run draws (training and evaluation on one line, one ETA)."""

from __future__ import annotations

import pytest

from ablate.core.config_reading import build_config
from ablate.engine.run import execute
from ablate.core.progress import RunProgress, format_seconds
from ablate.engine.train import planned_steps
from ablate.engine.train_state import TrainState
from conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_is_training_rate_times_steps_left_plus_the_evaluation_estimate():
    clock = Clock()
    line = RunProgress(False, train_steps=10, eval_sentences=100, iw_samples=4, clock=clock)
    line.begin("epoch 1/2 [vae]")
    for _ in range(2):
        clock.now += 1.0  # 1 s per step
        line.step()
    assert line.remaining_seconds() is None  # the evaluation has no measured rate yet
    assert line.line().endswith("ETA 0m08s + evaluation")
    line.pause()
    clock.now += 3.0  # validation: not training time
    line.validated(seconds=2.0, sentences=10)  # 0.2 s/sentence for one pass → (K + 1) × 0.2 = 1.0 s per sentence
    assert line.remaining_seconds() == pytest.approx(8 * 1.0 + 100 * 1.0)
    line.begin("epoch 2/2 [vae]")
    for _ in range(8):
        clock.now += 0.5
        line.step()
    assert line.train_seconds == pytest.approx(2 + 4) and line.remaining_seconds() == pytest.approx(100.0)
    line.begin("eval valid")
    clock.now += 5.0
    line.evaluated(20)  # measured now: 0.25 s per sentence
    assert line.remaining_seconds() == pytest.approx(80 * 0.25)
    assert line.fraction_done() == pytest.approx((6 + 5) / (6 + 5 + 20))
    assert "step 10/10, eval 20/100 sent" in line.line() and "ETA 0m20s" in line.line()
    assert format_seconds(3725) == "1h02m" and format_seconds(59.6) == "1m00s"
    # the same durations as a sweep writes them and as the report does (one formatter, three styles)
    assert format_seconds(3725, precise=True) == "1h02m05s" and format_seconds(59.6, precise=True) == "1m00s"
    assert format_seconds(3725, words=True) == "1 h 02 min" and format_seconds(125, words=True) == "2 min 05 s"
    assert format_seconds(5, words=True) == "5 s" and format_seconds(float("nan")) == "–"


def test_planned_steps_count_the_pretraining_budget_and_the_vae_phase():
    config = build_config(tiny_overrides(**{"train.epochs": 3, "techniques": {"encoder_pretraining": {"epochs": 2}}}))
    from ablate.techniques.base import TrainContext
    from ablate.techniques.base import build_techniques

    techniques = build_techniques(config.techniques, TrainContext(nz=4, special_ids=None, seed=0, steps_per_epoch=7))
    assert planned_steps(config.train, techniques, 7, TrainState(phase="pretrain")) == 2 * 7 + 3 * 7
    resumed_in_vae = TrainState(phase="vae", global_step=20, phase_step=6)  # 14 pretraining steps were taken
    assert planned_steps(config.train, techniques, 7, resumed_in_vae) == 14 + 3 * 7
    capped = build_config(tiny_overrides(**{"train.max_steps": 5}))
    assert planned_steps(capped.train, [], 7, TrainState()) == 5


def test_a_run_draws_one_line_for_training_and_evaluation(tmp_path, capsys):
    outcome = execute(build_config(tiny_overrides(**{"train.epochs": 2, "eval.probe": False})), tmp_path,
                      progress=True, save_model=False)
    assert outcome.ok
    err = capsys.readouterr().err.replace("\r", "\n")
    frames = [f for f in err.splitlines() if "%|" in f]
    steps = outcome.row["train_steps"]
    assert any(f.startswith("epoch 2/2 [vae]") and "ETA" in f for f in frames)
    assert any(f.startswith("eval test") and f"step {steps}/{steps}, eval" in f for f in frames)
    assert "epoch 1 [vae] valid rec" in err  # each epoch's validation above the line


def test_quiet_and_verbose_set_what_a_command_says(tmp_path, capsys):
    """-q: no progress line and no notes (the metrics, the command's product, still print); -v: the details."""
    from ablate.cli.main import main
    from ablate.core.log import set_verbosity

    sets = ["--set", "data.synthetic.n_train=64", "--set", "data.synthetic.n_valid=16", "--set",
            "data.synthetic.n_test=16", "--set", "train.epochs=1", "--set", "eval.iw_samples=2",
            "--set", "eval.probe=false"]
    try:
        assert main(["run", "--out", str(tmp_path / "q"), "-q", *sets]) == 0
        quiet = capsys.readouterr()
        assert quiet.err == "" and "nelbo" in quiet.out
        assert main(["run", "--out", str(tmp_path / "v"), "-v", *sets]) == 0
        verbose = capsys.readouterr()
        assert "corpus synthetic: train 64, valid 16, test 16 sentences" in verbose.err
        assert "epoch 1 [vae] valid rec" in verbose.err and "ETA" in verbose.err
        assert main(["validate", str(tmp_path / "missing.yaml"), "-q"]) == 2
        assert capsys.readouterr().err.startswith("error: ")  # errors whatever the verbosity
    finally:
        set_verbosity(0)


def test_the_live_loss_shows_in_the_first_epoch_and_keeps_moving(one_torch_thread):
    """Issue 26 (2): the progress line's loss/KL/β was empty through epoch 1 and then frozen (the buffer emptied
    itself at 50 values, so the read at step 50 found nothing). Now: shown from the first step, updated every 50
    steps, in every epoch — and a run shorter than 50 steps shows it too."""
    import torch

    from ablate.core.config_reading import build_config
    from ablate.engine.run import build, prepare
    from ablate.core.progress import RunProgress
    from ablate.techniques.base import TrainContext
    from ablate.techniques.base import build_techniques
    from ablate.engine.train import train
    from conftest import tiny_overrides

    config = build_config(tiny_overrides(**{"data.synthetic.n_train": 3200, "train.batch_size": 16,
                                            "train.epochs": 2}), "<test>")
    prepared = prepare(config)
    model = build(config, prepared)
    context = TrainContext(nz=model.nz, special_ids=prepared.tokenizer.special_ids, seed=0,
                           steps_per_epoch=config.train.steps_per_epoch(len(prepared.splits["train"])))
    details: list[tuple[int, str]] = []

    class Recording(RunProgress):
        def step(self, detail: str = "") -> None:
            super().step(detail)
            details.append((self.steps_done, detail))

    train(model, build_techniques(config.techniques, context), prepared.splits["train"], prepared.splits["valid"],
          prepared.tokenizer.framing, config.train, torch.device("cpu"), 0, progress=Recording(False, 0))
    shown = [(step, d) for step, d in details if d]
    assert shown[0][0] == 1 and shown[0][1].startswith("loss ")  # from the first step
    steps_per_epoch = 200
    assert [s for s, _ in shown if s > 25] == list(range(50, 2 * steps_per_epoch + 1, 50))  # every 50, both epochs
    assert len({d for _, d in shown}) > 5  # the values move


def test_a_sweep_cell_s_notes_name_its_arm_and_seed(tmp_path, capsys):
    """Issue 26.6: in a sweep the epoch notes say which cell they are about."""
    execute(build_config(tiny_overrides(**{"train.epochs": 1, "seed": 3})), tmp_path,
            labels={"study": "s", "cell_id": "0123456789ab", "arm": "free_bits"}, progress=True)
    notes = [line for line in capsys.readouterr().err.splitlines() if "valid rec" in line]
    assert notes and all(line.startswith("free_bits seed 3: epoch 1 [vae] valid rec") for line in notes)


def test_the_evaluation_eta_counts_tokens_so_short_sentences_first_do_not_fool_it():
    """Issue 26.4: sentences go shortest first; at a rate per sentence the ETA kept growing. Three batches of 10
    sentences, 50, 150 and 300 tokens, at 0.01 s per token: after the first, the estimate is the true rest."""
    clock = Clock()
    line = RunProgress(False, train_steps=0, eval_sentences=30, eval_tokens=500, iw_samples=4, clock=clock)
    line.begin("eval test")
    clock.now += 0.5
    line.evaluated(10, 50)
    assert line.remaining_seconds() == pytest.approx(4.5)  # (150 + 300) tokens × 0.01 s
    per_sentence = RunProgress(False, train_steps=0, eval_sentences=30, iw_samples=4, clock=clock)
    per_sentence.begin("eval test")
    clock.now += 0.5
    per_sentence.evaluated(10)
    assert per_sentence.remaining_seconds() == pytest.approx(1.0)  # what the sentence count alone would say
