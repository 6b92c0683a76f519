"""denoising: corruption statistics (rate ≈ p, deletions ≤ ⌊p·L⌋), specials untouched, ids and masks aligned,
determinism, and evaluation batches never corrupted (train.py corrupts training batches only)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.data.batching import EncodedSplit, make_batch
from ablate.data.tokenize import Framing
from ablate.engine.run import build, prepare
from ablate.techniques.base import TrainContext
from ablate.data.tokenize import SpecialIds
from ablate.techniques.denoising import Denoising
from ablate.techniques.base import build_techniques
from ablate.core.technique_registry import resolve_techniques
from ablate.engine.train import train

WORD_SPECIAL = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)
WORD_FRAMING = Framing(enc_prefix=(1,), dec_start=1, eos=2, pad=0)
# T5 style: no <s>, the decoder starts from <pad>, a distinct mask token
T5_SPECIAL = SpecialIds(pad=0, bos=None, eos=1, unk=2, mask=5)
T5_FRAMING = Framing(enc_prefix=(), dec_start=0, eos=1, pad=0)


def make(mode: str, p: float, special: SpecialIds = WORD_SPECIAL) -> Denoising:
    resolved = resolve_techniques({"denoising": {"mode": mode, "p": p}})["denoising"]
    return Denoising(Denoising.Config.model_validate(resolved),
                     TrainContext(nz=4, steps_per_epoch=10, special_ids=special))


def sentences(n: int, seed: int = 0, max_len: int = 30) -> EncodedSplit:
    """Sentences of distinct real tokens (ids 10, 11, …), so that every kept token can be traced."""
    rng = random.Random(seed)
    tokens = [[10 + i for i in range(rng.randint(1, max_len))] for _ in range(n)]
    return EncodedSplit(tokens=tokens, n_words=[len(t) + 1 for t in tokens])


def batch_of(split: EncodedSplit, framing: Framing = WORD_FRAMING):
    return make_batch(split, list(range(len(split))), framing)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _real_tokens(ids_row: torch.Tensor, mask_row: torch.Tensor) -> list[int]:
    return [int(i) for i, m in zip(ids_row, mask_row) if m and int(i) >= 10]


@pytest.mark.parametrize("special, framing", [(WORD_SPECIAL, WORD_FRAMING), (T5_SPECIAL, T5_FRAMING)])
@pytest.mark.parametrize("p", [0.15, 0.4, 1.0])
def test_delete_counts_alignment_and_specials(special, framing, p):
    split = sentences(3000, seed=1)
    batch = batch_of(split, framing)
    out = make("delete", p, special).corrupt(batch, gen(1))
    # ids and mask stay aligned: mask True exactly on the non-pad tokens, packed to the left, no all-pad column
    assert torch.equal(out.enc_mask, out.enc_ids != special.pad)
    lengths = out.enc_mask.sum(1)
    assert torch.equal(out.enc_mask, torch.arange(out.enc_ids.shape[1]) < lengths.unsqueeze(1))
    assert out.enc_ids.shape[1] == int(lengths.max())
    # decoder side untouched
    for name in ("dec_in", "dec_target", "dec_mask", "index", "n_words"):
        assert torch.equal(getattr(out, name), getattr(batch, name))
    deleted, most, fraction_zero = [], [], []
    for row, toks in enumerate(split.tokens):
        ids = [int(i) for i in out.enc_ids[row, : int(lengths[row])]]
        # <s> (when the framing has one) first and </s> last: never deleted
        assert ids[: len(framing.enc_prefix)] == list(framing.enc_prefix) and ids[-1] == special.eos
        kept = ids[len(framing.enc_prefix): -1]
        assert kept == [t for t in toks if t in set(kept)]  # a subsequence, original order
        m = math.floor(p * len(toks) + 1e-9)
        deleted.append(len(toks) - len(kept))
        most.append(m)
        assert 0 <= deleted[-1] <= m
        fraction_zero.append(deleted[-1] == 0)
    # k ~ U{0..m}: E[k] = m/2, P(k = 0) = 1/(m+1)
    n = len(deleted)
    mean_k, mean_half = sum(deleted) / n, sum(m / 2 for m in most) / n
    spread = math.sqrt(sum(m * (m + 2) / 12 for m in most)) / n  # sd of the mean of k
    assert abs(mean_k - mean_half) < 4 * spread + 1e-9
    if p == 1.0:
        assert any(d == len(t) for d, t in zip(deleted, split.tokens))  # a sentence may lose every real token
    p_zero = sum(1 / (m + 1) for m in most) / n
    assert abs(sum(fraction_zero) / n - p_zero) < 0.03


def test_delete_with_short_sentences_deletes_nothing():
    split = EncodedSplit(tokens=[[10], [10, 11], [10, 11, 12]], n_words=[2, 3, 4])
    batch = batch_of(split)
    out = make("delete", 0.4).corrupt(batch, gen())  # ⌊0.4·L⌋ = 0 for L ≤ 2, 1 for L = 3
    assert torch.equal(out.enc_ids[:2, :4], batch.enc_ids[:2, :4])
    assert int(out.enc_mask[2].sum()) in (4, 5)


@pytest.mark.parametrize("mode", ["mask", "word_dropout"])
@pytest.mark.parametrize("special, framing", [(WORD_SPECIAL, WORD_FRAMING), (T5_SPECIAL, T5_FRAMING)])
def test_replacement_rate_and_specials(mode, special, framing):
    p = 0.3
    split = sentences(2000, seed=2)
    batch = batch_of(split, framing)
    out = make(mode, p, special).corrupt(batch, gen(2))
    if mode == "mask":
        before, after, mask = batch.enc_ids, out.enc_ids, batch.enc_mask
        token = special.mask
        for name in ("dec_in", "dec_target", "dec_mask"):
            assert torch.equal(getattr(out, name), getattr(batch, name))
    else:
        before, after, mask = batch.dec_in, out.dec_in, batch.dec_mask
        token = special.unk
        assert torch.equal(out.dec_target, batch.dec_target)  # the target is never corrupted
        assert torch.equal(out.dec_in[:, 0], batch.dec_in[:, 0])  # nor the decoder start token
        for name in ("enc_ids", "enc_mask", "dec_mask"):
            assert torch.equal(getattr(out, name), getattr(batch, name))
    assert torch.equal(out.enc_mask, batch.enc_mask) and after.shape == before.shape
    real = mask & (before >= 10)
    changed = after != before
    assert not (changed & ~real).any()  # specials, padding, start token untouched
    assert (after[changed] == token).all()
    rate = float(changed.sum()) / float(real.sum())
    n = float(real.sum())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_mask_falls_back_to_unk_without_a_mask_token():
    special = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=None)
    batch = batch_of(sentences(200))
    out = make("mask", 0.5, special).corrupt(batch, gen())
    changed = out.enc_ids != batch.enc_ids
    assert changed.any() and (out.enc_ids[changed] == 3).all()


@pytest.mark.parametrize("mode", ["delete", "mask", "word_dropout"])
def test_deterministic_given_the_generator(mode):
    batch = batch_of(sentences(100))
    technique = make(mode, 0.4)
    a, b = technique.corrupt(batch, gen(5)), technique.corrupt(batch, gen(5))
    c = technique.corrupt(batch, gen(6))
    assert torch.equal(a.enc_ids, b.enc_ids) and torch.equal(a.dec_in, b.dec_in)
    assert not (torch.equal(a.enc_ids, c.enc_ids) and torch.equal(a.dec_in, c.dec_in))


@pytest.mark.parametrize("mode", ["delete", "mask", "word_dropout"])
def test_p_zero_is_the_identity(mode):
    batch = batch_of(sentences(50))
    out = make(mode, 0.0).corrupt(batch, gen())
    assert torch.equal(out.enc_ids, batch.enc_ids) and torch.equal(out.dec_in, batch.dec_in)


def test_input_batch_is_not_modified_in_place():
    batch = batch_of(sentences(100))
    saved = (batch.enc_ids.clone(), batch.enc_mask.clone(), batch.dec_in.clone())
    for mode in ("delete", "mask", "word_dropout"):
        make(mode, 0.5).corrupt(batch, gen())
    assert torch.equal(batch.enc_ids, saved[0]) and torch.equal(batch.enc_mask, saved[1])
    assert torch.equal(batch.dec_in, saved[2])


def test_only_training_batches_are_corrupted():
    """A spy on corrupt(): called once per training step, never on the validation batches."""
    config = build_config({
        "data": {"synthetic": {"n_train": 48, "n_valid": 40, "n_test": 8}},
        "model": {"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 8, "nz": 2},
        "techniques": {"denoising": {"mode": "mask", "p": 0.5}},
        "train": {"batch_size": 16, "epochs": 2, "checkpoint_every_epoch": False},
        "eval": {"batch_size": 8},
    })
    prepared = prepare(config)
    model = build(config, prepared)
    context = TrainContext(nz=2, steps_per_epoch=3, special_ids=prepared.tokenizer.special_ids)
    (technique,) = build_techniques(config.techniques, context)
    seen: list[int] = []
    original = technique.corrupt

    def spy(batch, generator):
        seen.append(batch.size)
        return original(batch, generator)

    technique.corrupt = spy
    result = train(model, [technique], prepared.splits["train"], prepared.splits["valid"],
                   prepared.tokenizer.framing, config.train, torch.device("cpu"), seed=0, eval_batch_size=8,
                   progress=False)
    assert len(seen) == result.state.global_step == 6
    assert sum(seen) == 2 * 48  # the training sentences of 2 epochs; the 40 validation sentences never
