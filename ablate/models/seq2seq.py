"""A pretrained (or config-built) encoder–decoder Transformer finetuned into a VAE (Lee & Park 2021, "Finetuning
Pretrained Transformers into Variational Autoencoders"), for any `AutoModelForSeq2SeqLM` (T5, BART, ...).

posterior:  h = Encoder(x) (last hidden states);  p = masked_pool(h, mask) (mean | max | first; padding never
            enters the pool — the released T5-VAE code pooled over padding);  [mu, logvar] = W p (no bias)
decoder:    p(y_t | y_<t, z) from the model's own decoder and LM head, which see the sentence only through z:
            no cross-attention to the real encoder states. z enters in one of three ways (`injection`):
  memory           z → one extra key and one extra value per decoder layer and head, prepended to the decoder
                   self-attention's keys/values, so every position attends to it (Lee & Park 2021; Optimus
                   `latent_as_gpt_memory`, Li et al. 2020). Given to transformers' decoder as a pre-filled
                   `EncoderDecoderCache` (the current Cache API), and to a T5's whole-sentence passes (training,
                   evaluation) by ablate.models.t5_stack directly; built per sample: [N, layers, 2, heads, 1, d]
                   reshaped batch-first (the released code reshaped [B, L·H·d] straight to [L, B, H, 1, d], handing
                   sample b another sample's latent).
  embedding        z → d_model vector added to every decoder input embedding (Optimus `latent_as_gpt_emb`).
  cross_attention  z → a length-1 "encoder output" [N, 1, d_model] that the decoder's cross-attention reads.
The memory slot sits at position 0 of the decoder self-attention, so the tokens sit at 1..T: T5's relative
position bias sees the memory at distance t, BART's learned positions shift by one (as in the released code).
Lee & Park and Optimus use one projected vector as both key and value; here key and value have their own maps.

The reconstruction term is summed over the target tokens of each sentence (</s> included, padding excluded), not
averaged over 256 padded positions as the released code did (which multiplied the effective β by the pad length).
Mixed precision is the trainer's (`train.precision: bf16` autocasts training); log-probabilities are always fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ablate.core.config import MAX_DIM, MAX_NZ, ConfigError, ModelSection, Strict
from ablate.data.batching import Batch
from ablate.data.tokenize import Framing, HFTokenizer
from ablate.models.dropout import cheaper_dropout
from ablate.models import t5_stack
from ablate.models.kernels import chosen_linears
from ablate.core.config import ModelFamily, register_family
from ablate.models.transformer_parts import PooledTransformerVAE, cache_argument, memory_slots
from ablate.core.sources import resolve_source


# ---------------------------------------------------------------- config


class Seq2SeqArch(Strict):
    """A random-init encoder-decoder Transformer built from a config (no weights needed)."""

    family: Literal["t5", "bart"] = "t5"
    d_model: int = Field(128, ge=8, le=MAX_DIM)
    num_layers: int = Field(2, ge=1, le=128)
    num_heads: int = Field(4, ge=1, le=256)
    d_ff: int = Field(512, ge=8, le=4 * MAX_DIM)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "Seq2SeqArch":
        if self.d_model % self.num_heads:
            raise ValueError(f"model.config.d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")
        return self


class Seq2SeqConfig(ModelSection):
    """Lee & Park 2021: a pretrained (or config-built) encoder-decoder Transformer finetuned into a VAE."""

    name: Literal["seq2seq"] = "seq2seq"
    pretrained: str | None = Field(None, description="AutoModelForSeq2SeqLM name or local folder")
    config: Seq2SeqArch | None = None
    tokenizer: str | None = Field(
        None, description="tokenizer name/folder, or 'train' to fit one on the train split "
        "(default: the pretrained model's own, or 'train' for a model built from config)")
    tokenizer_vocab_size: int = Field(2000, ge=100, le=1_000_000,
                                      description="vocabulary size when tokenizer: train")
    pooling: Literal["mean", "max", "first"] = "max"
    injection: Literal["memory", "embedding", "cross_attention"] = "memory"
    nz: int = Field(32, ge=1, le=MAX_NZ)

    @model_validator(mode="after")
    def _one_source(self) -> "Seq2SeqConfig":
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of model.pretrained (name or folder) or model.config (family, sizes)")
        return self

    def hugging_face_parts(self) -> dict[str, str]:
        return {"hf_model": "net"}

    def in_export(self, folder: Path) -> "Seq2SeqConfig":
        return self if self.pretrained is None else self.model_copy(update={"pretrained": str(folder / "hf_model")})



# ---------------------------------------------------------------- tokenizer


def _auto_config(name: str):
    """transformers' config of a hub name or local folder, or a one-line ConfigError."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_source("model.pretrained", name))
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.pretrained: cannot load the config of {name!r}: {str(error).splitlines()[0]}; "
                          "give a local folder written by save_pretrained, or use model.config") from None


def _family(cfg: Seq2SeqConfig) -> str:
    """'t5' or 'bart': the special-token layout of a trained tokenizer and the decoder start convention."""
    if cfg.config is not None:
        return cfg.config.family
    model_type = _auto_config(cfg.pretrained).model_type
    return "t5" if model_type in ("t5", "mt5", "umt5", "longt5") else "bart"


def build_seq2seq_tokenizer(cfg: Seq2SeqConfig, train_texts: list[str]) -> HFTokenizer:
    """The pretrained model's tokenizer (or the one named), or a BPE model fitted on the train split.

    The decoder start token is the pretrained model's `decoder_start_token_id`; for a model built from config (or a
    trained tokenizer) the family's convention: <pad> for T5, </s> for BART.
    """
    from transformers import AutoTokenizer

    source = cfg.tokenizer or (cfg.pretrained if cfg.pretrained is not None else "train")
    if source == "train":
        from ablate.models.subword import train_subword_tokenizer

        tokenizer = train_subword_tokenizer(train_texts, cfg.tokenizer_vocab_size, _family(cfg))
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_source("model.tokenizer", source))
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.tokenizer: cannot load tokenizer {source!r}: {str(error).splitlines()[0]}; "
                              "give a local folder (save_pretrained) or set model.tokenizer: train") from None
    start = None
    if cfg.pretrained is not None and source != "train":
        start = _auto_config(cfg.pretrained).decoder_start_token_id
    if start is None:
        start = tokenizer.eos_token_id if _family(cfg) == "bart" else tokenizer.pad_token_id
    return HFTokenizer(tokenizer, decoder_start_id=start)


# ---------------------------------------------------------------- model construction


def _config_from_arch(cfg: Seq2SeqConfig, tokenizer: HFTokenizer):
    """A transformers config for a random-init model of the given family and sizes."""
    arch = cfg.config
    ids = tokenizer.special_ids
    vocab = len(tokenizer)
    if arch.family == "t5":
        from transformers import T5Config

        return T5Config(vocab_size=vocab, d_model=arch.d_model, d_kv=arch.d_model // arch.num_heads, d_ff=arch.d_ff,
                        num_layers=arch.num_layers, num_decoder_layers=arch.num_layers, num_heads=arch.num_heads,
                        dropout_rate=arch.dropout, feed_forward_proj="relu", tie_word_embeddings=True,
                        pad_token_id=ids.pad, eos_token_id=ids.eos,
                        decoder_start_token_id=tokenizer.framing.dec_start)
    from transformers import BartConfig

    return BartConfig(vocab_size=vocab, d_model=arch.d_model, encoder_layers=arch.num_layers,
                      decoder_layers=arch.num_layers, encoder_attention_heads=arch.num_heads,
                      decoder_attention_heads=arch.num_heads, encoder_ffn_dim=arch.d_ff, decoder_ffn_dim=arch.d_ff,
                      dropout=arch.dropout, attention_dropout=0.0, activation_dropout=0.0,
                      max_position_embeddings=1024, pad_token_id=ids.pad, bos_token_id=ids.bos,
                      eos_token_id=ids.eos, decoder_start_token_id=tokenizer.framing.dec_start,
                      forced_bos_token_id=None, forced_eos_token_id=None, tie_word_embeddings=True)


def build_seq2seq_vae(cfg: Seq2SeqConfig, tokenizer: HFTokenizer) -> "Seq2SeqVAE":
    """Load `pretrained` with AutoModelForSeq2SeqLM.from_pretrained, or build a random-init model from `config`."""
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if cfg.pretrained is not None:
        try:
            net = AutoModelForSeq2SeqLM.from_pretrained(resolve_source("model.pretrained", cfg.pretrained))
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.pretrained: cannot load {cfg.pretrained!r}: {str(error).splitlines()[0]}; "
                              "give a local folder written by save_pretrained, or use model.config") from None
        rows = net.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows or (cfg.tokenizer == "train"):
            net.resize_token_embeddings(len(tokenizer))
            net.config.pad_token_id = tokenizer.special_ids.pad
            net.config.eos_token_id = tokenizer.special_ids.eos
            net.config.decoder_start_token_id = tokenizer.framing.dec_start
    else:
        net = AutoModelForSeq2SeqLM.from_config(_config_from_arch(cfg, tokenizer))
    cheaper_dropout(net)  # MaskDropout: the same distribution, cheaper masks (ablate/models/dropout.py)
    chosen_linears(net)  # its Linear layers through the kernels measured fastest here (kernels.py)
    return Seq2SeqVAE(net, cfg, tokenizer.framing)


# ---------------------------------------------------------------- pieces


def decoder_geometry(config) -> tuple[int, int, int]:
    """(decoder layers, self-attention heads, head dim) of a transformers seq2seq config (T5, BART and kin)."""
    dec = config  # seq2seq configs are flat (get_text_config(decoder=True) rebuilds BART's with defaults)
    layers = getattr(dec, "num_decoder_layers", None) or getattr(dec, "decoder_layers", None) \
        or dec.num_hidden_layers
    heads = getattr(dec, "decoder_attention_heads", None) or getattr(dec, "num_heads", None) \
        or dec.num_attention_heads
    head_dim = getattr(dec, "d_kv", None) or getattr(dec, "head_dim", None) or dec.d_model // heads
    return int(layers), int(heads), int(head_dim)


class Seq2SeqVAE(PooledTransformerVAE):
    def __init__(self, net: nn.Module, cfg: Seq2SeqConfig, framing: Framing) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.nz = cfg.nz
        self.pooling = cfg.pooling
        self.injection = cfg.injection
        self.framing = framing
        self.cache_argument = cache_argument(net.get_decoder())  # looked up once, not at every decoding step
        self.own_stacks = t5_stack.runs_on(net, cfg.injection)  # T5's stacks by ablate.models.t5_stack
        d_model = net.config.d_model
        self.layers, self.heads, self.head_dim = decoder_geometry(net.config)
        self.to_posterior = nn.Linear(d_model, 2 * cfg.nz, bias=False)
        if self.injection == "memory":
            self.z_to_decoder = nn.Linear(cfg.nz, self.layers * 2 * self.heads * self.head_dim, bias=False)
        elif self.injection in ("embedding", "cross_attention"):
            self.z_to_decoder = nn.Linear(cfg.nz, d_model, bias=False)
        else:
            raise ValueError(f"unknown injection {self.injection!r}; expected memory, embedding or cross_attention")

    # ------------------------------------------------------------ parameter groups

    def _decoder_params(self) -> list[nn.Parameter]:
        """Decoder stack + LM head (when not tied to the shared embedding) + the z projection into the decoder."""
        encoder_ids = {id(p) for p in self.net.get_encoder().parameters()}
        seen: set[int] = set()
        out: list[nn.Parameter] = []
        head = self.net.get_output_embeddings()
        for module in (self.net.get_decoder(), head, self.z_to_decoder):
            for param in module.parameters() if module is not None else ():
                if id(param) not in encoder_ids and id(param) not in seen:
                    seen.add(id(param))
                    out.append(param)
        return out

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Everything that is not the decoder: encoder stack, (tied) token embeddings, the posterior map."""
        decoder_ids = {id(p) for p in self._decoder_params()}
        return iter([p for p in self.parameters() if id(p) not in decoder_ids])

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self._decoder_params())

    def reset_decoder(self) -> None:
        """Re-initialise the decoder stack, an untied LM head and the z projection (never the shared embedding).

        The fresh values come from the architecture's own initialisation (a model built from the same config).
        """
        from transformers import AutoModelForSeq2SeqLM

        fresh = AutoModelForSeq2SeqLM.from_config(self.net.config)
        fresh_state = fresh.state_dict()
        names = {id(p): n for n, p in self.net.named_parameters()}
        with torch.no_grad():
            for param in self._decoder_params():
                if id(param) in names:
                    param.copy_(fresh_state[names[id(param)]].to(param.device, param.dtype))
        self.z_to_decoder.reset_parameters()

    # ------------------------------------------------------------ encoder

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.own_stacks:
            hidden = t5_stack.encoder_states(self.net, batch.enc_ids, batch.enc_mask)
        else:
            hidden = self.net.get_encoder()(input_ids=batch.enc_ids, attention_mask=batch.enc_mask).last_hidden_state
        return self.posterior(hidden, batch.enc_mask)

    # ------------------------------------------------------------ decoder

    def new_cache(self, z: Tensor):
        """The decoder's cache before the first token: for `memory`, one key/value slot per layer from z."""
        from transformers import DynamicCache, EncoderDecoderCache

        if self.injection != "memory":
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        return EncoderDecoderCache(DynamicCache(self.memory(z)), DynamicCache())

    def memory(self, z: Tensor) -> list[tuple[Tensor, Tensor]]:
        """z as one (key, value) slot per decoder layer, each [N, heads, 1, head_dim] (injection memory)."""
        return memory_slots(self.z_to_decoder(z), self.layers, self.heads, self.head_dim)

    def head_input(self, hidden: Tensor) -> Tensor:
        """Decoder states as the output layer takes them: T5 rescales tied outputs by d_model^-1/2."""
        config = self.net.config
        scale = getattr(config, "scale_decoder_outputs", None)
        if scale is None:  # transformers < 5: T5 rescaled whenever the embeddings were tied
            scale = config.model_type in ("t5", "mt5", "umt5") and config.tie_word_embeddings
        return hidden * config.d_model ** -0.5 if scale else hidden

    def output_layer(self) -> tuple[Tensor, Tensor | None]:
        """The model's own LM head: its (possibly tied) weight, and BART's final_logits_bias when it has one."""
        head = self.net.get_output_embeddings()
        bias = getattr(self.net, "final_logits_bias", None)
        if head.bias is not None:
            bias = head.bias if bias is None else head.bias + bias.view(-1)
        return head.weight, None if bias is None else bias.view(-1)

    def lm_head(self, hidden: Tensor) -> Tensor:
        """The model's own output layer on decoder states (pinned against the full HF forward in
        tests/test_seq2seq.py)."""
        weight, bias = self.output_layer()
        return nn.functional.linear(self.head_input(hidden), weight, None if bias is None else bias.to(hidden.dtype))

    def decoder_hidden(self, dec_in: Tensor, z: Tensor, cache=None) -> tuple[Tensor, object]:
        """Decoder states [N, T, d] of decoder inputs [N, T] given z [N, nz], and the decoder cache.

        With `cache` (from new_cache or a previous call) dec_in continues the cached prefix (incremental decoding);
        without, it starts a fresh sequence — for a T5 through ablate.models.t5_stack (the same function in fewer
        operations; the cache returned is then None). The decoder never receives the real encoder states.
        """
        decoder = self.net.get_decoder()
        embed = getattr(decoder, "embed_tokens", None)
        embed = self.net.get_input_embeddings() if embed is None else embed
        inputs = embed(dec_in)  # BART's embedding module applies its own scale
        if self.injection == "embedding":
            inputs = inputs + self.z_to_decoder(z).unsqueeze(1).to(inputs.dtype)
        if cache is None and self.own_stacks:  # a whole sentence (training, evaluation): ablate.models.t5_stack
            memory = self.memory(z) if self.injection == "memory" else None
            return t5_stack.decoder_states(self.net, inputs, memory), None
        if cache is None and self.injection == "memory":
            cache = self.new_cache(z)
        context, context_mask = None, None
        if self.injection == "cross_attention":
            context = self.z_to_decoder(z).unsqueeze(1)
            context_mask = torch.ones(z.shape[0], 1, dtype=torch.long, device=z.device)
        out = decoder(inputs_embeds=inputs, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                      use_cache=cache is not None, **{self.cache_argument: cache})
        return out.last_hidden_state, getattr(out, self.cache_argument)

    def decoder_logits(self, dec_in: Tensor, z: Tensor, cache=None) -> tuple[Tensor, object]:
        """Logits [N, T, V] of decoder inputs [N, T] given z [N, nz], and the decoder cache (see decoder_hidden)."""
        hidden, cache = self.decoder_hidden(dec_in, z, cache)
        return self.lm_head(hidden), cache

    def decoder_states(self, inputs: Tensor, z: Tensor) -> Tensor:
        return self.head_input(self.decoder_hidden(inputs, z)[0])


def _tokenizer_key(cfg: Seq2SeqConfig) -> str:
    family = cfg.config.family if cfg.config is not None else None
    return f"{cfg.pretrained}:{cfg.tokenizer}:{cfg.tokenizer_vocab_size}:{family}"


register_family(ModelFamily(
    name="seq2seq", config=Seq2SeqConfig,
    build_tokenizer=lambda model, data, texts: build_seq2seq_tokenizer(model, texts),
    tokenizer_key=_tokenizer_key, build_model=build_seq2seq_vae))
