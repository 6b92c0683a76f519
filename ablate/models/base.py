"""The TextVAE interface every model family implements.

Training and every metric use only `encode` and `log_likelihood`, so a new family plugs in without touching
ablate.engine.train, ablate.engine.evaluate or ablate.metrics.estimators.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ablate.data.batching import Batch
from ablate.models.output_layer import output_block, token_log_probs


class TextVAE(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p(x|z) autoregressive over the decoder target."""

    nz: int

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each [B, nz], from the encoder input (enc_ids, enc_mask); a family ends its encode with
        `return self.finish_posterior(mu, logvar)`."""
        raise NotImplementedError

    def add_posterior_transform(self, module: nn.Module) -> None:
        """Attach a module (mu, logvar) → (mu, logvar) applied after the encoder, e.g. BN-VAE's batch norm on mu.
        It is part of the model (saved with it, in encoder_parameters) and runs in training and evaluation."""
        if not hasattr(self, "posterior_transforms"):
            self.posterior_transforms = nn.ModuleList()
        self.posterior_transforms.append(module)

    def finish_posterior(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        for transform in getattr(self, "posterior_transforms", ()):
            mu, logvar = transform(mu, logvar)
        return mu, logvar

    def decoder_states(self, inputs: Tensor, z: Tensor) -> Tensor:
        """States [N, T, H] that feed the output layer, for decoder inputs [N, T] given z [N, nz] (teacher forcing)."""
        raise NotImplementedError

    def output_layer(self) -> tuple[Tensor, Tensor | None]:
        """(weight [V, H], bias [V] or None) of the output layer: logits = states Wᵀ + b."""
        raise NotImplementedError

    def teacher_forced_logits(self, inputs: Tensor, z: Tensor) -> Tensor:
        """Logits [N, T, V] of the next token at every position of decoder inputs [N, T], given z [N, nz]."""
        return F.linear(self.decoder_states(inputs, z), *self.output_layer())

    def log_likelihood(self, batch: Batch, z: Tensor, block: int | None | str = "auto") -> Tensor:
        """log p(x|z) per sentence, summed over the target tokens (</s> included, padding excluded).

        z is [B, nz] (→ [B]) or [B, K, nz] (→ [B, K]): K latents per sentence, for importance sampling. The sum
        (not a mean over the padded length) keeps the KL weight β what it says (a mean would rescale it).
        On a CPU only real positions reach the output layer, in blocks of `block` positions (ablate.models.
        output_layer; "auto": OUTPUT_BLOCK_ELEMENTS // V, 640 at a 10k vocabulary). On a GPU ("auto") every
        position is projected in one block and padding masked out afterwards: selecting the real positions would
        need their count on the host, a synchronisation.
        """
        per_sample = z.dim() == 3
        k = z.shape[1] if per_sample else 1
        flat_z = z.reshape(z.shape[0] * k, self.nz)  # [B*K, nz], row b*K + k is sample k of sentence b
        mask = expand_for_samples(batch.dec_mask, k)
        targets = expand_for_samples(batch.dec_target, k)
        states = self.decoder_states(expand_for_samples(batch.dec_in, k), flat_z)
        weight, bias = self.output_layer()
        if block == "auto" and states.device.type == "cuda":
            token_logp = token_log_probs(states.flatten(0, 1), weight, bias, targets.flatten(), None)
            sentence_logp = token_logp.view_as(targets).masked_fill(~mask, 0.0).sum(-1)
        else:
            rows = mask.nonzero()[:, 0]  # the row of each real position, in row-major order
            if block == "auto":
                block = output_block(weight.shape[0])
            token_logp = token_log_probs(states[mask], weight, bias, targets[mask], block)
            sentence_logp = torch.zeros(mask.shape[0], dtype=token_logp.dtype, device=token_logp.device)
            sentence_logp = sentence_logp.index_add(0, rows, token_logp)
        return sentence_logp.view(-1, k) if per_sample else sentence_logp

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def reset_decoder(self) -> None:
        """Re-initialise the decoder (Li et al. 2019 two-phase training)."""
        raise NotImplementedError

    def word_embeddings(self) -> list[nn.Embedding]:
        """The embeddings whose gradient may be sparse (only looked up, never multiplied as an output layer)."""
        return []

    @torch.no_grad()
    def generate(self, z: Tensor, max_length: int, strategy: str = "greedy", top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Decode token ids (without specials) from latents z [B, nz]."""
        raise NotImplementedError


def expand_for_samples(batch_tensor: Tensor, k: int) -> Tensor:
    """[B, ...] -> [B*K, ...], each row repeated K times consecutively (matches z.reshape(B*K, nz))."""
    return batch_tensor.repeat_interleave(k, dim=0)


def decode_loop(step: Callable[[Tensor, Any], tuple[Tensor, Any]], state: Any, batch_size: int, start_id: int,
                eos_id: int, max_length: int, strategy: str, top_k: int, top_p: float,
                generator: torch.Generator | None, device: torch.device) -> list[list[int]]:
    """Autoregressive decoding shared by the model families: `step(last_tokens [B, 1], state) -> (logits, state)`.

    Returns each sequence's token ids up to (not including) its first </s>.
    """
    tokens = torch.full((batch_size, 1), start_id, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(batch_size)]
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logits, state = step(tokens, state)
        tokens = sample_next(logits[:, -1].float(), strategy, top_k, top_p, generator).unsqueeze(1)
        for i, t in enumerate(tokens[:, 0].tolist()):
            if not done[i] and t != eos_id:
                out[i].append(t)
        done |= tokens[:, 0] == eos_id
        if bool(done.all()):
            break
    return out


def sample_next(logits: Tensor, strategy: str, top_k: int, top_p: float,
                generator: torch.Generator | None) -> Tensor:
    """One decoding step: greedy, top-k or nucleus (Holtzman et al. 2020) sampling from logits [B, V]."""
    if strategy == "greedy":
        return logits.argmax(-1)
    logits = logits.clone()
    if strategy == "top_k" and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    if strategy == "nucleus" and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits[drop] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
