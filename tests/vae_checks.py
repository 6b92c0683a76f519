"""Checks every Transformer VAE family must pass (tests/test_seq2seq.py, tests/test_optimus.py), each against an
independent computation: the same logits with one sample's z moved, the one-pass forward against token-by-token
decoding with the cache, and a sentence's posterior alone against the same sentence padded beside a longer one."""

from __future__ import annotations

import torch

from ablate.models.transformer_parts import masked_pool


def assert_per_sample_isolation(model, batch, nz: int) -> None:
    """Moving the z of one sample changes that sample's logits and no other's (the released T5-VAE code reshaped
    the memory projection without a transpose and fed sample b another sample's latent); the same through the
    [B, K, nz] path of log_likelihood."""
    n = batch.size
    z = torch.randn(n, nz)
    with torch.no_grad():
        base, _ = model.decoder_logits(batch.dec_in, z)
        for j in range(n):
            moved = z.clone()
            moved[j] += 2.0
            logits, _ = model.decoder_logits(batch.dec_in, moved)
            for b in range(n):
                same = torch.allclose(logits[b], base[b], atol=1e-6)
                assert same == (b != j), f"sample {b} after moving z of sample {j}"
        zk = torch.randn(n, 3, nz)
        base_k = model.log_likelihood(batch, zk)
        moved = zk.clone()
        moved[2, 1] += 5.0
        changed = (model.log_likelihood(batch, moved) - base_k).abs() > 1e-4
    expected = torch.zeros(n, 3, dtype=torch.bool)
    expected[2, 1] = True
    assert torch.equal(changed, expected)


def assert_incremental_decoding_matches_teacher_forcing(model, batch, nz: int, atol: float = 1e-4) -> None:
    """Token-by-token decoding with the cache gives the logits of the one-pass forward (memory slot and causal mask
    offsets are right), and the stepwise log-probs sum to log_likelihood. `atol`: fp32 rounding of a deep network
    (a wrong position or mask offset moves logits by whole units)."""
    z = torch.randn(batch.size, nz)
    with torch.no_grad():
        full, _ = model.decoder_logits(batch.dec_in, z)
        cache = model.new_cache(z)
        steps = []
        for t in range(batch.dec_in.shape[1]):
            logits, cache = model.decoder_logits(batch.dec_in[:, t: t + 1], z, cache)
            steps.append(logits)
        stepwise = torch.cat(steps, dim=1)
        assert torch.allclose(stepwise, full, atol=atol)
        logp = stepwise.log_softmax(-1).gather(-1, batch.dec_target.unsqueeze(-1)).squeeze(-1)
        expected = (logp * batch.dec_mask).sum(-1)
        assert torch.allclose(model.log_likelihood(batch, z), expected, atol=10 * atol)


def assert_padding_does_not_change_the_posterior(model, alone, padded, pooling: str, encoder_hidden) -> None:
    """The first sentence of `padded` (the sentence of `alone`, padded beside a longer one) gets the same mu, logvar.
    For mean and max pooling, pooling over the padding too (the released T5-VAE code's defect) would move it: the
    check shows that it can see that defect. `encoder_hidden(batch)` is the family's encoder's last hidden states."""
    assert padded.enc_ids.shape[1] > alone.enc_ids.shape[1] + 3
    with torch.no_grad():
        mu_alone, lv_alone = model.encode(alone)
        mu_padded, lv_padded = model.encode(padded)
    assert torch.allclose(mu_alone[0], mu_padded[0], atol=1e-5)
    assert torch.allclose(lv_alone[0], lv_padded[0], atol=1e-5)
    if pooling != "first":
        with torch.no_grad():
            pooled = masked_pool(encoder_hidden(padded), torch.ones_like(padded.enc_mask), pooling)
            mu_unmasked = model.to_posterior(pooled).chunk(2, -1)[0]
        assert not torch.allclose(mu_unmasked[0], mu_alone[0], atol=1e-3)
