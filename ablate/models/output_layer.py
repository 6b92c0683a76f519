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

import torch
from torch import Tensor
from torch.nn import functional as F


def _has_onednn_linear() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


ONEDNN_LINEAR = _has_onednn_linear()


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ bᵀ (+ bias), a [M, K], b [N, K]. On a CPU in fp32 through oneDNN's linear rather than the default BLAS:
    on the AMD EPYC development machine MKL ran these products at 60–95 GFLOP/s and oneDNN at 140–200 (MKL takes
    a slower path on non-Intel CPUs). Elsewhere F.linear."""
    if ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32:
        b = b if b.is_mkldnn else b.contiguous()  # a packed weight (packed_for_blocks) is used as it is
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b, bias, "none", [], "")
    return F.linear(a, b, bias)


def packed_for_blocks(weight: Tensor, block: int, n: int) -> Tensor:
    """Evaluation: the weight reordered once into oneDNN's blocked layout when several blocks will use it (about
    1.2× faster products; the reorder of a 10k × 256 weight costs a few ms). Otherwise the weight itself."""
    if ONEDNN_LINEAR and weight.device.type == "cpu" and weight.dtype == torch.float32 and n >= 4 * block \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), block)
    return weight


def _block_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return matmul_nt(hidden, weight, bias).float()


def _log_probs_and_softmax_(logits: Tensor, targets: Tensor, softmax: bool) -> Tensor:
    """log softmax(logits)[targets] per row; with softmax=True the logits block becomes softmax(logits) in place.

    max, one exp pass and one sum: half the memory passes of logsumexp followed by a separate exp.
    """
    top = logits.amax(1, keepdim=True)
    target_logits = logits.gather(1, targets.unsqueeze(1))
    probs = logits.sub_(top).exp_()
    total = probs.sum(1, keepdim=True)
    if softmax:
        probs.div_(total)
    return (target_logits - top - total.log()).squeeze(1)


def _minus_onehot_(probs: Tensor, targets: Tensor) -> Tensor:
    """softmax → softmax − onehot(targets), in place: the negated gradient of log p_target wrt the logits."""
    return probs.scatter_add_(1, targets.unsqueeze(1), probs.new_full((probs.shape[0], 1), -1.0))


class _FusedTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, block: int) -> Tensor:
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grads = any(ctx.needs_input_grad[:3])
        neg_grad_h = torch.empty_like(hidden) if grads else None
        neg_grad_w = torch.zeros_like(weight, dtype=torch.float32) if grads else None
        neg_grad_b = torch.zeros_like(bias, dtype=torch.float32) if grads and bias is not None else None
        weight_t = weight.t().contiguous() if grads else None  # [H, V]: ∂/∂h = G W = G (Wᵀ)ᵀ
        logits_weight = weight if grads else packed_for_blocks(weight, block, n)
        for start in range(0, n, block):
            h, t = hidden[start: start + block], targets[start: start + block]
            logits = _block_logits(h, logits_weight, bias)
            out[start: start + block] = _log_probs_and_softmax_(logits, t, softmax=grads)
            if grads:
                g = _minus_onehot_(logits, t)
                neg_grad_h[start: start + block] = matmul_nt(g.to(weight.dtype), weight_t)
                neg_grad_w += matmul_nt(g.t(), h.float().t())
                if neg_grad_b is not None:
                    neg_grad_b.add_(g.sum(0))
        ctx.block = block
        ctx.save_for_backward(hidden, weight, bias, targets, neg_grad_h, neg_grad_w, neg_grad_b)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, neg_grad_h, neg_grad_w, neg_grad_b = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if neg_grad_h is None:
            return None, None, None, None, None
        # (a host check: this path is taken on CPUs; on a GPU token_log_probs uses the plain computation)
        if grad_out.numel() == 0 or bool((grad_out == grad_out[:1]).all()):
            scale = -grad_out[:1].to(neg_grad_w.dtype) if grad_out.numel() else neg_grad_w.new_zeros(1)
            if ctx.needs_input_grad[0]:
                grad_h = neg_grad_h * (-grad_out).unsqueeze(1).to(neg_grad_h.dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (neg_grad_w * scale).to(weight.dtype)
            if bias is not None and ctx.needs_input_grad[2]:
                grad_b = (neg_grad_b * scale).to(bias.dtype)
            return grad_h, grad_w, grad_b, None, None
        # per-position weights differ: recompute each block with its rows scaled by their incoming gradient
        grad_h = neg_grad_h * (-grad_out).unsqueeze(1).to(neg_grad_h.dtype)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.block):
            h, t = hidden[start: start + ctx.block], targets[start: start + ctx.block]
            logits = _block_logits(h, weight, bias)
            _log_probs_and_softmax_(logits, t, softmax=True)
            g = _minus_onehot_(logits, t)
            g.mul_(-grad_out[start: start + ctx.block].unsqueeze(1))
            grad_w += matmul_nt(g.t(), h.float().t())
            if grad_b is not None:
                grad_b.add_(g.sum(0))
        return (grad_h, grad_w.to(weight.dtype), grad_b.to(bias.dtype) if grad_b is not None else None,
                None, None)


def token_log_probs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                    block: int | None = 640) -> Tensor:
    """log softmax(hidden Wᵀ + b)[targets] per position, fp32: hidden [P, H], weight [V, H], targets [P] → [P].

    block=None: the plain computation (one logits block, fused log-softmax + NLL; autocast-friendly, no host
    synchronisation — the path on GPUs). block=n: blocks of n positions, with the gradient formed in the forward
    pass (module docstring) — the CPU path, and the evaluation path everywhere (bounded memory).
    """
    if block is None or hidden.shape[0] == 0:
        logits = F.linear(hidden, weight, bias)
        return -F.cross_entropy(logits.float(), targets, reduction="none")
    hidden = hidden.to(weight.dtype)  # bf16 autocast output: the blocked path computes in the weights' dtype
    with torch.autocast(hidden.device.type, enabled=False):
        if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
            with torch.no_grad():
                return _FusedTokenLogProbs.forward(_NoGradContext(), hidden, weight, bias, targets, max(1, block))
        return _FusedTokenLogProbs.apply(hidden, weight, bias, targets, max(1, block))


class _NoGradContext:
    """Stands in for autograd's ctx when nothing needs a gradient (evaluation)."""

    needs_input_grad = (False, False, False, False, False)

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        pass
