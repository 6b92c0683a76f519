"""Tests for the Transformer VAE (ablate.models.seq2seq) and its trained tokenizer (ablate.models.subword).

Tiny random-init T5 and BART models (d_model 64, 2 encoder + 2 decoder layers) on the embedded corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.data.batching import encode_split, make_batch
from ablate.data.synthetic import generate_synthetic
from ablate.models.seq2seq import Seq2SeqConfig, Seq2SeqVAE, build_seq2seq_tokenizer, build_seq2seq_vae
from ablate.models.transformer_parts import masked_pool
from vae_checks import (assert_incremental_decoding_matches_teacher_forcing, assert_padding_does_not_change_the_posterior,
                        assert_per_sample_isolation)
from ablate.models.subword import train_subword_tokenizer

from conftest import SHARED_DATA, tiny_overrides

FAMILIES = ("t5", "bart")
INJECTIONS = ("memory", "embedding", "cross_attention")
TINY_ARCH = {"d_model": 64, "num_layers": 2, "num_heads": 4, "d_ff": 128, "dropout": 0.1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return generate_synthetic(n_train=400, n_valid=10, n_test=10, seed=3).texts["train"]


def tiny_cfg(family: str, injection: str = "memory", pooling: str = "max", nz: int = 6, **extra) -> Seq2SeqConfig:
    return Seq2SeqConfig(config={"family": family, **TINY_ARCH}, injection=injection, pooling=pooling, nz=nz,
                         tokenizer_vocab_size=300, **extra)


_TOKENIZERS: dict[str, object] = {}


def tiny_model(family: str, texts: list[str], injection: str = "memory", pooling: str = "max", seed: int = 0,
               **extra) -> tuple[Seq2SeqVAE, object]:
    cfg = tiny_cfg(family, injection, pooling, **extra)
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = build_seq2seq_tokenizer(cfg, texts)
    tokenizer = _TOKENIZERS[family]
    torch.manual_seed(seed)
    return build_seq2seq_vae(cfg, tokenizer).eval(), tokenizer


def batch_of(tokenizer, sentences: list[str]):
    split = encode_split(sentences, tokenizer, 64)
    return make_batch(split, list(range(len(sentences))), tokenizer.framing)


# ---------------------------------------------------------------- tokenizer


def test_trained_tokenizer_is_deterministic_across_processes(texts):
    """`ablate sample` re-fits the tokenizer from the config: the vocabulary must not depend on the process."""
    first = train_subword_tokenizer(texts, 300, "t5").backend_tokenizer.to_str()
    assert train_subword_tokenizer(texts, 300, "t5").backend_tokenizer.to_str() == first
    code = ("import json,sys; from ablate.models.subword import train_subword_tokenizer as t; "
            "texts=json.load(sys.stdin); print(t(texts, 300, 't5').backend_tokenizer.to_str())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert out == first


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_tokenizer_specials_and_framing(family, texts):
    tokenizer = build_seq2seq_tokenizer(tiny_cfg(family), texts)
    assert tokenizer.unit == "subword"
    assert len(tokenizer) <= 300
    ids = tokenizer.encode(texts[0])
    assert tokenizer.decode(ids) == texts[0]
    assert all(i not in (tokenizer.special_ids.pad, tokenizer.special_ids.eos) for i in ids)
    batch = batch_of(tokenizer, [texts[0]])
    framing = tokenizer.framing
    if family == "t5":  # T5: no <s>; the decoder starts from <pad>
        assert (tokenizer.special_ids.pad, tokenizer.special_ids.eos, framing.dec_start) == (0, 1, 0)
        assert batch.enc_ids[0].tolist() == ids + [1]
    else:  # BART: <s> t </s>; the decoder starts from </s>
        assert (tokenizer.special_ids.bos, tokenizer.special_ids.pad, framing.eos, framing.dec_start) == (0, 1, 2, 2)
        assert batch.enc_ids[0].tolist() == [0] + ids + [2]
    assert batch.dec_in[0].tolist() == [framing.dec_start] + ids
    assert batch.dec_target[0].tolist() == ids + [framing.eos]


def test_real_t5_tokenizer_through_our_framing():
    path = SHARED_DATA / "t5_tokenizer"
    if not (path / "tokenizer.json").exists() and not (path / "spiece.model").exists():
        pytest.skip(f"reference data absent: {path} (see ../shared/data/README.md)")
    cfg = Seq2SeqConfig(config={"family": "t5", **TINY_ARCH}, tokenizer=str(path))
    tokenizer = build_seq2seq_tokenizer(cfg, [])
    batch = batch_of(tokenizer, ["Hello world"])
    assert batch.enc_ids[0].tolist() == [8774, 296, 1]
    assert batch.dec_in[0].tolist() == [0, 8774, 296]
    assert batch.dec_target[0].tolist() == [8774, 296, 1]
    assert tokenizer.decode([8774, 296, 1]) == "Hello world"


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILIES)
def test_load_from_a_save_pretrained_folder(family, texts, tmp_path):
    """`pretrained: FOLDER` loads model and tokenizer with from_pretrained; the weights are the saved ones."""
    model, tokenizer = tiny_model(family, texts)
    model.net.save_pretrained(tmp_path)
    tokenizer.tokenizer.save_pretrained(tmp_path)
    cfg = Seq2SeqConfig(pretrained=str(tmp_path), nz=6)
    loaded_tok = build_seq2seq_tokenizer(cfg, ["unused"])
    assert loaded_tok.framing == tokenizer.framing
    assert loaded_tok.encode(texts[1]) == tokenizer.encode(texts[1])
    loaded = build_seq2seq_vae(cfg, loaded_tok).eval()
    saved = model.net.state_dict()
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(value, saved[name]), name
    loaded.load_state_dict(model.state_dict())
    batch = batch_of(tokenizer, texts[:3])
    z = torch.randn(3, 6)
    assert torch.allclose(loaded.log_likelihood(batch, z), model.log_likelihood(batch, z), atol=1e-5)


def test_missing_pretrained_model_is_a_config_error(tmp_path):
    from ablate.core.config import ConfigError

    cfg = Seq2SeqConfig(pretrained=str(tmp_path / "nowhere"), tokenizer="train", nz=4)
    tokenizer = build_seq2seq_tokenizer(Seq2SeqConfig(config={"family": "t5", **TINY_ARCH}), ["a b c"] * 5)
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_seq2seq_vae(cfg, tokenizer)


# ---------------------------------------------------------------- pooling


def test_masked_pool_against_loops():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    for i in range(3):
        real = hidden[i][mask[i]]
        assert torch.allclose(masked_pool(hidden, mask, "mean")[i], real.mean(0))
        assert torch.equal(masked_pool(hidden, mask, "max")[i], real.max(0).values)
        assert torch.equal(masked_pool(hidden, mask, "first")[i], real[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["mean", "max", "first"])
def test_padding_does_not_change_the_posterior(family, pooling, texts):
    """A sentence alone and the same sentence padded beside a longer one get the same mu, logvar.

    The released T5-VAE code pooled over the padded positions too: the check below shows that such pooling would
    fail this test (for mean and max), so the test can see the defect (tests/vae_checks.py).
    """
    model, tokenizer = tiny_model(family, texts, pooling=pooling)
    short, long = min(texts[:50], key=len), max(texts[:50], key=len)
    assert_padding_does_not_change_the_posterior(
        model, batch_of(tokenizer, [short]), batch_of(tokenizer, [short, long]), pooling,
        lambda b: model.net.get_encoder()(input_ids=b.enc_ids, attention_mask=b.enc_mask).last_hidden_state)


# ---------------------------------------------------------------- decoder and injection


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_injection_shapes_samples_and_gradients(family, injection, texts):
    model, tokenizer = tiny_model(family, texts, injection=injection)
    model.train()
    batch = batch_of(tokenizer, texts[:4])
    mu, logvar = model.encode(batch)
    assert mu.shape == logvar.shape == (4, 6)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    log_px = model.log_likelihood(batch, z)
    assert log_px.shape == (4,) and bool((log_px < 0).all())
    (-log_px.sum()).backward()
    assert model.z_to_decoder.weight.grad is not None and model.z_to_decoder.weight.grad.abs().sum() > 0
    assert model.to_posterior.weight.grad.abs().sum() > 0
    for param in model.net.get_encoder().parameters():  # the encoder learns through z only
        assert param.grad is not None
    model.eval()
    with torch.no_grad():
        single = model.log_likelihood(batch, z)
        k_samples = model.log_likelihood(batch, torch.stack([z, z + 1.0, z], dim=1))
    assert k_samples.shape == (4, 3)
    assert torch.allclose(k_samples[:, 0], single, atol=1e-4)
    assert torch.allclose(k_samples[:, 2], single, atol=1e-4)
    assert not torch.allclose(k_samples[:, 1], single, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_decoder_sees_the_sentence_only_through_z(family, injection, texts):
    """With z fixed, replacing the encoder input by another sentence changes nothing in log p(x|z)."""
    model, tokenizer = tiny_model(family, texts, injection=injection)
    batch = batch_of(tokenizer, texts[:3])
    other = batch_of(tokenizer, texts[10:13])
    swapped = type(batch)(**{**batch.__dict__, "enc_ids": other.enc_ids, "enc_mask": other.enc_mask})
    z = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.equal(model.log_likelihood(batch, z), model.log_likelihood(swapped, z))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_per_sample_isolation(family, injection, texts):
    model, tokenizer = tiny_model(family, texts, injection=injection)
    assert_per_sample_isolation(model, batch_of(tokenizer, texts[:5]), nz=6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_incremental_decoding_matches_teacher_forcing(family, injection, texts):
    model, tokenizer = tiny_model(family, texts, injection=injection)
    assert_incremental_decoding_matches_teacher_forcing(model, batch_of(tokenizer, texts[:3]), nz=6)


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_head_matches_the_full_hf_forward(family, texts):
    """Our decoder + head path equals transformers' own forward when the z context is given as encoder output."""
    from transformers.modeling_outputs import BaseModelOutput

    model, tokenizer = tiny_model(family, texts, injection="cross_attention")
    batch = batch_of(tokenizer, texts[:3])
    z = torch.randn(3, 6)
    with torch.no_grad():
        ours, _ = model.decoder_logits(batch.dec_in, z)
        context = model.z_to_decoder(z).unsqueeze(1)
        theirs = model.net(encoder_outputs=BaseModelOutput(last_hidden_state=context),
                           attention_mask=torch.ones(3, 1, dtype=torch.long), decoder_input_ids=batch.dec_in,
                           use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_memory_is_one_slot_per_layer(texts):
    model, _ = tiny_model("t5", texts, injection="memory")
    cache = model.new_cache(torch.randn(2, 6))
    layers = cache.self_attention_cache.layers
    assert len(layers) == 2
    for layer in layers:
        assert layer.keys.shape == layer.values.shape == (2, 4, 1, 16)
    assert model.z_to_decoder.weight.shape == (2 * 2 * 4 * 16, 6)


# ---------------------------------------------------------------- parameter groups and reset


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_groups_partition_and_reset_decoder(family, texts):
    model, _ = tiny_model(family, texts, injection="memory")
    everything = {id(p) for p in model.parameters()}
    encoder = {id(p) for p in model.encoder_parameters()}
    decoder = {id(p) for p in model.decoder_parameters()}
    assert encoder | decoder == everything and not encoder & decoder
    assert id(model.z_to_decoder.weight) in decoder and id(model.to_posterior.weight) in encoder
    assert id(model.net.get_input_embeddings().weight) in encoder  # the tied embedding is the encoder's input

    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    model.reset_decoder()
    for name, param in model.named_parameters():
        if id(param) in decoder:
            assert not torch.equal(param, before[name]), f"{name} was not reset"
        else:
            assert torch.equal(param, before[name]), f"{name} changed"
    for param in model.decoder_parameters():  # layer norms come back to the architecture's init (ones)
        if names[id(param)].endswith("layer_norm.weight"):
            assert torch.equal(param, torch.ones_like(param))


# ---------------------------------------------------------------- generation and precision


@pytest.mark.parametrize("injection", INJECTIONS)
def test_generate(injection, texts):
    model, tokenizer = tiny_model("bart", texts, injection=injection)
    z = torch.randn(3, 6)
    greedy = model.generate(z, max_length=7)
    assert len(greedy) == 3 and all(len(s) <= 7 for s in greedy)
    assert greedy == model.generate(z, max_length=7)
    for strategy, kw in (("top_k", {"top_k": 5}), ("nucleus", {"top_p": 0.9})):
        a = model.generate(z, 7, strategy, generator=torch.Generator().manual_seed(1), **kw)
        b = model.generate(z, 7, strategy, generator=torch.Generator().manual_seed(1), **kw)
        assert a == b
        assert all(tokenizer.framing.eos not in s for s in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast needs a GPU here (none)")
def test_bf16_autocast_on_cuda(texts):
    model, tokenizer = tiny_model("t5", texts)
    model = model.cuda()
    batch = batch_of(tokenizer, texts[:4]).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # what train.precision: bf16 does
        mu, logvar = model.encode(batch)
        assert mu.dtype == torch.float32
        logits, _ = model.decoder_logits(batch.dec_in, mu)
        assert logits.dtype == torch.bfloat16
        assert model.log_likelihood(batch, mu).dtype == torch.float32


# ---------------------------------------------------------------- end to end


def seq2seq_run_config(**extra) -> dict:
    config = tiny_overrides(**{"train.threads": 1, **extra})
    config["model"] = {"name": "seq2seq", "config": {"family": "t5", **TINY_ARCH}, "nz": 4,
                       "tokenizer_vocab_size": 200, **config.get("seq2seq", {})}
    config.pop("seq2seq", None)
    return config


@pytest.mark.slow
def test_run_end_to_end(tmp_path):
    from ablate.engine.run import execute

    config = build_config(seq2seq_run_config())
    outcome = execute(config, tmp_path, progress=False)
    assert outcome.ok, outcome.row.get("error_message")
    row = outcome.row
    assert row["model"] == "seq2seq" and row["eval.token_unit"] == "subword"
    for key in ("test.nll", "test.ppl", "test.ppl_word", "test.kl", "test.mi", "test.au"):
        assert key in row and row[key] == row[key], key
    assert row["test.ppl_word"] > row["test.ppl"]  # more subwords than words: same NLL, smaller denominator
    assert outcome.model_path.exists()


@pytest.mark.slow
def test_lee_park_two_phase_recipe(tmp_path):
    """Phase 1: KL weight 0, deletion noise, frozen decoder; phase 2: annealing + per-dim free bits."""
    from ablate.core.technique_registry import techniques
    from ablate.engine.run import execute

    if "encoder_pretraining" not in techniques() or "free_bits" not in techniques():
        pytest.skip("the encoder_pretraining / free_bits techniques are not registered yet")
    config = build_config(seq2seq_run_config(techniques={
        "encoder_pretraining": {"epochs": 1, "freeze_decoder": True},
        "denoising": {"mode": "delete", "p": 0.4},
        "kl_annealing": {"schedule": "linear", "warmup_steps": 5},
        "free_bits": {"mode": "per_dim_example", "lambda_per_dim": 0.5},
    }))
    outcome = execute(config, tmp_path, progress=False)
    assert outcome.ok, outcome.row.get("error_message")
    phases = [c["phase"] for c in outcome.curves if c["split"] == "train"]
    assert phases[0] == "pretrain" and phases[-1] == "vae"
    betas = [c["beta"] for c in outcome.curves if c["split"] == "train" and c["phase"] == "pretrain"]
    assert set(betas) == {0.0}
