"""Kernels chosen by measurement: the candidates timed on the run's own shapes, the fastest kept per machine.

The fastest way to run a product differs from CPU to CPU (ablate.models.kernels lists the candidates). Before
training, `choose` times them on the shapes the run will use (a second at a small model's shapes, ≈ 8 at Li et
al.'s PTB vocabulary), keeps the answer in a user cache per CPU model, torch version, thread count and shape
(`kernel_cache_path()`, so a machine measures once, one process at a time: a sweep's cells share one choice), and
the run records the choice in its row (`kernels`). On GPUs nothing is timed. $ABLATE_KERNELS overrides:
`default` (no timing: ablate's defaults), `name=value,…` (e.g. `lstm=aten,grad_w=blas`; the rest measured), or a
result row's `kernels` value copied whole (every field as that run had it: to repeat its arithmetic exactly, since
another choice rounds otherwise and training goes elsewhere from there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ablate.models.kernels import (EMBEDDING_GRADS, EVAL_BACKENDS, GRAD_H_BACKENDS, GRAD_W_BACKENDS,
                                   LSTM_BACKENDS, ONEDNN, PRODUCT_BACKENDS, ChosenLinear, Kernels,
                                   add_grad_w_product, column_major, described, grad_h_product,
                                   grad_w_accumulator, is_column_major, linear, lstm_backend, packed_weight,
                                   product_nt, using)
from ablate.models.output_layer import output_block, token_log_probs

KERNELS_ENV = "ABLATE_KERNELS"
UNCACHED = {"how", "embedding_grads"}  # not a property of the machine: how it was chosen; what the optimiser allows
CACHE_ENV = "ABLATE_KERNEL_CACHE"


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
    linears: tuple[tuple[int, int], ...] = ()  # (in, out) of the ChosenLinear layers, at `positions` rows
    eval_positions: int = 0  # rows of an evaluation pass's Linear products (fp32, no autograd)
    weight_columns: bool = False  # the output weight stored column-major (kernels.column_major; LSTM decoders)


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model numbers: a VM may name every AMD EPYC
    generation just "AMD EPYC" (Zen 4 is family 25, Zen 5 family 26), and their kernels' speeds differ."""
    info = _cpuinfo()
    if "model name" in info:
        numbers = ", ".join(f"{label} {info[key]}" for label, key in (("family", "cpu family"), ("model", "model"))
                            if key in info)
        return f"{info['model name']} ({numbers})" if numbers else info["model name"]
    import platform

    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")  # what kernel speeds hang on


def cpu_flags() -> list[str]:
    """The instruction-set extensions among ISA_FLAGS this CPU reports (part of the kernel cache's key)."""
    return [flag for flag in ISA_FLAGS if flag in _cpuinfo().get("flags", "").split()]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 in hardware: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX
    (elsewhere bf16 products are emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def kernel_cache_path() -> Path:
    """$ABLATE_KERNEL_CACHE, else $XDG_CACHE_HOME/ablate/kernels.json, else ~/.cache/ablate/kernels.json."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ablate" / "kernels.json"


def cache_key(shapes: Shapes, threads: int) -> str:
    machine = {"cpu": cpu_model(), "flags": cpu_flags(), "torch": torch.__version__, "threads": threads,
               **dataclasses.asdict(shapes),
               "candidates": [PRODUCT_BACKENDS, GRAD_H_BACKENDS, GRAD_W_BACKENDS, EVAL_BACKENDS, LSTM_BACKENDS]}
    # (a new candidate makes a new key: a choice cached before it existed is measured again)
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


Timer = Callable[[str, Callable[[], Any], float], float]  # (label, candidate, fastest so far) -> seconds


def median_seconds(label: str, fn: Callable[[], Any], best: float = math.inf, repeats: int = 5,
                   warmup: int = 2) -> float:
    """The median wall time of fn() over `repeats` calls after `warmup` calls; a candidate whose second warm-up
    call already took 3× `best` (the fastest so far) is not timed further (the Li PTB shapes in bf16: 4.5 → 2.0 s)."""
    for _ in range(warmup):
        started = time.perf_counter()
        fn()
        first = time.perf_counter() - started
    if first > 3 * best:
        return first
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_setting(text: str) -> dict[str, str]:
    """$ABLATE_KERNELS `name=value,…` → {field: value}; a clear error for an unknown name or value. A result row's
    `kernels` value, copied whole, sets every field as that run had them (to repeat the run's arithmetic exactly:
    the choice changes rounding, and rounding changes where training goes)."""
    allowed = {"output": ("blocks", "plain"), "logits": PRODUCT_BACKENDS, "grad_h": GRAD_H_BACKENDS,
               "grad_w": GRAD_W_BACKENDS, "eval_logits": EVAL_BACKENDS, "lstm": LSTM_BACKENDS,
               "linear": PRODUCT_BACKENDS, "eval_linear": PRODUCT_BACKENDS,
               "embedding_grads": EMBEDDING_GRADS}
    if text.strip().startswith("output "):  # a row's `kernels` value
        fields = described(text)
        if fields is None:
            raise ValueError(f"${KERNELS_ENV}: {text!r} is not a result row's `kernels` value (e.g. "
                             f"{Kernels().describe()!r}) nor name=value pairs")
        text = ",".join(f"{name}={value}" for name, value in fields.items())
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in allowed or value not in allowed[name]:
            raise ValueError(f"${KERNELS_ENV}: {part!r} is not one of "
                             + "; ".join(f"{k}={'|'.join(v)}" for k, v in allowed.items())
                             + " (or 'default', or a result row's `kernels` value)")
        out[name] = value
    return out


def env_setting() -> dict[str, str] | None:
    """$ABLATE_KERNELS read: None for `default` (no timing), else the fields it sets ({} when unset); ValueError
    when it names no kernel."""
    setting = os.environ.get(KERNELS_ENV, "").strip()
    return None if setting == "default" else parse_setting(setting)


def choose(shapes: Shapes, device: torch.device, threads: int | None = None, timer: Timer = median_seconds,
           cache: Path | None = None, embedding_grads: str = "dense") -> Kernels:
    """The fastest kernels for these shapes on this machine (module docstring); `timer(label, fn)` times one
    candidate (replaceable in tests). `embedding_grads`: what the run's optimiser allows (not timed, not cached);
    $ABLATE_KERNELS may set it too."""
    if device.type != "cpu":
        return Kernels(output="plain", logits="blas", grad_h="blas", grad_w="blas", eval_logits="blas",
                       lstm="onednn", linear="blas", eval_linear="blas", how="gpu")
    forced = env_setting()
    if forced is None:
        return Kernels()
    forced = {"embedding_grads": embedding_grads, **forced}
    threads = threads or torch.get_num_threads()
    key = cache_key(shapes, threads)
    path = cache if cache is not None else kernel_cache_path()
    found = _cached_choice(path, key, forced)
    if found is not None:
        return found
    with _measuring_alone(path):
        found = _cached_choice(path, key, forced)  # measured by another process while this one waited
        if found is not None:
            return found
        with torch.random.fork_rng(devices=[]):  # the candidates draw from torch's global generator: a run's
            choice = measure(shapes, timer, forced)  # random stream must not depend on whether it was cached
        _write_cache(path, key, {k: v for k, v in dataclasses.asdict(choice).items() if k not in UNCACHED})
    return dataclasses.replace(choice, how=_how(forced, "measured"))


def _cached_choice(path: Path, key: str, forced: dict[str, str]) -> Kernels | None:
    """The cached choice for `key` with `forced` on top, or None (absent, or written by another version)."""
    cached = _read_cache(path).get(key)
    fields = {f.name for f in dataclasses.fields(Kernels)} - UNCACHED
    if not isinstance(cached, dict) or set(cached) != fields:
        return None
    try:
        parse_setting(",".join(f"{k}={v}" for k, v in cached.items()))
    except ValueError:
        return None  # a cache from another version of ablate: measure again
    return Kernels(**{**cached, **forced}, how=_how(forced, "cached"))


def _how(forced: dict[str, str], otherwise: str) -> str:
    """`set` when $ABLATE_KERNELS set a timed field, else how the timed ones were found."""
    return "set" if set(forced) - UNCACHED else otherwise


@contextlib.contextmanager
def _measuring_alone(path: Path) -> Iterator[None]:
    """One process at a time measures for a cache file (`fcntl.flock` on `<cache>.lock`; the kernel releases it
    if its holder dies). A sweep's workers start together: without the lock each measured at once, on cores the
    others were timing on, and could choose differently, so a study's first cells ran other arithmetic than the
    rest (and a seed's training moves with the arithmetic: README.md). A lock that cannot be made (a read-only
    home) is done without."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{path}.lock", "a")
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure(shapes: Shapes, timer: Timer = median_seconds, forced: dict[str, str] | None = None) -> Kernels:
    """Time every candidate on `shapes` (a fixed seed; values do not change what a product costs)."""
    forced = forced or {}
    dtype = torch.bfloat16 if shapes.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows = min(shapes.block, shapes.positions)
    weight = _as_stored((torch.randn(shapes.vocab, shapes.hidden, generator=gen) * 0.05).to(dtype), shapes)
    h = torch.randn(rows, shapes.hidden, generator=gen).to(dtype)
    g = torch.randn(rows, shapes.vocab, generator=gen).softmax(-1).to(dtype)
    backends = PRODUCT_BACKENDS if ONEDNN else ("blas",)

    def fastest(name: str, candidates: dict[str, Callable[[], Any]]) -> str:
        if name in forced:
            return forced[name]
        times = {}
        for label, fn in candidates.items():
            try:
                times[label] = timer(f"{name}:{label}", fn, min(times.values(), default=math.inf))
            except (RuntimeError, NotImplementedError):  # this build or CPU lacks it: not a candidate here
                continue
        if not times:
            raise RuntimeError(f"no {name} kernel runs on this machine ({', '.join(candidates)} all failed)")
        return min(times, key=times.get)

    logits = fastest("logits", {b: (lambda b=b: product_nt(h, weight, backend=b)) for b in backends})
    grad_h = fastest("grad_h", {b: (lambda b=b: grad_h_product(g, weight, weight.t().contiguous()  # its copy, if any
                                                               if b == "onednn" else None, b))
                                for b in (GRAD_H_BACKENDS if ONEDNN else ("blas",))})
    accumulators = {b: grad_w_accumulator(weight, b) for b in (GRAD_W_BACKENDS if ONEDNN else ("blas",))}
    grad_w_choice = fastest("grad_w", {b: (lambda b=b: add_grad_w_product(accumulators[b], g, h, b))
                                       for b in accumulators})
    eval_weight = {b: packed_weight(weight.float(), shapes.block, b) for b in EVAL_BACKENDS if ONEDNN or b == "blas"}
    h32 = h.float()
    eval_logits = fastest("eval_logits", {b: (lambda b=b, w=w: product_nt(h32, w, backend=b))
                                          for b, w in eval_weight.items()})
    blocks = Kernels(logits=logits, grad_h=grad_h, grad_w=grad_w_choice)
    plain = dataclasses.replace(blocks, output="plain")
    output = fastest("output", {"blocks": lambda: _output_step(shapes, dtype, blocks),
                                "plain": lambda: _output_step(shapes, dtype, plain)})
    torch.manual_seed(2)
    lstms = [(torch.nn.LSTM(size_in, size_hidden, batch_first=True), torch.randn(batch, length, size_in))
             for size_in, size_hidden, batch, length in shapes.lstms]
    lstm = fastest("lstm", {b: (lambda b=b: _lstm_step(lstms, b, shapes.dtype)) for b in LSTM_BACKENDS
                            if ONEDNN or b == "aten"}) if lstms else Kernels().lstm
    layers = [(torch.nn.Linear(size_in, size_out), torch.randn(shapes.positions, size_in, requires_grad=True))
              for size_in, size_out in shapes.linears]
    linear_choice = fastest("linear", {b: (lambda b=b: _linear_step(layers, b)) for b in backends}) \
        if layers and shapes.dtype == "fp32" else Kernels().linear
    eval_inputs = [(layer, torch.randn(max(1, shapes.eval_positions), layer.in_features)) for layer, _ in layers]
    eval_linear = fastest("eval_linear", {b: (lambda b=b: _linear_forward(eval_inputs, b)) for b in backends}) \
        if layers and shapes.eval_positions else Kernels().eval_linear
    return Kernels(output=output, logits=logits, grad_h=grad_h, grad_w=grad_w_choice, eval_logits=eval_logits,
                   lstm=lstm, linear=linear_choice, eval_linear=eval_linear,
                   embedding_grads=forced.get("embedding_grads", Kernels.embedding_grads), how="measured")


def _linear_step(layers: list[tuple[torch.nn.Linear, Tensor]], backend: str) -> None:
    """Forward and backward of one layer of each of the model's Linear shapes."""
    for layer, inputs in layers:
        linear(inputs, layer.weight, layer.bias, backend).sum().backward()


@torch.no_grad()
def _linear_forward(layers: list[tuple[torch.nn.Linear, Tensor]], backend: str) -> None:
    """The forward of one layer of each Linear shape, fp32 and without autograd, as evaluation runs them."""
    for layer, inputs in layers:
        linear(inputs, layer.weight, layer.bias, backend)


def _output_step(shapes: Shapes, dtype: torch.dtype, kernels: Kernels) -> None:
    """One training step of the output layer: forward and backward over `positions` positions."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(shapes.positions, shapes.hidden, generator=gen, requires_grad=True)
    weight = _as_stored(torch.randn(shapes.vocab, shapes.hidden, generator=gen) * 0.05, shapes).requires_grad_(True)
    targets = torch.randint(0, shapes.vocab, (shapes.positions,), generator=gen)
    with using(kernels), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        token_log_probs(hidden, weight, None, targets, shapes.block).sum().backward()


def _as_stored(weight: Tensor, shapes: Shapes) -> Tensor:
    """The output weight in the model's layout (the layout decides which products copy)."""
    return column_major(weight) if shapes.weight_columns else weight


def _lstm_step(lstms: list[tuple[torch.nn.LSTM, Tensor]], backend: str, dtype: str) -> None:
    """Forward and backward of the run's LSTMs (built at their input and hidden sizes, on batch × length inputs)."""
    with lstm_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for lstm, inputs in lstms:
            out, _ = lstm(inputs)
            out.float().sum().backward()


def shapes_of(model: torch.nn.Module, batch_size: int, mean_tokens: float, precision: str = "fp32",
              eval_pairs: int = 0) -> Shapes:
    """The Shapes of a TextVAE's training step: its output layer (`model.output_layer()`), its LSTMs, a batch of
    `batch_size` sentences of `mean_tokens` decoder positions each; with `eval_pairs`, an evaluation pass of that
    many (sentence, sample) pairs through its Linear layers."""
    weight, _ = model.output_layer()  # type: ignore[operator]
    length = max(1, round(mean_tokens))
    lstms = tuple((m.input_size, m.hidden_size, batch_size, length) for m in model.modules()
                  if isinstance(m, torch.nn.LSTM))
    linears = tuple(sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, ChosenLinear)}))
    return Shapes(vocab=weight.shape[0], hidden=weight.shape[1], positions=max(1, batch_size * length),
                  block=output_block(weight.shape[0]), lstms=lstms, dtype=precision, linears=linears,
                  eval_positions=eval_pairs * length if linears else 0,
                  weight_columns=is_column_major(weight))
