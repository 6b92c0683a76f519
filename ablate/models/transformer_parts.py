"""What the Transformer families (seq2seq, optimus) share: pooling the encoder's states over real tokens only,
the posterior head on the pooled state, z as one key/value memory slot per decoder layer, the decoder's name for
its cache, and decoding with that cache."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ablate.models.base import TextVAE, decode_loop


def masked_pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool [B, L, d] encoder states over the real tokens only (mask True): mean, max, or the first real token."""
    mask = mask.bool()
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    if how == "first":
        first = mask.to(torch.int8).argmax(1)  # index of the first real token (0 for right padding)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    raise ValueError(f"unknown pooling {how!r}; expected mean, max or first")


def cache_argument(module: nn.Module) -> str:
    """A decoder's name for its key/value cache: `cache` in current transformers (`past_key_values` is deprecated
    there and warns on every call), `past_key_values` in older releases."""
    return "cache" if "cache" in inspect.signature(type(module).forward).parameters else "past_key_values"


def memory_slots(memory: Tensor, layers: int, heads: int, head_dim: int) -> list[tuple[Tensor, Tensor]]:
    """W z [N, layers·2·heads·head_dim] as one (key, value) slot per layer, each [N, heads, 1, head_dim]; the batch
    dimension stays first, so no sample ever reads another's latent."""
    kv = memory.view(memory.shape[0], layers, 2, heads, 1, head_dim)
    return [(kv[:, i, 0], kv[:, i, 1]) for i in range(layers)]


class PooledTransformerVAE(TextVAE):
    """A Transformer VAE: q(z|x) from the pooled encoder states (`to_posterior`, `pooling`), p(x|z) from a decoder
    with a key/value cache (`new_cache`, `decoder_logits`)."""

    to_posterior: nn.Linear
    pooling: str

    def posterior(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) from encoder states [B, L, d] pooled over the real tokens."""
        pooled = masked_pool(hidden.float(), mask, self.pooling)
        with torch.autocast(pooled.device.type, enabled=False):  # the posterior stays fp32 under bf16 training
            mu, logvar = self.to_posterior(pooled).chunk(2, dim=-1)
            return self.finish_posterior(mu, logvar)

    def new_cache(self, z: Tensor):
        raise NotImplementedError

    def decoder_logits(self, dec_in: Tensor, z: Tensor, cache=None) -> tuple[Tensor, object]:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, z: Tensor, max_length: int, strategy: str = "greedy", top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, start_id: int | None = None,
                 eos_id: int | None = None) -> list[list[int]]:
        start_id = self.framing.dec_start if start_id is None else start_id
        eos_id = self.framing.eos if eos_id is None else eos_id
        return decode_loop(lambda tokens, cache: self.decoder_logits(tokens, z, cache), self.new_cache(z), z.shape[0],
                           start_id, eos_id, max_length, strategy, top_k, top_p, generator, z.device)
