"""The Optimus family (a pretrained encoder + a causal LM decoder, Li et al. 2020), on small networks built from
configs (BERT encoder; GPT-2 and Llama decoders), each side with its own tokenizer: per-sample isolation of z,
padding invariance of the posterior, incremental decoding equal to teacher forcing, the decoder reading the
sentence only through z, and a run end to end (issue 16)."""

from __future__ import annotations

import pytest
import torch

from ablate.data.batching import encode_split, make_batch
from ablate.data.synthetic import generate_synthetic
from ablate.models.optimus import OptimusConfig, build_optimus_vae, build_pair_tokenizer
from vae_checks import (assert_incremental_decoding_matches_teacher_forcing, assert_padding_does_not_change_the_posterior,
                        assert_per_sample_isolation)

DECODERS = ["gpt2", "llama"]
INJECTIONS = ["memory", "embedding", "softmax"]
_TOKENIZERS: dict[str, object] = {}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return generate_synthetic(n_train=400, n_valid=10, n_test=10, seed=3).texts["train"]


def tiny(decoder: str, texts: list[str], injection: str = "memory", pooling: str = "mean"):
    cfg = OptimusConfig(encoder_config={"family": "bert", "d_model": 32, "num_layers": 2, "num_heads": 2,
                                        "d_ff": 64},
                        decoder_config={"family": decoder, "d_model": 32, "num_layers": 2, "num_heads": 4,
                                        "d_ff": 64},
                        injection=injection, pooling=pooling, nz=6, tokenizer_vocab_size=300)
    if "pair" not in _TOKENIZERS:
        _TOKENIZERS["pair"] = build_pair_tokenizer(cfg, texts)
    torch.manual_seed(0)
    return build_optimus_vae(cfg, _TOKENIZERS["pair"]).eval(), _TOKENIZERS["pair"]


def batch_of(tokenizer, sentences: list[str]):
    return make_batch(encode_split(sentences, tokenizer, 64), list(range(len(sentences))), tokenizer.framing)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_per_sample_isolation(decoder, injection, texts):
    model, tokenizer = tiny(decoder, texts, injection)
    assert_per_sample_isolation(model, batch_of(tokenizer, texts[:4]), nz=6)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_incremental_decoding_matches_teacher_forcing(decoder, injection, texts):
    model, tokenizer = tiny(decoder, texts, injection)
    assert_incremental_decoding_matches_teacher_forcing(model, batch_of(tokenizer, texts[:3]), nz=6)


@pytest.mark.parametrize("pooling", ["first", "mean", "max"])
def test_padding_does_not_change_the_posterior(pooling, texts):
    model, tokenizer = tiny("gpt2", texts, pooling=pooling)
    short, long = min(texts[:50], key=len), max(texts[:50], key=len)
    assert_padding_does_not_change_the_posterior(
        model, batch_of(tokenizer, [short]), batch_of(tokenizer, [short, long]), pooling,
        lambda b: model.encoder(input_ids=b.enc_ids, attention_mask=b.enc_mask.long()).last_hidden_state)


@pytest.mark.parametrize("injection", INJECTIONS)
def test_the_decoder_reads_the_sentence_only_through_z(injection, texts):
    """Two different sentences with the same z and the same decoder input get the same logits: nothing of the
    encoder's input reaches the decoder except through z."""
    model, tokenizer = tiny("llama", texts, injection)
    a, b = batch_of(tokenizer, [texts[0]]), batch_of(tokenizer, [texts[1]])
    z = torch.randn(1, 6)
    with torch.no_grad():
        la = model.log_likelihood(a, z)
        mixed = a.__class__(**{**a.__dict__, "enc_ids": b.enc_ids, "enc_mask": b.enc_mask})
        assert torch.allclose(model.log_likelihood(mixed, z), la)
        assert not torch.allclose(model.encode(a)[0], model.encode(b)[0])


def test_an_optimus_run_end_to_end(tmp_path):
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute
    from conftest import tiny_overrides

    config = build_config(tiny_overrides(**{
        "model": {"name": "optimus", "nz": 4, "tokenizer_vocab_size": 300, "injection": "memory",
                  "encoder_config": {"family": "bert", "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
                  "decoder_config": {"family": "llama", "d_model": 32, "num_layers": 1, "num_heads": 2,
                                     "d_ff": 64}},
        "eval.probe": False}))
    outcome = execute(config, tmp_path, progress=False)
    assert outcome.ok, outcome.row.get("error_message")
    row = outcome.row
    assert row["eval.token_unit"] == "subword" and row["test.nll"] > 0 and row["test.n_words"] > 0
    from ablate.engine.saved_models import load_run

    _, prepared, model = load_run(outcome.model_path)
    assert model.generate(torch.zeros(2, 4), max_length=5) is not None
