"""The LSTM VAE: likelihood against a step-by-step computation, sums not means, per-sample isolation."""

from __future__ import annotations

import torch

from ablate.models.lstm import LSTMConfig
from ablate.data.batching import encode_split, make_batch
from ablate.data.tokenize import WordVocab
from ablate.metrics.estimators import gaussian_kl
from ablate.models.lstm import LSTMVAE

TEXTS = ["the cat sat on the mat", "a dog", "the dog sat", "cat"]


def setup(seed: int = 0, texts: list[str] = TEXTS):
    """A tiny LSTM VAE (no dropout) with its vocabulary and encoded split of `texts`."""
    torch.manual_seed(seed)
    vocab = WordVocab.build(texts)
    cfg = LSTMConfig(emb_dim=8, enc_hidden=12, dec_hidden=10, nz=3, dec_dropout_in=0.0, dec_dropout_out=0.0,
                     init_uniform=0.3, emb_init_uniform=0.5)
    model = LSTMVAE(len(vocab), cfg).eval()
    split = encode_split(texts, vocab, max_length=50)
    return vocab, model, split


def stepwise_log_likelihood(model: LSTMVAE, tokens: list[int], z: torch.Tensor) -> float:
    """log p(x|z) by feeding one token at a time, no padding, no batching (an independent computation)."""
    state = None
    total = 0.0
    previous = 1  # <s>
    for target in tokens + [2]:  # ... </s>
        logits, state = model.decoder(torch.tensor([[previous]]), z.view(1, -1), state)
        total += float(logits[0, -1].log_softmax(-1)[target])
        previous = target
    return total


def test_log_likelihood_matches_stepwise_decoding_and_ignores_padding():
    vocab, model, split = setup()
    batch = make_batch(split, [0, 1, 2, 3], vocab.framing)
    z = torch.randn(4, 3)
    with torch.no_grad():
        batched = model.log_likelihood(batch, z)
        for i in range(4):
            assert abs(float(batched[i]) - stepwise_log_likelihood(model, split.tokens[i], z[i])) < 1e-4


def test_k_samples_equal_separate_calls():
    vocab, model, split = setup()
    batch = make_batch(split, [0, 1, 2], vocab.framing)
    z = torch.randn(3, 5, 3)
    with torch.no_grad():
        together = model.log_likelihood(batch, z)
        for k in range(5):
            assert torch.allclose(together[:, k], model.log_likelihood(batch, z[:, k]), atol=1e-5)


def test_encoder_state_is_taken_at_each_sentence_end():
    vocab, model, split = setup()
    with torch.no_grad():
        alone = model.encode(make_batch(split, [3], vocab.framing))[0]
        with_longer = model.encode(make_batch(split, [0, 3], vocab.framing))[0][1:]
    assert torch.allclose(alone, with_longer, atol=1e-6)


def test_each_sample_z_reaches_only_its_own_likelihood():
    vocab, model, split = setup()
    batch = make_batch(split, [0, 1, 2, 3], vocab.framing)
    z = torch.randn(4, 3)
    with torch.no_grad():
        base = model.log_likelihood(batch, z)
        for b in range(4):
            bumped = z.clone()
            bumped[b] += 1.0
            changed = (model.log_likelihood(batch, bumped) - base).abs() > 1e-6
            assert changed.tolist() == [i == b for i in range(4)]


def test_reconstruction_is_a_sum_so_padding_does_not_rescale_beta():
    """rec is summed over a sentence's tokens: adding a longer neighbour (more padding) changes nothing.

    With a mean over the padded length the effective KL weight would grow with the padding (the T5-VAE defect).
    """
    vocab, model, split = setup()
    z = torch.randn(1, 3)
    with torch.no_grad():
        alone = model.log_likelihood(make_batch(split, [1], vocab.framing), z)
        padded = model.log_likelihood(make_batch(split, [1, 0], vocab.framing), torch.cat([z, z]))[:1]
    assert torch.allclose(alone, padded, atol=1e-5)
    n_tokens = len(split.tokens[1]) + 1
    token_mean = alone / n_tokens  # what a per-token mean would give instead
    assert not torch.allclose(alone, token_mean)


def test_reset_decoder_leaves_encoder_alone():
    _, model, _ = setup()
    enc = [p.clone() for p in model.encoder_parameters()]
    dec = [p.clone() for p in model.decoder_parameters()]
    model.reset_decoder()
    assert all(torch.equal(a, b) for a, b in zip(enc, model.encoder_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(dec, model.decoder_parameters()))


def test_kl_of_the_posterior_is_analytic():
    vocab, model, split = setup()
    mu, logvar = model.encode(make_batch(split, [0, 1], vocab.framing))
    manual = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar), manual, atol=1e-6)


# --- nz 0: He et al.'s LSTM language model (vae-lagging-encoder modules/lm/lm_lstm.py) ---------------------------

def _he_lm_log_likelihood(model: LSTMVAE, ids: torch.Tensor) -> torch.Tensor:
    """A transcription of LSTM_LM.decode + reconstruct_error on one unpadded sentence [1, L] (<s> … </s>), with
    our decoder's weights: h_0 = c_0 = 0, embeddings only as inputs, pred_linear without bias; log p(x)."""
    dec = model.decoder
    emb = dec.embed(ids[:, :-1])
    zeros = emb.new_zeros(1, 1, dec.lstm.hidden_size)
    output, _ = dec.lstm(emb, (zeros, zeros))
    logits = torch.nn.functional.linear(output, dec.out.weight)  # no bias
    return -torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum")


def test_nz_0_is_he_et_al_s_language_model_and_its_nll_is_exact():
    torch.manual_seed(0)
    vocab = WordVocab.build(TEXTS)
    cfg = LSTMConfig(emb_dim=8, enc_hidden=12, dec_hidden=10, nz=0, dec_dropout_in=0.0, dec_dropout_out=0.0,
                     init_uniform=0.3, emb_init_uniform=0.5, output_bias=False)
    model = LSTMVAE(len(vocab), cfg).eval()
    assert model.encoder is None and model.decoder.out.bias is None and not list(model.encoder_parameters())
    split = encode_split(TEXTS, vocab, max_length=50)
    batch = make_batch(split, [0, 1, 2, 3], vocab.framing)
    mu, logvar = model.encode(batch)
    assert mu.shape == (4, 0) and float(gaussian_kl(mu, logvar).abs().sum()) == 0.0
    with torch.no_grad():
        ours = model.log_likelihood(batch, mu)
        for i, tokens in enumerate(split.tokens):
            theirs = _he_lm_log_likelihood(model, torch.tensor([[1] + tokens + [2]]))
            assert abs(float(ours[i]) - float(theirs)) < 1e-5
    from ablate.core.config import EvalConfig
    from ablate.engine.evaluate import evaluate_split

    ev = evaluate_split(model, split, vocab.framing, len(vocab), EvalConfig(iw_samples=500, batch_size=4),
                        torch.device("cpu"), seed=0, token_unit="word")
    assert ev.conventions["iw_samples"] == 1  # exact: no latent to sample
    assert abs(ev.metrics["nll"] - ev.metrics["rec"]) < 1e-9 and ev.metrics["kl"] == 0.0
    assert ev.metrics["mi_paired"] == 0.0 and ev.metrics["au"] == 0.0
    assert abs(ev.metrics["nll"] - float(-ours.mean())) < 1e-4


def test_a_language_model_takes_no_technique():
    import pytest

    from ablate.core.config import ConfigError
    from ablate.core.config_reading import build_config

    with pytest.raises(ConfigError, match="language model"):
        build_config({"model": {"name": "lstm", "nz": 0}, "techniques": {"free_bits": {"target_total": 8}}}, "x.yaml")
