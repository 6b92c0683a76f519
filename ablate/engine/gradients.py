"""Gradient clipping over dense and sparse gradients, and when the word embeddings' gradients may be sparse.

Under plain SGD (no momentum, no weight decay) an embedding row no batch token looked up gets no update, so its
gradient need not exist: `nn.Embedding(sparse=True)` gives the rows a batch uses and nothing else. A dense gradient
costs, every step, a [vocab, emb] zero fill, its norm, its scaling by the clip and its update: at Li et al.'s PTB
size two 10k × 256 embeddings, ≈ 3.5 % of a training step on a 2-core AMD EPYC (benchmarks/README.md). The values
are those of the dense computation up to the order of the norm's sum (tests/test_gradients.py).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ablate.core.config import TrainConfig
from ablate.models.base import TextVAE


def sparse_embeddings_allowed(model: TextVAE, cfg: TrainConfig) -> bool:
    """Plain SGD (an update that leaves untouched rows untouched) on a model with word embeddings."""
    return cfg.optimizer == "sgd" and cfg.momentum == 0 and cfg.weight_decay == 0 and bool(model.word_embeddings())


def use_sparse_embedding_grads(model: TextVAE, sparse: bool) -> None:
    for embedding in model.word_embeddings():
        embedding.sparse = sparse


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2, the same coefficient max_norm / (‖g‖ + 1e-6), at most 1) over dense and
    sparse gradients; a sparse gradient is coalesced first (a row looked up twice holds one summed value)."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    dense = [p.grad for p in params if not p.grad.is_sparse]
    values = [p.grad._values() for p in params if p.grad.is_sparse]
    norms = list(torch._foreach_norm(dense)) if dense else []
    total = torch.linalg.vector_norm(torch.stack(norms + [torch.linalg.vector_norm(v) for v in values]))
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if dense:
        torch._foreach_mul_(dense, coefficient)
    for v in values:
        v.mul_(coefficient)
    return total
