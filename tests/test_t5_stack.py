"""ablate.models.t5_stack computes transformers' T5 stacks: the same encoder and decoder states and the same
gradients as transformers' own T5Stack forward (the independent computation here), in fp32 with and without
dropout, and under CPU bf16 autocast; on sentences of different lengths (padding) and for both injections it
serves. Tiny random-init T5 (tests/test_seq2seq.py's sizes)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ablate.models import t5_stack
from ablate.models.kernels import Kernels, using
from test_seq2seq import batch_of, texts, tiny_model  # noqa: F401  (texts: the module's fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = [0, 5, 17, 33]  # of the fixture's texts: different lengths, so the batch has padding


@contextlib.contextmanager
def transformers_stacks(model):
    """The model with its stacks run by transformers' T5Stack (the reference)."""
    model.own_stacks = False
    try:
        yield model
    finally:
        model.own_stacks = True


def states(model, batch, z):
    """(encoder states, decoder states) of a batch: what encode and log_likelihood are built on."""
    if model.own_stacks:
        encoder = t5_stack.encoder_states(model.net, batch.enc_ids, batch.enc_mask)
    else:
        encoder = model.net.get_encoder()(input_ids=batch.enc_ids, attention_mask=batch.enc_mask).last_hidden_state
    return encoder, model.decoder_hidden(batch.dec_in, z)[0]


def loss_and_grads(model, batch, z, seed):
    torch.manual_seed(seed)
    encoder, decoder = states(model, batch, z)
    loss = encoder.float().square().mean() + decoder.float().square().mean() + model.log_likelihood(batch, z).sum()
    model.zero_grad(set_to_none=True)
    loss.backward()
    return encoder.detach(), decoder.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None}


@pytest.mark.parametrize("injection", ["memory", "embedding"])
def test_the_stacks_give_transformers_states_in_evaluation(injection, texts):
    model, tokenizer = tiny_model("t5", texts, injection=injection)
    assert model.own_stacks
    batch = batch_of(tokenizer, [texts[i] for i in SENTENCES])
    assert not bool(batch.enc_mask.all())  # padding is part of the case
    z = torch.randn(len(SENTENCES), model.nz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = states(model, batch, z)
        with transformers_stacks(model):
            theirs = states(model, batch, z)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=2e-5, rtol=1e-5)
    mask = batch.dec_mask
    assert float((ours[1][mask] - theirs[1][mask]).abs().max()) < 2e-5


def test_the_relu_post_op_gives_the_same_evaluation(texts):
    """The feed-forward's ReLU as oneDNN's post-op (eval_linear onednn) against F.relu after the product."""
    model, tokenizer = tiny_model("t5", texts)
    batch = batch_of(tokenizer, [texts[i] for i in SENTENCES])
    z = torch.randn(len(SENTENCES), model.nz, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        values = []
        for backend in ("onednn", "blas"):
            with using(Kernels(eval_linear=backend)):
                values.append(model.log_likelihood(batch, z))
    torch.testing.assert_close(values[0], values[1], atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("injection", ["memory", "embedding"])
def test_training_with_dropout_matches_transformers_step_for_step(injection, texts):
    """Train mode, dropout 0.1 everywhere: the same random draws in the same order, so the same states, loss and
    gradients of every parameter as transformers' forward from the same seed."""
    model, tokenizer = tiny_model("t5", texts, injection=injection)
    model.train()
    batch = batch_of(tokenizer, [texts[i] for i in SENTENCES])
    z = torch.randn(len(SENTENCES), model.nz, generator=torch.Generator().manual_seed(3))
    ours = loss_and_grads(model, batch, z, seed=11)
    with transformers_stacks(model):
        theirs = loss_and_grads(model, batch, z, seed=11)
    torch.testing.assert_close(ours[0], theirs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], atol=2e-5, rtol=1e-5)
    assert ours[2].keys() == theirs[2].keys()
    assert any("relative_attention_bias" in name for name in ours[2])  # the bias is trained through the mask
    for name in ours[2]:
        torch.testing.assert_close(ours[2][name], theirs[2][name], atol=1e-5, rtol=1e-4, msg=name)
    other_seed = loss_and_grads(model, batch, z, seed=12)  # (the dropout is live: another seed, other states)
    assert not torch.allclose(other_seed[1], ours[1])


def test_bf16_autocast_training_matches_transformers(texts):
    """Under CPU bf16 autocast (train.precision bf16) the stacks agree with transformers' to bf16's resolution."""
    model, tokenizer = tiny_model("t5", texts)
    model.train()
    batch = batch_of(tokenizer, [texts[i] for i in SENTENCES])
    z = torch.randn(len(SENTENCES), model.nz, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = loss_and_grads(model, batch, z, seed=5)
        with transformers_stacks(model):
            theirs = loss_and_grads(model, batch, z, seed=5)
    assert ours[1].dtype == theirs[1].dtype
    torch.testing.assert_close(ours[1].float(), theirs[1].float(), atol=0.05, rtol=0.02)
    for name in ours[2]:
        reference = theirs[2][name]
        error = float((ours[2][name] - reference).norm() / reference.norm().clamp_min(1e-12))
        assert error < 0.02, name


def test_cross_attention_and_bart_keep_transformers_stacks(texts):
    assert not tiny_model("t5", texts, injection="cross_attention")[0].own_stacks
    assert not tiny_model("bart", texts)[0].own_stacks
