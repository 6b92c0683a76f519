"""Denoising: corrupt training inputs (never evaluation batches: train.py calls `corrupt` on training batches only).

Modes, with p the corruption rate and L the number of real tokens of a sentence (specials excluded):

- delete        (Lee & Park 2021) encoder input: draw k uniformly from {0, …, ⌊p·L⌋}, delete k of the L real
                tokens chosen uniformly without replacement; the row is re-packed and re-padded, and its attention
                mask is rebuilt from the kept tokens (their released code wrote ids where the mask goes and vice
                versa; here ids and mask stay aligned: the mask is True exactly on the non-pad tokens).
- mask          encoder input: each real token independently replaced by the mask token (`special_ids.mask`, or
                `<unk>` when the tokenizer has none) with probability p; length and mask unchanged.
- word_dropout  (Bowman et al. 2016) decoder *input*: each real token replaced by `<unk>` with probability p; the
                decoder target is untouched, so the model must predict the words it no longer sees.

Never touched: `<s>`, `</s>`, padding, and the decoder start token (position 0 of the decoder input). Random draws
come from the torch.Generator the training loop passes in (saved in checkpoints), so corruption is reproducible.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ablate.data.batching import Batch
from ablate.techniques.base import Technique, TechniqueConfig
from ablate.data.tokenize import SpecialIds
from ablate.core.technique_registry import register


class DenoisingConfig(TechniqueConfig):
    mode: Literal["delete", "mask", "word_dropout"] = Field(
        "delete", description="delete (Lee & Park 2021, encoder) | mask (encoder, mask/unk token) | "
                              "word_dropout (Bowman et al. 2016, decoder input → <unk>)")
    p: float = Field(0.15, ge=0, le=1, description="corruption rate (delete: up to ⌊p·L⌋ tokens; Lee & Park "
                                                   "0.15, 0.4)")


def special_mask(ids: Tensor, special: SpecialIds) -> Tensor:
    """True where the id is <pad>, </s> or <s> (never corrupted)."""
    out = (ids == special.pad) | (ids == special.eos)
    if special.bos is not None:
        out |= ids == special.bos
    return out


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def delete_tokens(ids: Tensor, mask: Tensor, real: Tensor, p: float, pad: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Lee & Park 2021 deletion: per row, delete k ~ U{0..⌊p·L⌋} of its L real tokens (positions where `real`),
    uniformly without replacement; return re-packed ids and the matching mask (True on kept tokens)."""
    rows, width = ids.shape
    n_real = real.sum(1)
    most = torch.floor(p * n_real.double() + 1e-9).long()
    k = torch.minimum(torch.floor(_rand((rows,), generator, ids).double() * (most + 1).double()).long(), most)
    keys = _rand((rows, width), generator, ids).masked_fill(~real, 2.0)
    rank = keys.argsort(1).argsort(1)  # rank of each real position among the real ones, in random order
    delete = real & (rank < k.unsqueeze(1))
    keep = mask & ~delete
    order = (~keep).long().argsort(dim=1, stable=True)  # kept positions first, in their original order
    lengths = keep.sum(1)
    new_mask = torch.arange(width, device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
    new_ids = ids.gather(1, order).masked_fill(~new_mask, pad)
    new_width = max(1, int(lengths.max())) if rows else width
    return new_ids[:, :new_width], new_mask[:, :new_width]


def replace_tokens(ids: Tensor, eligible: Tensor, p: float, token: int, generator: torch.Generator) -> Tensor:
    """Each eligible position independently replaced by `token` with probability p."""
    hit = eligible & (_rand(tuple(ids.shape), generator, ids) < p)
    return ids.masked_fill(hit, token)


@register
class Denoising(Technique):
    """Corrupt training inputs: delete k ~ U{0..⌊p·L⌋} encoder tokens, or replace each encoder token by the mask
    token / each decoder input token by <unk> with probability p (word dropout)."""

    name = "denoising"
    order = 30  # see Technique.order; the one corruption of batches
    version = 1
    paper = ("Lee & Park 2021 (T5-VAE, token deletion); Bowman et al. 2016 'Generating Sentences from a Continuous "
             "Space' (word dropout)")
    summary = "corrupt training inputs: delete / mask encoder tokens, or word dropout on the decoder input"
    Config = DenoisingConfig

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c, special = self.config, self.context.special_ids
        if c.p == 0:
            return batch
        if c.mode == "word_dropout":
            eligible = batch.dec_mask & ~special_mask(batch.dec_in, special)
            eligible[:, 0] = False  # the decoder start token
            return replace(batch, dec_in=replace_tokens(batch.dec_in, eligible, c.p, special.unk, generator))
        special = self.context.encoder_specials  # masking and deleting act on the encoder's own ids
        real = batch.enc_mask & ~special_mask(batch.enc_ids, special)
        if c.mode == "mask":
            token = special.mask if special.mask is not None else special.unk
            return replace(batch, enc_ids=replace_tokens(batch.enc_ids, real, c.p, token, generator))
        ids, mask = delete_tokens(batch.enc_ids, batch.enc_mask, real, c.p, special.pad, generator)
        return replace(batch, enc_ids=ids, enc_mask=mask)

