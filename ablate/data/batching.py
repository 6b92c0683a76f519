"""Token ids → padded batches, bucketed by length so that padding stays small."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from ablate.data.tokenize import Framing, Tokenizer
from ablate.metrics.estimators import length_batches


@dataclass
class EncodedSplit:
    """One split as token ids (no special tokens), with the word counts PPL-per-word needs."""

    tokens: list[list[int]]
    n_words: list[int]  # whitespace words of the original text + 1 for </s>
    truncated: list[int] = field(default_factory=list)  # indices of the sentences that were cut to max_length
    enc_tokens: list[list[int]] | None = None  # the encoder's own ids (a PairTokenizer); None: the same as tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def head(self, n: int | None) -> "EncodedSplit":
        """The first n sentences (all when n is None or larger than the split)."""
        if n is None or n >= len(self.tokens):
            return self
        return EncodedSplit(tokens=self.tokens[:n], n_words=self.n_words[:n],
                            truncated=[i for i in self.truncated if i < n],
                            enc_tokens=None if self.enc_tokens is None else self.enc_tokens[:n])

    @property
    def n_truncated(self) -> int:
        return len(self.truncated)

    @property
    def n_predicted(self) -> int:
        """Tokens a decoder predicts: every token plus </s> (never the start token)."""
        return sum(len(t) + 1 for t in self.tokens)


def encode_split(texts: list[str], tokenizer: Tokenizer, max_length: int) -> EncodedSplit:
    """Encode texts; a sentence longer than max_length - 1 tokens is cut (room for </s>) and counted. A tokenizer
    with an encoder of its own (`encode_encoder`, ablate.data.tokenize.PairTokenizer) also gives the encoder's ids,
    cut the same way (a sentence cut on either side counts once)."""
    encode_encoder = getattr(tokenizer, "encode_encoder", None)
    tokens, n_words, truncated = [], [], []
    enc_tokens: list[list[int]] | None = [] if encode_encoder is not None else None
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        cut = len(ids) > max_length - 1
        tokens.append(ids[: max_length - 1])
        if enc_tokens is not None:
            enc_ids = encode_encoder(text)
            cut = cut or len(enc_ids) > max_length - 1
            enc_tokens.append(enc_ids[: max_length - 1])
        if cut:
            truncated.append(i)
        n_words.append(len(text.split()) + 1)
    return EncodedSplit(tokens=tokens, n_words=n_words, truncated=truncated, enc_tokens=enc_tokens)


@dataclass
class Batch:
    """A padded batch. Masks are True on real tokens. `index` are positions in the split (for factors)."""

    enc_ids: Tensor  # [B, Le]
    enc_mask: Tensor  # [B, Le] bool
    dec_in: Tensor  # [B, T]
    dec_target: Tensor  # [B, T]
    dec_mask: Tensor  # [B, T] bool
    index: Tensor  # [B]
    n_words: Tensor  # [B]

    @property
    def size(self) -> int:
        return self.enc_ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})


def select_rows(batch: Batch, rows: Tensor) -> Batch:
    """The batch's sentences at `rows` (repeats allowed), decoder columns cut to the longest selected sentence."""
    width = int(batch.dec_mask[rows].sum(1).max()) if rows.numel() else 0
    enc_width = int(batch.enc_mask[rows].sum(1).max()) if rows.numel() else 0
    return Batch(enc_ids=batch.enc_ids[rows, :enc_width], enc_mask=batch.enc_mask[rows, :enc_width],
                 dec_in=batch.dec_in[rows, :width], dec_target=batch.dec_target[rows, :width],
                 dec_mask=batch.dec_mask[rows, :width], index=batch.index[rows], n_words=batch.n_words[rows])


def _pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids [N, width] and their mask; two tensor operations per batch, not two per row (an epoch of
    PTB makes 130k rows)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    ids[mask] = torch.tensor([token for row in rows for token in row], dtype=torch.long)
    return ids, mask


def make_batch(split: EncodedSplit, indices: list[int], framing: Framing) -> Batch:
    """Frame and pad the sentences at `indices` (see Framing for the layout)."""
    toks = [split.tokens[i] for i in indices]
    enc_toks = toks if split.enc_tokens is None else [split.enc_tokens[i] for i in indices]
    enc_ids, enc_mask = _pad([list(framing.enc_prefix) + t + [framing.enc_eos] for t in enc_toks], framing.enc_pad)
    dec_in, dec_mask = _pad([[framing.dec_start] + t for t in toks], framing.pad)
    dec_target, _ = _pad([t + [framing.eos] for t in toks], framing.pad)
    return Batch(enc_ids=enc_ids, enc_mask=enc_mask, dec_in=dec_in, dec_target=dec_target, dec_mask=dec_mask,
                 index=torch.tensor(indices, dtype=torch.long),
                 n_words=torch.tensor([split.n_words[i] for i in indices], dtype=torch.long))


def bucketed_order(lengths: list[int], batch_size: int, rng: random.Random | None,
                   bucket_batches: int = 50) -> list[list[int]]:
    """Batches of indices with similar lengths.

    Training (rng given): shuffle, cut into pools of `bucket_batches` batches, sort each pool by length, split it
    into batches, shuffle the batches. Evaluation (rng None): sort everything by length, in order.
    """
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: (lengths[i], i))
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    pool = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start: start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def one_length_order(lengths: list[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """He et al. 2019's batches (vae-lagging-encoder data/text_data.py `create_data_batch`, as
    ablate.metrics.estimators.length_batches cuts them): each run of one length in at most `batch_size` (no padding, some
    batches smaller); the same batches every epoch, in a shuffled order when rng is given (their
    `np.random.permutation`)."""
    order, sizes = length_batches(lengths, batch_size)
    ends = list(itertools.accumulate(sizes))
    batches = [order[end - size:end] for end, size in zip(ends, sizes)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def batches_per_epoch(split: EncodedSplit, batch_size: int, one_length: bool = False) -> int:
    """How many batches iterate_batches cuts from `split` (one_length gives more: one per run of a length)."""
    if not one_length:
        return -(-len(split.tokens) // batch_size)
    return len(one_length_order([len(t) for t in split.tokens], batch_size, None))


def iterate_batches(split: EncodedSplit, framing: Framing, batch_size: int,
                    rng: random.Random | None = None, one_length: bool = False) -> list[Batch]:
    """All batches of a split, bucketed by length (shuffled when rng is given); one_length: He et al.'s batches
    of exactly one length each (one_length_order)."""
    lengths = [len(t) for t in split.tokens]
    order = one_length_order if one_length else bucketed_order
    return [make_batch(split, idx, framing) for idx in order(lengths, batch_size, rng)]
