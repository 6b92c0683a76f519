"""Training curves: per-step loss, KL and reconstruction kept on the device and read off every SYNC_EVERY steps (and
early, so a short run shows them), checked for divergence, and summarised per epoch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ablate.engine.train_state import TrainingDiverged

SYNC_EVERY = 50  # training curves are read off the device every N steps and at each epoch's end


LIVE_EARLY = (0, 9, 24)  # phase steps at which the values are read early too (a short run shows them)


class CurveBuffer:
    """Per-step training values kept on the device and read off in one transfer every SYNC_EVERY steps (each
    float(tensor) on a GPU would stall it). A non-finite or too large loss is caught at the next read."""

    def __init__(self, curves: list[dict[str, Any]], divergence_threshold: float) -> None:
        self.curves, self.threshold = curves, divergence_threshold
        self.meta: list[dict[str, Any]] = []
        self.values: list[Tensor] = []
        self.last: dict[str, Any] | None = None  # the newest step read off (for the progress line)

    def add(self, meta: dict[str, Any], loss: Tensor, kl: Tensor, rec: Tensor) -> dict[str, Any] | None:
        """Buffer one step; at every SYNC_EVERY-th global step (and whenever SYNC_EVERY are buffered) read them off
        and return the newest (else None)."""
        self.meta.append(meta)
        self.values.append(torch.stack([loss.detach().float(), kl.detach().float(), rec.detach().float()]))
        due = (meta["step"] + 1) % SYNC_EVERY == 0 or len(self.values) >= SYNC_EVERY
        return self.flush() if due else None

    def flush(self) -> dict[str, Any] | None:
        """Append the buffered steps to the curves; return the last one (None when empty)."""
        if not self.values:
            return None
        values = torch.stack(self.values).cpu().tolist()
        for meta, (loss, kl, rec) in zip(self.meta, values):
            if not math.isfinite(loss) or loss > self.threshold:
                raise TrainingDiverged(f"loss {loss} at step {meta['step']} (epoch {meta['epoch'] + 1})")
            self.curves.append({**meta, "kl": kl, "rec": rec, "loss": loss})
        self.meta, self.values = [], []
        self.last = self.curves[-1]
        return self.last


def step_detail(point: dict[str, Any] | None) -> str:
    """The progress line's live values of a training curve point ("" for none)."""
    return "" if point is None else f"loss {point['loss']:.2f} kl {point['kl']:.2f} β {point['beta']:.2f}"


def epoch_point(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's validation row (step, epoch, phase, kl, rec, loss = −ELBO) with that epoch's training
    means (train_loss, train_kl, train_rec) and its last β."""
    point = dict(curves[-1])
    steps = [c for c in curves if c["split"] == "train" and c["epoch"] == point["epoch"]
             and c["phase"] == point["phase"]]
    if steps:
        for key in ("loss", "kl", "rec"):
            point[f"train_{key}"] = sum(c[key] for c in steps) / len(steps)
        point["beta"] = steps[-1]["beta"]
    return point
