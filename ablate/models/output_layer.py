"""log softmax(h Wᵀ + b)[target] for many positions, in blocks: the output layer fused with the log-softmax.

A decoder's output layer dominates a text VAE's cost (Li et al.'s PTB LSTM: 70 % of training FLOPs, 82 % of
importance-weighted evaluation). Computed the plain way it writes a [P, V] logits block, a same-size log-softmax
and, for the backward pass, a same-size gradient: three passes over memory for every matrix multiply, and on a
CPU a GEMM whose output leaves the cache. Here the P positions go through in blocks of `block` rows: each block's
logits are made, reduced to log-probabilities and (when training) turned into their gradient while they are still
in cache, so nothing of size [P, V] is ever held. Blocks of 320–640 rows of a 10k vocabulary ran the matrix
multiply about 1.35× faster than one 1120-row block on a 2-core AVX-512 CPU (benchmarks/bench_iw.py).

The gradient is formed in the forward pass (as Liger-Kernel's fused linear cross-entropy does):
∂ log p_t / ∂ logits = onehot(t) − softmax(logits), so with G = softmax − onehot per row,
    ∂/∂h = −G W,   ∂/∂W = −Gᵀ h,   ∂/∂b = −Σ_rows G.
Backward then scales these by the incoming gradient. That is exact for ∂/∂h whatever the incoming gradient, and
for ∂/∂W, ∂/∂b when every position has the same incoming gradient (the VAE loss is mean_i Σ_t −log p: every
token weighs 1/B). Any other incoming gradient is handled by recomputing the blocks in backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ablate.models.kernels import (Kernels, active, add_grad_w_product, grad_h_product, grad_w_accumulator,
                                   packed_weight, product_nt)


TINY_PROBABILITY = 1e-30  # below it, log p_target is taken from the logits (_log_probs_and_softmax_)
OUTPUT_BLOCK_ELEMENTS = 6_400_000  # logits per output-layer block: 25 MB fp32, cache-friendly (output_layer.py)


def output_block(vocab_size: int, max_elements: int = OUTPUT_BLOCK_ELEMENTS) -> int:
    """Positions per output-layer block so that one block's logits hold at most max_elements."""
    return max(16, max_elements // max(1, vocab_size))


def _block_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
    return product_nt(hidden, weight, bias, backend).float()


def _log_probs_and_softmax_(logits: Tensor, targets: Tensor, row_logits: Callable[[Tensor], Tensor]) -> Tensor:
    """log softmax(logits)[targets] per row, and the logits block becomes softmax(logits) in place (training).

    PyTorch's fused row-wise softmax (a max pass, an exp-and-sum pass, a scaling pass, vectorised), written over
    its input, takes under half the time of the same passes as separate operations (0.42 against 0.84 ms for a
    [450, 1521] block on one thread, 2.8 against 7.1 ms for [700, 10002] on two; AMD EPYC of family 25), and
    log p_target is read off it. Where p_target is below TINY_PROBABILITY (fp32's normal range ends at 1.2e-38,
    where the log would lose digits and then become −∞), that row's value is logit_target − logsumexp(logits)
    over its logits formed again (`row_logits(rows)`). (Evaluation needs no softmax: there PyTorch's fused
    cross-entropy is faster, 7.3 against 12.4 ms for a [4207, 1521] block on one core of the same CPU.)
    """
    probs = torch.softmax(logits, 1, out=logits)
    target_probs = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    log_probs = target_probs.log()
    tiny = target_probs < TINY_PROBABILITY
    if bool(tiny.any()):
        rows = tiny.nonzero().squeeze(1)
        again = row_logits(rows)
        log_probs[rows] = again.gather(1, targets[rows].unsqueeze(1)).squeeze(1) - torch.logsumexp(again, 1)
    return log_probs


def _minus_onehot_(probs: Tensor, targets: Tensor) -> Tensor:
    """softmax → softmax − onehot(targets), in place: the negated gradient of log p_target wrt the logits."""
    return probs.scatter_add_(1, targets.unsqueeze(1), probs.new_full((probs.shape[0], 1), -1.0))


class _FusedTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, block: int,
                kernels: Kernels, dtype: torch.dtype) -> Tensor:
        """hidden and the products in `dtype` (bf16 under CPU autocast), the softmax and ∂W accumulated in fp32."""
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grads = any(ctx.needs_input_grad[:3])
        neg_grad_h = torch.empty_like(hidden) if grads else None
        neg_grad_w = grad_w_accumulator(weight, kernels.grad_w) if grads else None
        neg_grad_b = torch.zeros_like(bias, dtype=torch.float32) if grads and bias is not None else None
        w = weight.detach().to(dtype)
        product_bias = bias.detach().to(dtype) if bias is not None else None
        if grads:
            logits_backend, logits_weight = kernels.logits, w
            weight_t = w.t().contiguous() if kernels.grad_h == "onednn" else None  # [H, V]: G W = G (Wᵀ)ᵀ
        else:
            logits_backend = kernels.eval_logits
            logits_weight = packed_weight(w, block, logits_backend) if n >= 4 * block else w
        for start in range(0, n, block):
            h, t = hidden[start: start + block], targets[start: start + block]
            logits = _block_logits(h, logits_weight, product_bias, logits_backend)
            if not grads:  # evaluation needs no softmax: PyTorch's fused cross-entropy, one pass
                out[start: start + block] = -F.cross_entropy(logits, t, reduction="none")
                continue
            out[start: start + block] = _log_probs_and_softmax_(
                logits, t, lambda rows: _block_logits(h[rows], logits_weight, product_bias, logits_backend))
            g = _minus_onehot_(logits, t)
            g_low = g.to(dtype)
            neg_grad_h[start: start + block] = grad_h_product(g_low, w, weight_t, kernels.grad_h)
            add_grad_w_product(neg_grad_w, g_low, h, kernels.grad_w)
            if neg_grad_b is not None:
                neg_grad_b.add_(g.sum(0))
        ctx.block, ctx.kernels, ctx.dtype = block, kernels, dtype
        ctx.save_for_backward(hidden, weight, bias, targets, neg_grad_h, neg_grad_w, neg_grad_b)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, neg_grad_h, neg_grad_w, neg_grad_b = ctx.saved_tensors
        none = (None, None, None, None)
        grad_h = grad_w = grad_b = None
        if neg_grad_h is None:
            return (None, None, None) + none
        # (a host check: this path is taken on CPUs; on a GPU token_log_probs uses the plain computation)
        if grad_out.numel() == 0 or bool((grad_out == grad_out[:1]).all()):
            scale = -grad_out[:1].to(neg_grad_w.dtype) if grad_out.numel() else neg_grad_w.new_zeros(1)
            if ctx.needs_input_grad[0]:
                grad_h = neg_grad_h * (-grad_out).unsqueeze(1).to(neg_grad_h.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = neg_grad_w.mul_(scale).to(weight.dtype)  # in place: one pass over [V, H], no new buffer
            if bias is not None and ctx.needs_input_grad[2]:
                grad_b = (neg_grad_b * scale).to(bias.dtype)
            return (grad_h, grad_w, grad_b) + none
        # per-position weights differ: recompute each block with its rows scaled by their incoming gradient
        kernels, dtype = ctx.kernels, ctx.dtype
        w = weight.detach().to(dtype)
        product_bias = bias.detach().to(dtype) if bias is not None else None
        grad_h = neg_grad_h * (-grad_out).unsqueeze(1).to(neg_grad_h.dtype)
        grad_w = grad_w_accumulator(weight, kernels.grad_w)
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.block):
            h, t = hidden[start: start + ctx.block], targets[start: start + ctx.block]
            logits = _block_logits(h, w, product_bias, kernels.logits)
            torch.softmax(logits, 1, out=logits)
            g = _minus_onehot_(logits, t)
            g.mul_(-grad_out[start: start + ctx.block].unsqueeze(1))
            add_grad_w_product(grad_w, g.to(dtype), h, kernels.grad_w)
            if grad_b is not None:
                grad_b.add_(g.sum(0))
        return (grad_h, grad_w.to(weight.dtype), grad_b.to(bias.dtype) if grad_b is not None else None) + none


def balanced_block(n: int, block: int) -> int:
    """Rows per block when n rows go through in blocks of at most `block`: as many blocks as needed, of equal size
    (740 rows in blocks of ≤ 640: two of 370, not 640 + 100 — a thin last block runs its product slowly)."""
    blocks = max(1, math.ceil(n / max(1, block)))
    return max(1, math.ceil(n / blocks))


def token_log_probs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                    block: int | None = 640, kernels: Kernels | None = None) -> Tensor:
    """log softmax(hidden Wᵀ + b)[targets] per position, fp32: hidden [P, H], weight [V, H], targets [P] → [P].

    block=None: the plain computation (one logits block, fused log-softmax + NLL; autocast-friendly, no host
    synchronisation — the path on GPUs). block=n: blocks of n positions, with the gradient formed in the forward
    pass (module docstring) — the CPU path, and the evaluation path everywhere (bounded memory). `kernels`
    (default: ablate.models.kernels.active()) picks the products' kernels, or the plain computation for training;
    under a CPU bf16 autocast the blocks' products run in bf16 (the softmax and ∂W in fp32).
    """
    kernels = kernels or active()
    training = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if block is None or hidden.shape[0] == 0 or (training and kernels.output == "plain"):
        logits = F.linear(hidden, weight, bias)
        return -F.cross_entropy(logits.float(), targets, reduction="none")
    low = hidden.device.type == "cpu" and training and torch.is_autocast_enabled("cpu") \
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    dtype = torch.bfloat16 if low else weight.dtype
    hidden = hidden.to(dtype)
    block = balanced_block(hidden.shape[0], block)
    with torch.autocast(hidden.device.type, enabled=False):
        if not training:
            with torch.no_grad():
                return _FusedTokenLogProbs.forward(_NoGradContext(), hidden, weight, bias, targets, block,
                                                   kernels, dtype)
        return _FusedTokenLogProbs.apply(hidden, weight, bias, targets, block, kernels, dtype)


class _NoGradContext:
    """Stands in for autograd's ctx when nothing needs a gradient (evaluation)."""

    needs_input_grad = (False,) * 7

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        pass
