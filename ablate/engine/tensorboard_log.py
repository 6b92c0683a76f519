"""A run's values as TensorBoard event files (`--tensorboard DIR`; `pip install 'ablate[tensorboard]'`).

Live, at the end of each epoch (x axis: the optimiser step): `valid/rec`, `valid/kl`, `valid/nelbo` and the
epoch's `train/loss`, `train/kl`, `train/rec` means and `train/beta`. When the run ends: every logged training step
(`train_step/loss`, `train_step/kl`, `train_step/rec`, `train_step/beta`), the final metrics of each split
(`final/test.nll`, `final/test.mi`, …: the main table's metrics, MI and AU included) at the run's last step, and the
run's settings (study, arm, seed, the techniques' fields) with those metrics in TensorBoard's HPARAMS tab. One
folder per run: DIR/<run name>.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ablate.core.config import ConfigError, RunConfig, flatten
from ablate.metrics.schema import in_table

INSTALL_HINT = "pip install 'ablate[tensorboard]' (or pip install tensorboard)"
HPARAM_KEYS = ("seed", "data.name", "model.name", "model.nz", "train.lr", "train.batch_size", "train.epochs",
               "train.kl_weight")


def check_available(flag: str = "--tensorboard") -> None:
    """A one-line error before anything is written when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - needs the tensorboard package
    except ImportError:
        raise ConfigError(f"{flag}: the tensorboard package is not installed; {INSTALL_HINT}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLog:
    """The event files of one run."""

    def __init__(self, logdir: str | Path, run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(logdir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def epoch(self, point: dict[str, Any]) -> None:
        """One epoch's validation values and training means (ablate.engine.train.epoch_point), written at once."""
        step = int(point["step"])
        for key, tag in (("rec", "valid/rec"), ("kl", "valid/kl"), ("loss", "valid/nelbo"),
                         ("train_loss", "train/loss"), ("train_kl", "train/kl"), ("train_rec", "train/rec"),
                         ("beta", "train/beta")):
            if _finite(point.get(key)):
                self.writer.add_scalar(tag, float(point[key]), step)
        self.writer.flush()

    def finish(self, config: RunConfig, row: dict[str, Any], curves: list[dict[str, Any]]) -> None:
        """Every training step, the final metrics and the settings (HPARAMS); then close."""
        for point in curves:
            if point.get("split") != "train":
                continue
            for key in ("loss", "kl", "rec", "beta"):
                if _finite(point.get(key)):
                    self.writer.add_scalar(f"train_step/{key}", float(point[key]), int(point["step"]))
        finals = {f"final/{split}.{name}": float(row[f"{split}.{name}"]) for split in config.eval.splits
                  for name in in_table("main") if _finite(row.get(f"{split}.{name}"))}
        step = int(row.get("train_steps") or 0)  # the final metrics belong to the end of training, not step 0
        for tag, value in finals.items():
            self.writer.add_scalar(tag, value, step)
        if finals:  # the settings with the final metrics: TensorBoard's HPARAMS tab (one session per run)
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            for summary in hparams_summary(run_hparams(config, row), finals):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


def run_hparams(config: RunConfig, row: dict[str, Any]) -> dict[str, Any]:
    """What the HPARAMS tab groups and filters by: the study, arm and seed, a few run settings, and every field of
    every technique (the knobs an ablation turns), as numbers, strings or booleans."""
    flat = flatten(config.model_dump(mode="json"))
    out: dict[str, Any] = {"study": str(row.get("study") or ""), "arm": str(row.get("arm") or row.get("run_id")),
                           "techniques": ",".join(sorted(config.techniques)) or "none",
                           "status": str(row.get("status"))}
    for key, value in flat.items():
        if key in HPARAM_KEYS or key.startswith("techniques."):
            if isinstance(value, (bool, int, float, str)):
                out[key] = value
            elif value is not None:
                out[key] = str(value)
    return out
