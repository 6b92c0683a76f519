"""Which CPU kernels run the heavy products: timed on the model's own shapes, the fastest kept, the choice recorded.

The fastest way to run a product differs from CPU to CPU: on the AMD EPYC development machine MKL's fp32 GEMM ran
the output layer's products at half oneDNN's rate, while oneDNN's ∂W product (which needs a transposed copy) lost
to MKL's in bf16; an Intel Xeon ranks them otherwise. So nothing is fixed by vendor: before training, ablate times
the candidates on the shapes the run will use (well under a second), keeps the answer in a user cache per CPU
model, torch version, thread count and shape (`kernel_cache_path()`, so a machine measures once), and records the
choice in each result row (`kernels`). On GPUs nothing is timed: the output layer is the plain computation.

The candidates (every one computes the same values: tests/test_kernels.py):
- the output layer in training: `plain` (one logits block, log-softmax and NLL by autograd) or `blocks`
  (ablate.models.output_layer) whose three products — logits h Wᵀ, ∂h = G W, ∂W = Gᵀ h — each go through `blas`
  (torch's default: MKL on x86 builds) or `onednn` (oneDNN's linear primitive);
- the output layer in evaluation: its logits through `blas`, `onednn`, or `onednn-packed` (the weight reordered
  once into oneDNN's blocked layout);
- the LSTMs: `onednn` (oneDNN's RNN primitive: PyTorch's own choice on CPUs with mkldnn on) or `aten` (PyTorch's
  cell loop over MKL products).
$ABLATE_KERNELS overrides the choice: `default` (no timing: the defaults below), or `name=value,…` (e.g.
`lstm=aten,grad_w=blas`; the rest measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

KERNELS_ENV = "ABLATE_KERNELS"
CACHE_ENV = "ABLATE_KERNEL_CACHE"
PRODUCT_BACKENDS = ("blas", "onednn")
EVAL_BACKENDS = ("blas", "onednn", "onednn-packed")
LSTM_BACKENDS = ("onednn", "aten")


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
    how: str = "defaults"  # defaults | measured | cached | set ($ABLATE_KERNELS) | gpu

    def describe(self) -> str:
        """The row's `kernels` value, e.g. 'output blocks (logits onednn, ∂h onednn, ∂W blas); eval onednn-packed;
        lstm onednn; measured'."""
        output = "plain" if self.output == "plain" else \
            f"blocks (logits {self.logits}, ∂h {self.grad_h}, ∂W {self.grad_w})"
        return f"output {output}; eval {self.eval_logits}; lstm {self.lstm}; {self.how}"


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


def product_nt(a: Tensor, b: Tensor, bias: Tensor | None = None, backend: str = "blas") -> Tensor:
    """a @ bᵀ (+ bias): a [M, K], b [N, K] (or b already packed by `packed_weight`)."""
    if backend.startswith("onednn") and (b.is_mkldnn or _onednn_fits(a, b)):
        b = b if b.is_mkldnn else b.contiguous()
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b, bias, "none", [], "")
    return F.linear(a, b, bias)


def packed_weight(weight: Tensor, rows: int, backend: str) -> Tensor:
    """The weight reordered once into oneDNN's blocked layout for products of `rows` rows (backend
    onednn-packed; about 1.2× faster products on the AMD EPYC), else the weight itself."""
    if backend == "onednn-packed" and _onednn_fits(weight) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    return weight


def grad_h_product(g: Tensor, weight: Tensor, weight_t: Tensor | None, backend: str) -> Tensor:
    """G W [P, H] for G [P, V], W [V, H]; oneDNN takes Wᵀ [H, V] contiguous (`weight_t`)."""
    if backend == "onednn" and weight_t is not None and _onednn_fits(g, weight_t):
        return product_nt(g, weight_t, backend="onednn")
    return g @ weight


def add_grad_w_product(out: Tensor, g: Tensor, h: Tensor, backend: str) -> None:
    """out += Gᵀ h [V, H] for G [P, V], h [P, H] (out fp32; the product in the inputs' dtype)."""
    if backend == "onednn" and _onednn_fits(g, h):
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


# ---------------------------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Shapes:
    """What the run will multiply: the output layer's weight [vocab, hidden], the positions of a training step and
    of an output block, the LSTMs (input, hidden, batch, length), and the training dtype."""

    vocab: int
    hidden: int
    positions: int
    block: int
    lstms: tuple[tuple[int, int, int, int], ...] = ()
    dtype: str = "fp32"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def kernel_cache_path() -> Path:
    """$ABLATE_KERNEL_CACHE, else $XDG_CACHE_HOME/ablate/kernels.json, else ~/.cache/ablate/kernels.json."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ablate" / "kernels.json"


def cache_key(shapes: Shapes, threads: int) -> str:
    machine = {"cpu": cpu_model(), "torch": torch.__version__, "threads": threads, **dataclasses.asdict(shapes)}
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again (the cache is ours, and only a cache)


def _write_cache(path: Path, key: str, choice: dict[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = choice
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only home: the choice is measured again next time


Timer = Callable[[str, Callable[[], Any]], float]


def median_seconds(label: str, fn: Callable[[], Any], repeats: int = 5, warmup: int = 2) -> float:
    """The median wall time of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_setting(text: str) -> dict[str, str]:
    """$ABLATE_KERNELS `name=value,…` → {field: value}; a clear error for an unknown name or value."""
    allowed = {"output": ("blocks", "plain"), "logits": PRODUCT_BACKENDS, "grad_h": PRODUCT_BACKENDS,
               "grad_w": PRODUCT_BACKENDS, "eval_logits": EVAL_BACKENDS, "lstm": LSTM_BACKENDS}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in allowed or value not in allowed[name]:
            raise ValueError(f"${KERNELS_ENV}: {part!r} is not one of "
                             + "; ".join(f"{k}={'|'.join(v)}" for k, v in allowed.items()) + " (or 'default')")
        out[name] = value
    return out


def choose(shapes: Shapes, device: torch.device, threads: int | None = None, timer: Timer = median_seconds,
           cache: Path | None = None) -> Kernels:
    """The fastest kernels for these shapes on this machine (module docstring); `timer(label, fn)` times one
    candidate (replaceable in tests)."""
    if device.type != "cpu":
        return Kernels(output="plain", logits="blas", grad_h="blas", grad_w="blas", eval_logits="blas",
                       lstm="onednn", how="gpu")
    setting = os.environ.get(KERNELS_ENV, "").strip()
    if setting == "default":
        return Kernels()
    forced = parse_setting(setting)
    threads = threads or torch.get_num_threads()
    key = cache_key(shapes, threads)
    path = cache if cache is not None else kernel_cache_path()
    cached = _read_cache(path).get(key)
    fields = {f.name for f in dataclasses.fields(Kernels)} - {"how"}
    if isinstance(cached, dict) and set(cached) == fields:
        try:
            parse_setting(",".join(f"{k}={v}" for k, v in cached.items()))
            return Kernels(**{**cached, **forced}, how="cached" if not forced else "set")
        except ValueError:
            pass  # a cache from another version of ablate: measure again
    choice = measure(shapes, timer, forced)
    _write_cache(path, key, {k: v for k, v in dataclasses.asdict(choice).items() if k != "how"})
    return dataclasses.replace(choice, how="set" if forced else "measured")


def measure(shapes: Shapes, timer: Timer = median_seconds, forced: dict[str, str] | None = None) -> Kernels:
    """Time every candidate on `shapes` (a fixed seed; values do not change what a product costs)."""
    forced = forced or {}
    dtype = torch.bfloat16 if shapes.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows = min(shapes.block, shapes.positions)
    weight = (torch.randn(shapes.vocab, shapes.hidden, generator=gen) * 0.05).to(dtype)
    weight_t = weight.t().contiguous()
    h = torch.randn(rows, shapes.hidden, generator=gen).to(dtype)
    g = torch.randn(rows, shapes.vocab, generator=gen).softmax(-1).to(dtype)
    grad_w = torch.zeros(shapes.vocab, shapes.hidden)
    backends = PRODUCT_BACKENDS if ONEDNN else ("blas",)

    def fastest(name: str, candidates: dict[str, Callable[[], Any]]) -> str:
        if name in forced:
            return forced[name]
        times = {}
        for label, fn in candidates.items():
            try:
                times[label] = timer(f"{name}:{label}", fn)
            except (RuntimeError, NotImplementedError):  # this build or CPU lacks it: not a candidate here
                continue
        if not times:
            raise RuntimeError(f"no {name} kernel runs on this machine ({', '.join(candidates)} all failed)")
        return min(times, key=times.get)

    logits = fastest("logits", {b: (lambda b=b: product_nt(h, weight, backend=b)) for b in backends})
    grad_h = fastest("grad_h", {b: (lambda b=b: grad_h_product(g, weight, weight_t, b)) for b in backends})
    grad_w_choice = fastest("grad_w", {b: (lambda b=b: add_grad_w_product(grad_w, g, h, b)) for b in backends})
    eval_weight = {b: packed_weight(weight.float(), shapes.block, b) for b in EVAL_BACKENDS if ONEDNN or b == "blas"}
    h32 = h.float()
    eval_logits = fastest("eval_logits", {b: (lambda b=b, w=w: product_nt(h32, w, backend=b))
                                          for b, w in eval_weight.items()})
    blocks = Kernels(logits=logits, grad_h=grad_h, grad_w=grad_w_choice)
    output = fastest("output", {"blocks": lambda: _output_step(shapes, dtype, blocks),
                                "plain": lambda: _output_step(shapes, dtype, dataclasses.replace(blocks, output="plain"))})
    torch.manual_seed(2)
    lstms = [(torch.nn.LSTM(size_in, size_hidden, batch_first=True), torch.randn(batch, length, size_in))
             for size_in, size_hidden, batch, length in shapes.lstms]
    lstm = fastest("lstm", {b: (lambda b=b: _lstm_step(lstms, b, shapes.dtype)) for b in LSTM_BACKENDS
                            if ONEDNN or b == "aten"}) if lstms else Kernels().lstm
    return Kernels(output=output, logits=logits, grad_h=grad_h, grad_w=grad_w_choice, eval_logits=eval_logits,
                   lstm=lstm, how="measured")


def _output_step(shapes: Shapes, dtype: torch.dtype, kernels: Kernels) -> None:
    """One training step of the output layer: forward and backward over `positions` positions."""
    from ablate.models.output_layer import token_log_probs

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(shapes.positions, shapes.hidden, generator=gen, requires_grad=True)
    weight = (torch.randn(shapes.vocab, shapes.hidden, generator=gen) * 0.05).requires_grad_(True)
    targets = torch.randint(0, shapes.vocab, (shapes.positions,), generator=gen)
    with using(kernels), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        token_log_probs(hidden, weight, None, targets, shapes.block).sum().backward()


def _lstm_step(lstms: list[tuple[torch.nn.LSTM, Tensor]], backend: str, dtype: str) -> None:
    """Forward and backward of the run's LSTMs (built at their input and hidden sizes, on batch × length inputs)."""
    with lstm_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for lstm, inputs in lstms:
            out, _ = lstm(inputs)
            out.float().sum().backward()


def shapes_of(model: torch.nn.Module, batch_size: int, mean_tokens: float, precision: str = "fp32") -> Shapes:
    """The Shapes of a TextVAE's training step: its output layer (`model.output_layer()`), its LSTMs, a batch of
    `batch_size` sentences of `mean_tokens` decoder positions each."""
    from ablate.models.base import output_block  # (base imports this module's users; imported here, not above)

    weight, _ = model.output_layer()  # type: ignore[operator]
    length = max(1, round(mean_tokens))
    lstms = tuple((m.input_size, m.hidden_size, batch_size, length) for m in model.modules()
                  if isinstance(m, torch.nn.LSTM))
    return Shapes(vocab=weight.shape[0], hidden=weight.shape[1], positions=max(1, batch_size * length),
                  block=output_block(weight.shape[0]), lstms=lstms, dtype=precision)
