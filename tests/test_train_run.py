"""Training and the run spine: determinism, resume from a checkpoint, failures recorded, the result row."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from ablate.cli.main import main
from ablate.core.config_reading import build_config
from ablate.results.rows import load_curves, ok_and_failed
from ablate.engine.run import build, execute, prepare
from ablate.engine.train import train
from ablate.engine.train_state import TrainingDiverged
from conftest import tiny_overrides

METRICS = ["kl", "rec", "nelbo", "nll", "ppl", "ppl_word", "mi", "au"]


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    rows = [execute(build_config(tiny_overrides(seed=s)), tmp_path / f"r{i}", progress=False, save_model=False).row
            for i, s in enumerate([0, 0, 1])]
    first, again, other = ([r[f"test.{m}"] for m in METRICS] for r in rows)
    assert first == again
    assert first != other


def test_result_row_has_metrics_conventions_provenance_and_config(tmp_path):
    outcome = execute(build_config(tiny_overrides()), tmp_path, progress=False)
    row = pd.read_parquet(outcome.result_path).iloc[0]
    assert row["status"] == "ok"
    for split in ("valid", "test"):
        for metric in METRICS + ["n_sentences", "n_tokens", "n_words", "mi_pool"]:
            assert math.isfinite(row[f"{split}.{metric}"]), metric
        assert row[f"{split}.nelbo"] == pytest.approx(row[f"{split}.rec"] + row[f"{split}.kl"])
        assert row[f"{split}.n_sentences"] == 60 and row[f"{split}.mi_pool"] == 60
        assert 0 <= row[f"{split}.probe.topic"] <= 1
    # per-word PPL of a word model equals its per-token PPL (the same denominator: words + </s>)
    assert row["test.ppl"] == pytest.approx(row["test.ppl_word"])
    assert row["test.ppl"] == pytest.approx(math.exp(row["test.nll"] * 60 / row["test.n_tokens"]))
    assert row["eval.iw_samples"] == 5 and row["eval.token_unit"] == "word" and row["eval.au_delta"] == 0.01
    assert row["config.model.nz"] == 4 and row["config.data.name"] == "synthetic"
    assert row["version.torch"] == torch.__version__ and row["train_seconds"] > 0
    curves = pd.read_parquet(outcome.curves_path)
    assert set(curves["split"]) == {"train", "valid"}
    assert (curves[curves.split == "train"]["step"].diff().dropna() == 1).all()
    assert outcome.model_path.exists()


def test_divergence_is_recorded_as_a_failed_row(tmp_path):
    config = build_config(tiny_overrides(**{"train.divergence_threshold": 1e-3}))
    outcome = execute(config, tmp_path, progress=False)
    assert not outcome.ok and isinstance(outcome.error, TrainingDiverged)
    ok, failed = ok_and_failed(tmp_path)
    assert ok.empty and failed.iloc[0]["error_class"] == "TrainingDiverged"
    assert "loss" in failed.iloc[0]["error_message"]


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    config = build_config(tiny_overrides(**{"train.epochs": 2}))
    straight = execute(config, tmp_path / "a", progress=False, save_model=False).row

    # first attempt: stop after one epoch (its checkpoint is what a killed worker leaves behind)
    ckpt = tmp_path / "ckpt.pt"
    one_epoch = build_config(tiny_overrides(**{"train.epochs": 1}))
    prepared = prepare(one_epoch)
    model = build(one_epoch, prepared)
    train(model, [], prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
          one_epoch.train, torch.device("cpu"), one_epoch.seed, checkpoint=ckpt, progress=False)
    saved = torch.load(ckpt, weights_only=False)
    saved["state"]["finished"] = False
    torch.save(saved, ckpt)

    resumed = execute(config, tmp_path / "b", checkpoint=ckpt, progress=False, save_model=False).row
    assert [resumed[f"test.{m}"] for m in METRICS] == [straight[f"test.{m}"] for m in METRICS]


def test_plain_vae_collapses_while_beta_zero_keeps_the_kl(tmp_path):
    """The known signature of collapse: a plain VAE ends with KL ≈ 0, AU = 0 and MI ≈ 0 (within the estimator's
    noise); the same run with KL weight 0 (an autoencoder) has no pressure on the KL, which grows large.

    That the autoencoder then also uses z (AU = nz, MI up, rec down) takes the encoder several hundred steps to
    begin at the default sizes (He et al. init): shown by the default run's figures, not in this quick test."""
    common = {"data.synthetic": {"n_train": 1000, "n_valid": 100, "n_test": 100}, "train.epochs": 2,
              "train.threads": 1, "model": {"name": "lstm", "emb_dim": 32, "enc_hidden": 64, "dec_hidden": 64, "nz": 8}}
    vae = execute(build_config(tiny_overrides(**common)), tmp_path / "vae", progress=False, save_model=False).row
    ae_config = tiny_overrides(**common, **{"train.kl_weight": 0.0, "train.select_by": "rec"})
    ae = execute(build_config(ae_config), tmp_path / "ae", progress=False, save_model=False).row
    assert vae["test.kl"] < 0.5 and vae["test.au"] == 0 and abs(vae["test.mi"]) < 0.5
    assert ae["test.kl"] > 20


def test_cli_run_prints_table_and_writes_files(tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_overrides()))
    assert main(["run", str(path), "--set", "train.epochs=1", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "probe.topic" in out and "IW K=5" in out
    assert "ppl_word" not in out  # a word-level model: PPL per word is PPL itself (issue 26.10)
    ok, _ = ok_and_failed(tmp_path / "out")
    assert len(ok) == 1
    assert not load_curves(tmp_path / "out").empty


def test_run_resume_continues_an_interrupted_run(tmp_path, monkeypatch):
    """`ablate run CONFIG` is killed after its first epoch; `--resume` continues from the checkpoint and ends
    exactly where an uninterrupted run ends (same steps, same metrics)."""
    import yaml

    from ablate.cli.main import main
    from ablate.engine.train import Trainer

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(**{"train.epochs": 2, "train.threads": 1})))
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--quiet", "--name", "whole"]) == 0

    save = Trainer.save

    def save_then_die(self, checkpoint):
        save(self, checkpoint)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    assert main(["run", str(config), "--out", str(tmp_path / "cut"), "--quiet", "--name", "cut"]) == 130
    monkeypatch.setattr(Trainer, "save", save)
    assert list((tmp_path / "cut" / "checkpoints").glob("*.pt"))
    assert main(["run", str(config), "--out", str(tmp_path / "cut"), "--quiet", "--name", "cut", "--resume"]) == 0
    assert not list((tmp_path / "cut" / "checkpoints").glob("*.pt"))  # removed once the run is done
    whole = pd.read_parquet(tmp_path / "whole" / "rows" / "whole.parquet").iloc[0]
    resumed = pd.read_parquet(tmp_path / "cut" / "rows" / "cut.parquet").iloc[0]
    assert resumed["train_steps"] == whole["train_steps"] and resumed["best_epoch"] == whole["best_epoch"]
    for column in ("valid.nll", "valid.kl", "test.nelbo"):
        assert resumed[column] == pytest.approx(whole[column], rel=1e-6), column
    assert main(["run", str(config), "--out", str(tmp_path / "cut"), "--quiet", "--resume"]) == 2  # nothing left


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test (a shell starts a background job with SIGINT ignored, and Python
    keeps that: the interrupt would never arrive)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_mid_epoch_keeps_the_step_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch,
                                                                                          capsys, default_sigint,
                                                                                          signame):
    """SIGINT (Ctrl-C) or SIGTERM (a stopped worker) at the 3rd optimiser step of epoch 1: the step finishes, the
    state is saved, `ablate run` says in one line how to continue (exit 130, no traceback); `--resume` then ends
    with the uninterrupted run's metrics (issue 26.7). Afterwards both signals have their handlers back."""
    import os
    import signal

    term_before = signal.getsignal(signal.SIGTERM)

    import yaml

    from ablate.cli.main import main
    from ablate.engine.train import Trainer

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(**{"train.epochs": 2, "train.threads": 1})))
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--quiet", "--name", "whole"]) == 0
    whole = capsys.readouterr().out.splitlines()[0]

    step, calls = Trainer.step, []

    def step_then_ctrl_c(self, group, batches):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, signame))  # lands mid-step; the step still finishes
        return step(self, group, batches)

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    out = tmp_path / "cut"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--name", "cut"]) == 130
    said = capsys.readouterr().err.strip()
    assert said.startswith("warning: interrupted; its state is kept in") and len(said.splitlines()) == 1
    assert said.endswith(f"continue with: ablate run {config} --out {out} --name cut --resume")
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    state = torch.load(checkpoint, weights_only=False)["state"]
    assert (state["epoch"], state["epoch_step"], state["global_step"]) == (0, 3, 3)
    monkeypatch.setattr(Trainer, "step", step)
    assert main(["run", str(config), "--out", str(out), "--quiet", "--name", "cut", "--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == whole  # the same metrics line
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == term_before


@pytest.mark.parametrize("techniques", [{}, {"aggressive": {"max_inner": 5, "check_every": 3},
                                        "kl_annealing": {"schedule": "linear", "start": 0.1, "warmup_epochs": 2}}],
                         ids=["plain", "aggressive"])
def test_a_mid_epoch_checkpoint_lets_a_killed_run_end_where_an_uninterrupted_run_ends(tmp_path, monkeypatch,
                                                                                       capsys, techniques):
    """train.checkpoint_minutes: 0 saves between every two steps; the run dies right after the save at step 5 of
    epoch 1 (as a killed worker would, nothing more written), and `--resume` continues from that step to the
    uninterrupted run's metrics — He et al.'s aggressive inner loop too (its state is in the checkpoint)."""
    import yaml

    from ablate.cli.main import main
    from ablate.engine.train import Trainer

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(**{"train.epochs": 2, "train.threads": 1,
                                                       "train.checkpoint_minutes": 0, "techniques": techniques})))
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--quiet", "--name", "whole"]) == 0
    whole = capsys.readouterr().out.splitlines()[0]
    assert main(["run", str(config), "--out", str(tmp_path / "unsaved"), "--quiet", "--name", "unsaved", "--set",
                 "train.checkpoint_minutes=null"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == whole  # saving mid-epoch changes nothing

    save = Trainer.save

    def save_then_die(self, checkpoint):
        save(self, checkpoint)
        if self.state.epoch == 0 and self.state.epoch_step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_die)
    out = tmp_path / "cut"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--name", "cut"]) == 130
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    saved = torch.load(checkpoint, weights_only=False)
    assert (saved["state"]["epoch"], saved["state"]["epoch_step"]) == (0, 5)
    assert [c["step"] for c in saved["curves"] if c["split"] == "train"] == [0, 1, 2, 3, 4]  # its points kept
    assert saved["state"]["train_seconds"] > 0  # the five steps' time, though no epoch has ended
    monkeypatch.setattr(Trainer, "save", save)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--quiet", "--name", "cut", "--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == whole  # the same metrics line
    curves = pd.read_parquet(next((out / "curves").glob("*.parquet")))
    steps = curves[curves["split"] == "train"]["step"].tolist()
    assert steps == sorted(set(steps)) and steps[0] == 0 and len(steps) == steps[-1] + 1  # no gap, no repeat
    row = pd.read_parquet(out / "rows" / "cut.parquet").iloc[0]
    assert row["train_seconds"] > saved["state"]["train_seconds"]  # both attempts' training time


def test_checkpoint_minutes_is_left_out_of_the_cell_id_at_its_default():
    from ablate.core.config import config_hash
    from ablate.core.config_reading import build_config

    base = build_config(tiny_overrides(), "<test>")
    assert config_hash(base) == config_hash(build_config(tiny_overrides(**{"train.checkpoint_minutes": 10.0}),
                                                         "<test>"))
    assert config_hash(base) != config_hash(build_config(tiny_overrides(**{"train.checkpoint_minutes": 0}),
                                                         "<test>"))


def test_a_workers_sigterm_handler_waits_for_the_step_boundary_then_is_back():
    """A sweep worker installs its own SIGTERM handler (an exit); during training the first SIGTERM only requests
    the stop (the step finishes and is saved), a second reaches the worker's handler, and after training the
    worker's handler is in place again."""
    import os
    import signal

    from ablate.engine.train_state import StopRequest

    reached: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: reached.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and reached == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert reached == [signal.SIGTERM]
        with StopRequest() as stop:
            pass
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert reached == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
