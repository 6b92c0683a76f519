"""The LSTM text VAE of He et al. 2019 ("Lagging inference networks") and Li et al. 2019.

encoder:  e_t = Emb(x_t);  h_T = LSTM(e_1..e_T) at the sentence's last real token;  [mu, logvar] = W h_T (no bias)
          (the LSTM runs over the padded batch — PyTorch's fused kernel, which packed sequences skip — and each
          sentence's state is read at its own last token: one direction, so padding after it never reaches it)
decoder:  c_0 = W_z z,  h_0 = tanh(c_0);  h_t = LSTM([Drop(Emb'(y_{t-1})); z], h_{t-1});
          p(y_t | y_<t, z) = softmax(V Drop(h_t) [+ b])   (He et al.'s pred_linear has no bias: output_bias false)
Init (He et al.): weights U(-0.01, 0.01), embeddings U(-0.1, 0.1).
The output weight V [vocab, H] is stored column-major (kernels.column_major): the values are the same, and the
output layer's backward products read it as Vᵀ and accumulate its gradient as ∂Vᵀ without a transposed copy.
nz 0: no latent and no encoder — the decoder alone is He et al.'s LSTM language model (modules/lm/lm_lstm.py:
h_0 = c_0 = 0, inputs the embeddings only); KL = 0 and every importance-weighted estimate is the exact log p(x).
"""

from __future__ import annotations

import itertools
from typing import Iterator, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ablate.core.config import MAX_DIM, MAX_NZ, NEW_FIELD, DataConfig, ModelSection
from ablate.data.batching import Batch
from ablate.data.tokenize import WordVocab
from ablate.models.base import TextVAE, decode_loop
from ablate.models.dropout import MaskDropout
from ablate.models.kernels import column_major, lstm_backend
from ablate.core.config import ModelFamily, register_family


class LSTMConfig(ModelSection):
    """He et al. 2019 / Li et al. 2019 LSTM VAE. Li PTB: emb 256, hidden 256/256, nz 32."""

    name: Literal["lstm"] = "lstm"
    emb_dim: int = Field(64, ge=1, le=MAX_DIM)
    enc_hidden: int = Field(128, ge=1, le=MAX_DIM)
    dec_hidden: int = Field(128, ge=1, le=MAX_DIM)
    nz: int = Field(16, ge=0, le=MAX_NZ, description="latent dimensions; 0: no latent, an LSTM language model "
                    "(He et al.'s lm_lstm.py, the LSTM-LM rows of their tables)")
    dec_dropout_in: float = Field(0.5, ge=0.0, lt=1.0)
    dec_dropout_out: float = Field(0.5, ge=0.0, lt=1.0)
    init_uniform: float = Field(0.01, ge=0.0, description="U(-a, a) init of weights (He et al.)")
    emb_init_uniform: float = Field(0.1, ge=0.0, description="U(-a, a) init of embeddings (He et al.)")
    output_bias: bool = Field(True, description="a bias in the output layer (He et al.'s and Li et al.'s code: "
                              "none, pred_linear bias=False)", json_schema_extra=NEW_FIELD)
    encoder_init: Literal["uniform", "pytorch"] = Field(
        "uniform", description="the encoder's init: init_uniform / emb_init_uniform as the decoder, or PyTorch's "
        "defaults (Zhu et al.'s BN-VAE code leaves its encoder there: valdersoul/bn-vae enc_lstm.py:180-184)",
        json_schema_extra=NEW_FIELD)


class LSTMEncoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: LSTMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.emb_dim)
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, batch_first=True)
        self.to_posterior = nn.Linear(cfg.enc_hidden, 2 * cfg.nz, bias=False)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        with lstm_backend():  # oneDNN's RNN primitive or ATen's loop, whichever was faster here (kernels.py)
            hidden, _ = self.lstm(self.embed(ids))  # [B, L, H] over the padded batch
        last = mask.sum(1) - 1  # each sentence's last real token (right padding)
        h_last = hidden[torch.arange(ids.shape[0], device=ids.device), last]
        mu, logvar = self.to_posterior(h_last).chunk(2, dim=-1)
        return mu, logvar


class LSTMDecoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: LSTMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.emb_dim)
        self.drop_in = MaskDropout(cfg.dec_dropout_in)
        self.lstm = nn.LSTM(cfg.emb_dim + cfg.nz, cfg.dec_hidden, batch_first=True)
        self.z_to_cell = nn.Linear(cfg.nz, cfg.dec_hidden, bias=False) if cfg.nz > 0 else None
        self.drop_out = MaskDropout(cfg.dec_dropout_out)
        self.out = nn.Linear(cfg.dec_hidden, vocab_size, bias=cfg.output_bias)
        self.out.weight.data = column_major(self.out.weight.data)

    def initial_state(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.z_to_cell is None:  # a language model: h_0 = c_0 = 0 (He et al.'s lm_lstm.py)
            c0 = z.new_zeros(1, z.shape[0], self.lstm.hidden_size)
            return c0, c0
        c0 = self.z_to_cell(z).unsqueeze(0)
        return torch.tanh(c0), c0

    def states(self, inputs: Tensor, z: Tensor, state: tuple[Tensor, Tensor] | None = None
               ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Drop(h_t) [N, T, H], the output layer's input, for decoder inputs [N, T] given z [N, nz] (z
        concatenated to every input), and the LSTM state after the last input."""
        emb = self.drop_in(self.embed(inputs))
        z_every_step = z.unsqueeze(1).expand(-1, inputs.shape[1], -1)
        with lstm_backend():
            hidden, state = self.lstm(torch.cat([emb, z_every_step], dim=-1), state or self.initial_state(z))
        return self.drop_out(hidden), state

    def forward(self, inputs: Tensor, z: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Logits [N, T, V] for decoder inputs [N, T] given z [N, nz], and the LSTM state."""
        hidden, state = self.states(inputs, z, state)
        return self.out(hidden), state


class LSTMVAE(TextVAE):
    def __init__(self, vocab_size: int, cfg: LSTMConfig, pad_id: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.nz = cfg.nz
        self.pad_id = pad_id
        self.encoder = LSTMEncoder(vocab_size, cfg) if cfg.nz > 0 else None  # nz 0: a language model
        self.decoder = LSTMDecoder(vocab_size, cfg)
        if self.encoder is not None and cfg.encoder_init == "uniform":
            self.reset_parameters(self.encoder)
        self.reset_parameters(self.decoder)

    @torch.no_grad()
    def reset_parameters(self, module: nn.Module) -> None:
        """He et al. 2019 init: U(-0.01, 0.01) for weights, U(-0.1, 0.1) for embeddings (drawn in row-major order
        whatever a parameter's layout, so a seed gives the values it gave before the output weight was stored
        column-major)."""
        for name, param in module.named_parameters():
            bound = self.cfg.emb_init_uniform if name.startswith("embed") else self.cfg.init_uniform
            param.copy_(torch.empty(param.shape, dtype=param.dtype, device=param.device).uniform_(-bound, bound))

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.encoder is None:  # a language model: the posterior over R^0
            empty = self.decoder.out.weight.new_zeros(batch.enc_ids.shape[0], 0)
            return empty, empty
        return self.finish_posterior(*self.encoder(batch.enc_ids, batch.enc_mask))

    def decoder_states(self, inputs: Tensor, z: Tensor) -> Tensor:
        return self.decoder.states(inputs, z)[0]

    def output_layer(self) -> tuple[Tensor, Tensor | None]:
        return self.decoder.out.weight, self.decoder.out.bias

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        transforms = getattr(self, "posterior_transforms", None)
        own = self.encoder.parameters() if self.encoder is not None else ()
        return itertools.chain(own, transforms.parameters() if transforms is not None else ())

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.decoder.parameters()

    def reset_decoder(self) -> None:
        self.reset_parameters(self.decoder)

    def word_embeddings(self) -> list[nn.Embedding]:
        return [m.embed for m in (self.encoder, self.decoder) if m is not None]

    @torch.no_grad()
    def generate(self, z: Tensor, max_length: int, strategy: str = "greedy", top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, start_id: int = 1, eos_id: int = 2) -> list[list[int]]:
        return decode_loop(lambda tokens, state: self.decoder(tokens, z, state), None, z.shape[0], start_id, eos_id,
                           max_length, strategy, top_k, top_p, generator, z.device)


def _word_vocab(model: LSTMConfig, data: DataConfig, train_texts: list[str]) -> WordVocab:
    """The train split's words (data.max_vocab most frequent), or a fixed vocabulary file (data.vocab_file)."""
    if data.vocab_file is not None:
        return WordVocab.from_file(data.vocab_file)
    return WordVocab.build(train_texts, max_size=data.max_vocab, min_freq=data.min_freq)


register_family(ModelFamily(
    name="lstm", config=LSTMConfig, build_tokenizer=_word_vocab, tokenizer_key=lambda model: "word",
    build_model=lambda model, tokenizer: LSTMVAE(len(tokenizer), model, pad_id=tokenizer.framing.pad)))
