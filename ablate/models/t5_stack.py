"""T5's encoder and decoder stacks (Raffel et al. 2020) computed by our own code over a transformers T5 model's
modules and weights, for the two passes a VAE makes: the encoder over a padded batch, and the decoder over whole
sentences with z as a memory slot (or added to the embeddings). Incremental decoding (`generate`) and z through
cross-attention keep transformers' T5Stack.

The function is transformers' (tests/test_t5_stack.py pins states and gradients against it, in fp32 and under
bf16 autocast, dropout included); what differs is how it is computed, in fewer and larger operations (a T5 step
of `full_grid` is ≈ 400 small operations on a CPU, where the products are only 30–40 % of the time):
- q, k and v in one product (the three weights concatenated at each call: one product, one cast under autocast);
- the relative position bias and the padding / causal mask made once per stack as one additive mask (transformers
  merges them again in every layer), then F.scaled_dot_product_attention with T5's unscaled scores (scale 1);
- no round trip of the feed-forward's activation through fp32 before `wo` under autocast (transformers casts it to
  `wo`'s fp32 weight dtype, and autocast back to bf16: the same values, two casts forward and two backward);
- in evaluation (fp32, no autograd) the feed-forward's ReLU runs as the oneDNN product's post-op when the kernel
  choice put the Linear layers there (ablate.models.kernels.linear_relu).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ablate.models.kernels import linear, linear_relu


def runs_on(net: nn.Module, injection: str) -> bool:
    """Whether these stacks can run `net` (a T5 with relative position bias) for z injected that way."""
    config = getattr(net, "config", None)
    return (getattr(config, "model_type", None) in ("t5", "mt5") and injection in ("memory", "embedding")
            and hasattr(net, "encoder") and hasattr(net, "decoder"))


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """T5LayerNorm: x / RMS(x) · w, the mean square in fp32 (Zhang & Sennrich 2019), as transformers computes it."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    if norm.weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(norm.weight.dtype)
    return norm.weight * x


def attention(attn: nn.Module, x: Tensor, mask: Tensor, memory: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """T5Attention over x [B, T, d] with the additive mask [B or 1, H, T, S] (position bias + −∞ where masked),
    memory (key, value) [B, H, 1, d_kv] before the tokens' own when given; the output projection applied."""
    b, t, _ = x.shape
    heads, head_dim = attn.n_heads, attn.key_value_proj_dim
    weight = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])
    q, k, v = linear(x, weight).view(b, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    if memory is not None:
        k = torch.cat([memory[0].to(k.dtype), k], dim=2)
        v = torch.cat([memory[1].to(v.dtype), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                         dropout_p=attn.dropout if attn.training else 0.0, scale=1.0)
    return attn.o(out.transpose(1, 2).reshape(b, t, heads * head_dim))


def feed_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """T5LayerFF: x + Drop(FF(norm(x))), FF = wo Drop(act(wi x)) (or wo Drop(act(wi_0 x) · wi_1 x) when gated)."""
    dense = layer.DenseReluDense
    normed = rms_norm(layer.layer_norm, x)
    if hasattr(dense, "wi_0"):
        inner = dense.act(dense.wi_0(normed)) * dense.wi_1(normed)
    elif isinstance(dense.act, nn.ReLU):
        inner = linear_relu(normed, dense.wi.weight)
    else:
        inner = dense.act(dense.wi(normed))
    return x + layer.dropout(dense.wo(dense.dropout(inner)))


def _blocks(stack: nn.Module, hidden: Tensor, mask: Tensor,
            memory: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    hidden = stack.dropout(hidden)
    for i, block in enumerate(stack.block):
        self_attention = block.layer[0]
        normed = rms_norm(self_attention.layer_norm, hidden)
        attended = attention(self_attention.SelfAttention, normed, mask, memory[i] if memory is not None else None)
        hidden = hidden + self_attention.dropout(attended)
        hidden = feed_forward(block.layer[-1], hidden)
    return stack.dropout(rms_norm(stack.final_layer_norm, hidden))


def _min(dtype: torch.dtype) -> float:
    """The additive mask's "never": the most negative value of the autocast dtype or of fp32, as transformers."""
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda" if torch.is_autocast_enabled("cuda") else "cpu")
    return torch.finfo(dtype).min


def encoder_states(net: nn.Module, ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The encoder's last hidden states [B, L, d] of ids [B, L] (attention_mask 1 on real tokens)."""
    stack = net.get_encoder()
    hidden = stack.embed_tokens(ids)
    length = ids.shape[1]
    first = stack.block[0].layer[0].SelfAttention
    bias = first.compute_bias(length, length, device=ids.device)  # [1, H, L, L], bidirectional buckets
    keep = attention_mask.bool()[:, None, None, :]
    mask = torch.where(keep, bias, _min(hidden.dtype)).contiguous()
    return _blocks(stack, hidden, mask)


def decoder_states(net: nn.Module, inputs_embeds: Tensor, memory: list[tuple[Tensor, Tensor]] | None) -> Tensor:
    """The decoder's last hidden states [N, T, d] of teacher-forced input embeddings [N, T, d], every position
    attending to itself, the positions before it and, with `memory`, one key/value slot per layer placed at
    position 0 (so the tokens sit at 1..T, as transformers' cache places them)."""
    stack = net.get_decoder()
    length = inputs_embeds.shape[1]
    past = 0 if memory is None else 1
    first = stack.block[0].layer[0].SelfAttention
    bias = first.compute_bias(length, length + past, device=inputs_embeds.device, past_seen_tokens=past)
    positions = torch.arange(length, device=inputs_embeds.device)[:, None] + past
    causal = positions >= torch.arange(length + past, device=inputs_embeds.device)[None, :]
    mask = torch.where(causal.view(1, 1, length, length + past), bias, _min(inputs_embeds.dtype)).contiguous()
    return _blocks(stack, inputs_embeds, mask, memory)
