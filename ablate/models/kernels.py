"""The kernels that can run the heavy products, and the choice in use (made by ablate.models.kernel_choice).

The fastest way to run a product differs from CPU to CPU: on the AMD EPYC development machine MKL's fp32 GEMM ran
the output layer's products at half oneDNN's rate, while oneDNN's ∂W product (which needs a transposed copy) lost
to MKL's; an Intel Xeon ranks them otherwise. So nothing is fixed by vendor: ablate.models.kernel_choice times
these candidates on the run's shapes and the run records the choice in its row (`kernels`).

The candidates (every one computes the same values: tests/test_kernels.py):
- the output layer in training: `plain` (one logits block, log-softmax and NLL by autograd) or `blocks`
  (ablate.models.output_layer) whose three products — logits h Wᵀ, ∂h = G W, ∂W = Gᵀ h — each go through `blas`
  (torch's default: MKL on x86 builds) or `onednn` (oneDNN's linear primitive; for ∂h also `onednn-view`, Wᵀ
  as a strided view rather than a copy; for ∂W also `onednn-t`, ∂Wᵀ from G's strided view);
- the output layer in evaluation: its logits through `blas`, `onednn`, or `onednn-packed` (the weight reordered
  once into oneDNN's blocked layout);
- the LSTMs: `onednn` (oneDNN's RNN primitive: PyTorch's own choice on CPUs with mkldnn on) or `aten` (PyTorch's
  cell loop over MKL products);
- the Transformer families' Linear layers (`ChosenLinear`, swapped in for every nn.Linear of a T5/BART/Optimus
  model): `blas` (F.linear) or `onednn` (forward and both backward products through oneDNN, fp32 only; under
  autocast they are F.linear).
Not timed but recorded with them, as it changes rounding: the word embeddings' gradients, `dense` or `sparse`
(only the rows a batch uses; under plain SGD, ablate.engine.gradients).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

PRODUCT_BACKENDS = ("blas", "onednn")
GRAD_H_BACKENDS = ("blas", "onednn", "onednn-view")  # onednn-view: Wᵀ passed as a strided view, no copy
GRAD_W_BACKENDS = ("blas", "onednn", "onednn-t")  # onednn-t: ∂Wᵀ = hᵀ G accumulated as [H, V], G's view, no copy
EVAL_BACKENDS = ("blas", "onednn", "onednn-packed")
LSTM_BACKENDS = ("onednn", "aten")
EMBEDDING_GRADS = ("dense", "sparse")


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


ONEDNN = _onednn_available()


@dataclass(frozen=True)
class Kernels:
    """One choice of kernels. The defaults are what ablate used before it measured (oneDNN everywhere)."""

    output: str = "blocks"  # blocks | plain
    logits: str = "onednn" if ONEDNN else "blas"
    grad_h: str = "onednn" if ONEDNN else "blas"
    grad_w: str = "onednn" if ONEDNN else "blas"
    eval_logits: str = "onednn-packed" if ONEDNN else "blas"
    lstm: str = "onednn" if ONEDNN else "aten"
    linear: str = "blas"  # the Transformer families' nn.Linear layers (ChosenLinear): blas | onednn
    eval_linear: str = "blas"  # the same layers' forward without autograd (evaluation, validation)
    embedding_grads: str = "dense"  # dense | sparse (not timed: sparse wherever plain SGD trains word embeddings)
    how: str = "defaults"  # defaults | measured | cached | set ($ABLATE_KERNELS) | gpu

    def describe(self) -> str:
        """The row's `kernels` value, e.g. 'output blocks (logits onednn, ∂h onednn, ∂W blas); eval onednn-packed;
        lstm onednn; linear blas (eval blas); embedding grads dense; measured'."""
        output = "plain" if self.output == "plain" else \
            f"blocks (logits {self.logits}, ∂h {self.grad_h}, ∂W {self.grad_w})"
        return (f"output {output}; eval {self.eval_logits}; lstm {self.lstm}; linear {self.linear} (eval "
                f"{self.eval_linear}); embedding grads {self.embedding_grads}; {self.how}")


_DESCRIPTION = re.compile(
    r"output (?P<output>plain|blocks)"
    r"(?: \(logits (?P<logits>[\w-]+), ∂h (?P<grad_h>[\w-]+), ∂W (?P<grad_w>[\w-]+)\))?"
    r"; eval (?P<eval_logits>[\w-]+); lstm (?P<lstm>[\w-]+)"
    r"(?:; linear (?P<linear>[\w-]+)(?: \(eval (?P<eval_linear>[\w-]+)\))?)?"
    r"(?:; embedding grads (?P<embedding_grads>\w+))?(?:; [^;]*)?")


def described(text: str) -> dict[str, str] | None:
    """The fields of a row's `kernels` value (`Kernels.describe`, read back), or None if `text` is not one. Fields the
    description leaves out take the defaults — the blocks' products of `output plain`, which that path does not use,
    the Linear layers' in rows written before they were chosen, dense embedding gradients in rows written before
    sparse ones existed — but for evaluation's Linear layers in rows written before they were chosen apart, which
    ran training's (`linear`)."""
    match = _DESCRIPTION.fullmatch(text.strip())
    if match is None:
        return None
    found = match.groupdict()
    if found["eval_linear"] is None:
        found["eval_linear"] = found["linear"]
    defaults = Kernels()
    return {name: value or getattr(defaults, name) for name, value in found.items()}


def arithmetic(text: str) -> str:
    """A row's `kernels` value in today's form, without how the choice was made (measured or cached, the same
    arithmetic); a text that is not one, as it is."""
    fields = described(text)
    return text if fields is None else Kernels(**fields).describe().rsplit("; ", 1)[0]


_ACTIVE = [Kernels()]


def active() -> Kernels:
    """The kernels in use in this process."""
    return _ACTIVE[0]


def use(kernels: Kernels) -> None:
    _ACTIVE[0] = kernels


@contextlib.contextmanager
def using(kernels: Kernels) -> Iterator[None]:
    previous = active()
    use(kernels)
    try:
        yield
    finally:
        use(previous)


# ---------------------------------------------------------------------------------------------- the products


def _onednn_fits(*tensors: Tensor) -> bool:
    return ONEDNN and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) for t in tensors)


def column_major(weight: Tensor) -> Tensor:
    """The same values stored column-major: a [V, H] view of a contiguous [H, V] tensor. For the output layer's
    weight W: the blocked backward's ∂h = G W reads Wᵀ contiguous, and its `onednn-t` ∂W accumulator has this
    layout, so neither the weight nor its gradient is copied transposed each step (two single-threaded 10 MB copies
    at Li et al.'s PTB size, 8 % of a training step on an AMD EPYC of family 25). Every product reads either
    layout to the same values (tests/test_gradients.py)."""
    return weight.t().contiguous().t() if weight.dim() == 2 else weight


def is_column_major(t: Tensor) -> bool:
    """A matrix stored as `column_major` makes it (and not also row-major, as a single row or column is)."""
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


def product_nt(a: Tensor, b: Tensor, bias: Tensor | None = None, backend: str = "blas") -> Tensor:
    """a @ bᵀ (+ bias): a [M, K], b [N, K] row- or column-major (or b already packed by `packed_weight`)."""
    if backend.startswith("onednn") and (b.is_mkldnn or _onednn_fits(a, b)):
        b = b if b.is_mkldnn or is_column_major(b) else b.contiguous()  # oneDNN reads a column-major b
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b, bias, "none", [], "")
    return F.linear(a, b, bias)


def packed_weight(weight: Tensor, rows: int, backend: str) -> Tensor:
    """The weight reordered once into oneDNN's blocked layout for products of `rows` rows (backend
    onednn-packed; about 1.2× faster products on the AMD EPYC), else the weight itself."""
    if backend == "onednn-packed" and _onednn_fits(weight) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    return weight


def grad_h_product(g: Tensor, weight: Tensor, weight_t: Tensor | None, backend: str) -> Tensor:
    """G W [P, H] for G [P, V], W [V, H]. `onednn` takes Wᵀ [H, V] made contiguous once (`weight_t`);
    `onednn-view` hands oneDNN the transposed view itself (on the AMD EPYC 12.7 ms where the copy and product
    took 25.2 ms, [368, 10002] × [10002, 256])."""
    if backend == "onednn" and weight_t is not None and _onednn_fits(g, weight_t):
        return product_nt(g, weight_t, backend="onednn")
    if backend == "onednn-view" and _onednn_fits(g, weight):
        return torch.ops.mkldnn._linear_pointwise(g.contiguous(), weight.t(), None, "none", [], "")
    return g @ weight


def grad_w_accumulator(weight: Tensor, backend: str) -> Tensor:
    """Zeros [V, H] in fp32 to accumulate ∂W into: for `onednn-t` the transposed view of a contiguous [H, V]
    buffer, so each block adds hᵀ G (oneDNN reads G through a strided view: 5.4–6.4 ms where copying Gᵀ and
    multiplying took 9.4–9.6 ms on the AMD EPYC, 368 rows of a 10k vocabulary)."""
    if backend == "onednn-t":
        return torch.zeros(weight.shape[1], weight.shape[0], dtype=torch.float32, device=weight.device).t()
    return torch.zeros_like(weight, dtype=torch.float32)


def add_grad_w_product(out: Tensor, g: Tensor, h: Tensor, backend: str) -> None:
    """out += Gᵀ h [V, H] for G [P, V], h [P, H] (out fp32 from grad_w_accumulator; the product in the inputs'
    dtype)."""
    if backend == "onednn-t" and _onednn_fits(g, h) and out.t().is_contiguous():
        out.t().add_(torch.ops.mkldnn._linear_pointwise(h.t().contiguous(), g.t(), None, "none", [], ""))
    elif backend.startswith("onednn") and _onednn_fits(g, h):
        out += product_nt(g.t(), h.t(), backend="onednn")
    elif out.dtype == g.dtype == h.dtype:
        out.addmm_(g.t(), h)
    else:
        out += g.t() @ h


@contextlib.contextmanager
def lstm_backend(backend: str | None = None) -> Iterator[None]:
    """Run the LSTMs inside through `backend` (default: the active choice). `aten` turns oneDNN off for the call."""
    if (backend or active().lstm) == "aten" and ONEDNN and torch._C._get_mkldnn_enabled():
        torch._C._set_mkldnn_enabled(False)  # (torch.backends.mkldnn.flags would warn about TF32 on every call)
        try:
            yield
        finally:
            torch._C._set_mkldnn_enabled(True)
    else:
        yield


class _ChosenLinear(torch.autograd.Function):
    """x Wᵀ + b with the forward product and both backward products (∂x = g W, ∂W = gᵀ x) through `backend`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.backend, ctx.has_bias = backend, bias is not None
        return product_nt(x, weight, bias, backend)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            weight_t = weight.t().contiguous() if ctx.backend == "onednn" else None
            grad_x = grad_h_product(grad, weight, weight_t, ctx.backend)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            add_grad_w_product(grad_w, grad, x, ctx.backend)
            grad_w = grad_w.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, backend: str | None = None) -> Tensor:
    """F.linear through the chosen backend (default: the active choice's `linear`, or its `eval_linear` where
    autograd is off — evaluation's forward-only products have other shapes and, in bf16 runs, another dtype)."""
    backend = backend or (active().linear if torch.is_grad_enabled() else active().eval_linear)
    if backend != "onednn" or not _onednn_fits(x, weight) or x.dtype != torch.float32 \
            or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    return _ChosenLinear.apply(flat, weight, bias, backend).view(*x.shape[:-1], weight.shape[0])


def linear_relu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """relu(x Wᵀ + b); in evaluation (fp32, no autograd) with `eval_linear` onednn the ReLU is the oneDNN
    product's post-op, so the [N, d_ff] activation is written once instead of written, read and written again."""
    if torch.is_grad_enabled() or active().eval_linear != "onednn" or not _onednn_fits(x, weight) \
            or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
        return F.relu(linear(x, weight, bias))
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, weight.contiguous(), bias, "relu", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class ChosenLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose product runs through the chosen backend."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def chosen_linears(module: nn.Module) -> int:
    """Make every plain nn.Linear inside `module` a ChosenLinear (its class swapped: parameters, ties and hooks
    stay); how many were."""
    swapped = 0
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = ChosenLinear
            swapped += 1
    return swapped
