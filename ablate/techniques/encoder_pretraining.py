"""Encoder pretraining: two-phase training, an autoencoder phase before the VAE phase.

Phase "pretrain": loss = mean_i rec_i with β forced to 0 whatever the other techniques say (z is still sampled
from q(z|x), so the encoder learns a posterior the decoder uses). It ends after `epochs` epochs, after `steps`
optimiser steps, or when the validation reconstruction has not improved (by more than `min_delta`) for
`patience` epochs — whichever comes first; with `lr_decay: true` the phase also follows `train.lr_decay` on the
validation rec (decay, back to the best state, a fresh optimiser; the phase ends at the last decay) and the VAE
phase starts from the phase's best state, as Li et al.'s text_beta.py trains and saves the autoencoder.
Phase "vae": the configured VAE objective with the other techniques, whose step counters restart at 0.

- Li et al. 2019 ("A Surprisingly Effective Fix for Deep Latent Variable Modeling of Text"): pretrain an
  autoencoder, then re-initialise the decoder (`reset_decoder: true`) and train the VAE with annealing 0 → 1 over
  10 epochs and free bits (total 8 nats).
- Lee & Park 2021 (T5-VAE) phase 1: β = 0 with the decoder optionally frozen (`freeze_decoder: true`) and
  denoising; phase 2 continues from phase 1 (no reset) with annealing and KL thresholding.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from ablate.techniques.base import PhaseProgress, Step, Technique, TechniqueConfig
from ablate.core.technique_registry import register


class EncoderPretrainingConfig(TechniqueConfig):
    epochs: int | None = Field(None, ge=1, description="pretraining ends after this many epochs")
    steps: int | None = Field(None, ge=1, description="pretraining ends after this many optimiser steps")
    patience: int | None = Field(None, ge=1, description="… or after this many epochs without a better validation "
                                                         "rec (needs epochs or steps as a cap)")
    min_delta: float = Field(0.0, ge=0, description="an improvement of the validation rec must exceed this (nats)")
    freeze_decoder: bool = Field(False, description="decoder parameters do not train during pretraining "
                                                    "(Lee & Park 2021 phase 1)")
    reset_decoder: bool = Field(False, description="re-initialise the decoder when the VAE phase starts "
                                                   "(Li et al. 2019)")
    lr_decay: bool = Field(False, description="the phase follows train.lr_decay on the validation rec and ends at its "
                           "last decay; the VAE phase starts from the phase's best state (Li et al.'s text_beta.py)")

    @model_validator(mode="after")
    def _has_an_end(self) -> "EncoderPretrainingConfig":
        if self.epochs is None and self.steps is None:
            raise ValueError("pretraining needs an end: give epochs and/or steps (patience stops it earlier)")
        return self


def patience_exhausted(valid_rec: list[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when the last `patience` validation recs brought no improvement over the best before them."""
    best_index, best = 0, float("inf")
    for i, value in enumerate(valid_rec):
        if value < best - min_delta:
            best_index, best = i, value
    return len(valid_rec) - 1 - best_index >= patience


@register
class EncoderPretraining(Technique):
    """Phase 1: loss = mean_i rec_i (β = 0, z ~ q(z|x) still sampled); phase 2: the configured VAE objective.
    Optional frozen decoder in phase 1, re-initialised decoder at the start of phase 2."""

    name = "encoder_pretraining"
    order = 40  # see Technique.order; phase control
    version = 1
    paper = ("Li et al. 2019 'A Surprisingly Effective Fix for Deep Latent Variable Modeling of Text' (EMNLP); "
             "Lee & Park 2021 (T5-VAE, two phases)")
    summary = "train an autoencoder first (β = 0, z sampled), then the VAE; optional frozen / reset decoder"
    Config = EncoderPretrainingConfig

    def wants_pretraining(self) -> bool:
        return True

    def pretraining_decays(self) -> bool:
        return self.config.lr_decay

    def start_phase(self, phase: str, model: nn.Module) -> None:
        """pretrain: freeze the decoder if asked. vae: unfreeze it, and re-initialise it if asked.

        train.py also calls this when resuming from a checkpoint, before loading the saved weights, so a reset
        there is harmless (the weights are overwritten) and the frozen/unfrozen state matches the phase.
        """
        if phase == "pretrain":
            if self.config.freeze_decoder:
                for param in model.decoder_parameters():
                    param.requires_grad_(False)
        elif phase == "vae":
            if self.config.freeze_decoder:
                for param in model.decoder_parameters():
                    param.requires_grad_(True)
            if self.config.reset_decoder:
                model.reset_decoder()

    def pretraining_budget(self, steps_per_epoch: int) -> int:
        caps = [c for c in (self.config.steps, self.config.epochs and self.config.epochs * steps_per_epoch) if c]
        return min(caps)

    def pretraining_finished(self, progress: PhaseProgress) -> bool:
        c = self.config
        if c.epochs is not None and progress.epochs >= c.epochs:
            return True
        if c.steps is not None and progress.steps >= c.steps:
            return True
        return c.patience is not None and patience_exhausted(progress.valid_rec, c.patience, c.min_delta)

    def forces_zero_kl(self, step: Step) -> bool:
        return step.phase == "pretrain"
