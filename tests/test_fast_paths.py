"""The fast paths against straightforward implementations: the padded encoder against packed sequences, the
chunked importance-weighted NLL against a sentence-by-sentence, sample-by-sample computation (fixed draws),
chunking and padding invariance, per-sentence isolation, eval.max_sentences."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ablate.data.batching import iterate_batches, make_batch
from ablate.engine.evaluate import iw_log_px, iw_nll
from ablate.metrics.estimators import log_normal_diag, log_standard_normal, sample_posterior
from ablate.models.lstm import LSTMVAE
from test_lstm import setup as lstm_setup

TEXTS = ["the cat sat on the mat today", "a dog", "the dog sat", "cat", "a cat and a dog sat on a mat",
         "the mat", "dog dog dog cat", "on the mat sat the cat"]


def setup(seed: int = 0):
    return lstm_setup(seed, TEXTS)


def packed_encoder(model: LSTMVAE, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder as it was written with packed sequences (the straightforward variable-length LSTM)."""
    enc = model.encoder
    packed = pack_padded_sequence(enc.embed(ids), mask.sum(1), batch_first=True, enforce_sorted=False)
    _, (h_last, _) = enc.lstm(packed)
    return enc.to_posterior(h_last[-1]).chunk(2, dim=-1)


def test_padded_encoder_equals_packed_sequences():
    vocab, model, split = setup()
    batch = make_batch(split, list(range(len(TEXTS))), vocab.framing)
    with torch.no_grad():
        mu, logvar = model.encode(batch)
        ref_mu, ref_logvar = packed_encoder(model, batch.enc_ids, batch.enc_mask)
    assert torch.allclose(mu, ref_mu, atol=1e-6) and torch.allclose(logvar, ref_logvar, atol=1e-6)


def sentence_log_px(model: LSTMVAE, tokens: list[int], z: torch.Tensor) -> float:
    """log p(x|z) of one unpadded sentence from the full logits (float64 log-softmax)."""
    inputs = torch.tensor([[1] + tokens])
    targets = torch.tensor(tokens + [2])
    logits = model.teacher_forced_logits(inputs, z.view(1, -1))[0].double()
    return float(logits.log_softmax(-1)[torch.arange(len(targets)), targets].sum())


def reference_iw_nll(model, split, index, mu, logvar, z) -> list[float]:
    """−log p̂(x) sentence by sentence and sample by sample, logsumexp in float64 (Burda et al. 2016)."""
    out = []
    for b, i in enumerate(index):
        log_w = []
        for k in range(z.shape[1]):
            log_px = sentence_log_px(model, split.tokens[i], z[b, k])
            log_pz = float(log_standard_normal(z[b, k].double()))
            log_qz = float(log_normal_diag(z[b, k].double(), mu[b].double(), logvar[b].double()))
            log_w.append(log_px + log_pz - log_qz)
        out.append(-(float(torch.logsumexp(torch.tensor(log_w, dtype=torch.float64), 0)) - math.log(len(log_w))))
    return out


@pytest.mark.parametrize("pairs_per_chunk,block", [(1, 1), (3, 2), (7, 5), (512, 640)])
def test_chunked_iw_equals_the_straightforward_estimate_on_fixed_draws(pairs_per_chunk, block):
    vocab, model, split = setup()
    k = 6
    with torch.no_grad():
        for batch in iterate_batches(split, vocab.framing, batch_size=3):
            mu, logvar = model.encode(batch)
            ours = iw_nll(model, batch, mu, logvar, k, block, torch.Generator().manual_seed(5), pairs_per_chunk)
            z = sample_posterior(mu, logvar, k=k, generator=torch.Generator().manual_seed(5))  # the same draws
            expected = reference_iw_nll(model, split, batch.index.tolist(), mu, logvar, z)
            assert torch.allclose(ours.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_each_pair_is_isolated_and_padding_changes_nothing():
    """Moving one (sentence, sample) latent changes that pair's log p(x|z) only, however the pairs are chunked;
    a sentence scored beside a longer one scores as it does alone."""
    vocab, model, split = setup()
    batch = make_batch(split, [1, 0, 4], vocab.framing)
    z = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = iw_log_px(model, batch, z, block=3, pairs_per_chunk=5)
        for b in range(3):
            for k in range(4):
                moved = z.clone()
                moved[b, k] += 1.0
                changed = (iw_log_px(model, batch, moved, block=3, pairs_per_chunk=5) - base).abs() > 1e-6
                assert changed.nonzero().tolist() == [[b, k]]
        alone = iw_log_px(model, make_batch(split, [1], vocab.framing), z[:1], block=3, pairs_per_chunk=5)
    assert torch.allclose(alone, base[:1], atol=1e-5)


def test_max_sentences_evaluates_the_first_n(tmp_path):
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute

    config = build_config({"data": {"synthetic": {"n_train": 64, "n_valid": 40, "n_test": 40}},
                           "model": {"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 8, "nz": 2},
                           "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
                           "eval": {"iw_samples": 3, "max_sentences": 7, "splits": ["test"]}}, "<test>")
    outcome = execute(config, tmp_path, progress=False, save_model=False)
    assert outcome.ok, outcome.row.get("error_message")
    assert outcome.row["test.n_sentences"] == 7.0
    assert outcome.row["config.eval.max_sentences"] == 7
