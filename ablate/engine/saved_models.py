"""Reading trained models back: a run's saved model file (`load_run`: rebuilt from its config, so the corpus must
be there) or an `ablate export` folder (`load_vae`: self-contained). Both load data only: tensors and plain values
(weights_only pickles, safetensors), never code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


def model_file(run: str | Path) -> Path:
    """The .model.pt of a run given as the model file itself or as its result row (rows/<stem>.parquet)."""
    from ablate.core.config import ConfigError
    from ablate.results.layout import MODEL_SUFFIX, ROW_SUFFIX, RunFiles

    path = Path(run)
    if path.is_dir():
        raise ConfigError(f"{run}: a folder, but not an export (no config.json and model.safetensors); give an "
                          "`ablate export` folder or a results/<study>/models/<stem>.model.pt")
    if not path.name.endswith((MODEL_SUFFIX, ROW_SUFFIX)):
        raise ConfigError(f"{run}: not a run's file; give a results/<study>/models/<stem>.model.pt, its "
                          "rows/<stem>.parquet or an `ablate export` folder")
    model = RunFiles.of(path).model
    if not model.exists():
        raise ConfigError(f"{run}: no saved model at {model} (runs write it unless save_model is off); give a "
                          "results/<study>/models/<stem>.model.pt or its rows/<stem>.parquet")
    return model


def load_run(run: str | Path, device: str | torch.device = "cpu"):
    """(config, prepared, model in eval mode) of a saved run."""
    from ablate.core.config import ConfigError
    from ablate.core.config_reading import build_config
    from ablate.results.safe_files import load_tensors
    from ablate.engine.preflight import check_data, check_model
    from ablate.engine.run import build, prepare, resolve_device

    path = model_file(run)
    payload = load_tensors(path, "saved model")
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise ConfigError(f"{path}: not a saved model (expected the keys 'config' and 'model')")
    config = build_config(payload["config"], str(path))
    reason = check_data(config.data) or check_model(config.model)
    if reason:
        raise ConfigError(f"{path}: the model's corpus or tokenizer is not here: {reason}")
    prepared = prepare(config)
    model = build(config, prepared)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ConfigError(f"{path}: the saved weights do not fit the model its config builds "
                          f"({' '.join(str(error).split())[:160]})") from None
    device = resolve_device(str(device))
    return config, prepared, model.to(device).eval()


def is_export(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


MAX_CONFIG_BYTES = 1 << 20  # an export's config.json is a few KB
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def load_vae(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(run config, tokenizer, model in eval mode) of an export folder; needs neither the corpus nor the original
    pretrained model.

    The folder is data (issue 27): config.json is validated like a run config, the tokenizer record read as data,
    the safetensors header parsed and every tensor's shape checked against the model the config builds — built
    first on the meta device, so nothing is allocated — and a model larger than this machine's free memory is
    refused; each problem is one line naming the file. (Families with Hugging Face parts, which `from_pretrained`
    builds from their own exported config, are checked by the header and by loading.)"""
    from safetensors.torch import load_model

    from ablate.core.config import ConfigError
    from ablate.engine.run import resolve_device

    folder = Path(folder)
    if not is_export(folder):
        raise ConfigError(f"{folder}: not an export folder (config.json and model.safetensors); "
                          "write one with `ablate export RUN --out DIR`")
    config = _export_config(folder / "config.json")
    tokenizer = _export_tokenizer(folder / "tokenizer")
    weights = folder / "model.safetensors"
    header = safetensors_header(weights)
    try:
        with torch.device("meta"):
            skeleton = _build_exported(config, folder, tokenizer)
    except RuntimeError:  # Hugging Face parts (from_pretrained refuses a meta context) size themselves
        skeleton = None
    if skeleton is not None:
        _check_weights_fit(weights, header, skeleton)
    model = _build_exported(config, folder, tokenizer)
    try:
        load_model(model, str(weights))
    except (RuntimeError, ValueError, OSError) as error:
        raise ConfigError(f"{weights}: the weights do not fit the model config.json builds "
                          f"({' '.join(str(error).split())[:160]})") from None
    return config, tokenizer, model.to(resolve_device(str(device))).eval()


def _export_config(path: Path) -> Any:
    from ablate.core.config import ConfigError
    from ablate.core.config_reading import build_config

    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; an export's config is a few KB")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable JSON config ({' '.join(str(error).split())[:120]}); "
                          "re-export the run with `ablate export`") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run config is a JSON object (got {type(raw).__name__})")
    return build_config(raw, str(path))


def _export_tokenizer(folder: Path) -> Any:
    from ablate.core.config import ConfigError
    from ablate.data.tokenize import load_tokenizer

    try:
        return load_tokenizer(folder)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ConfigError(f"{folder}: not a tokenizer ablate can read ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:120]}); re-export the run with `ablate export`") from None


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a safetensors file, read and checked without loading a tensor: the 8-byte header
    length, the JSON header, and each tensor's dtype, shape and byte range inside the file (the format's spec,
    huggingface/safetensors README)."""
    from ablate.core.config import ConfigError

    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise ConfigError(f"{path}: not a safetensors file (a header of {length} bytes in a file of {size})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError):
            raise ConfigError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_bytes, out = size - 8 - length, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or not isinstance(
                offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
            raise ConfigError(f"{path}: tensor {str(name)[:60]!r}: a bad header entry (dtype, shape, data_offsets)")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ConfigError(f"{path}: tensor {str(name)[:60]!r}: its bytes [{begin}, {end}) do not hold a "
                              f"{dtype} tensor of shape {shape} inside the file")
        out[name] = (dtype, tuple(shape))
    return out


def _build_exported(config: Any, folder: Path, tokenizer: Any) -> Any:
    from ablate.models.build import build_model
    from ablate.techniques.base import posterior_transforms

    model = build_model(config.model.in_export(folder), tokenizer)  # the exported Hugging Face parts, not the hub's
    for module in posterior_transforms(config.techniques, model.nz):
        model.add_posterior_transform(module)
    return model


def _check_weights_fit(path: Path, header: dict[str, tuple[str, tuple[int, ...]]], skeleton: Any) -> None:
    """The model fits in free memory, and every tensor of the file names a tensor of the model with its shape."""
    from ablate.core.config import ConfigError

    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    needed = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    free = available_memory()
    if free is not None and needed > free:
        raise ConfigError(f"{path}: the model config.json builds needs {needed / 2**30:.1f} GiB, this machine has "
                          f"{free / 2**30:.1f} GiB free; load it on a larger machine")
    for name, (_, shape) in header.items():
        if name not in expected:
            raise ConfigError(f"{path}: tensor {name[:60]!r} is not part of the model config.json builds; the "
                              "weights and the config are from different runs")
        if shape != expected[name]:
            raise ConfigError(f"{path}: tensor {name[:60]!r} has shape {list(shape)}, the model config.json "
                              f"builds has {list(expected[name])}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def examples(folder: str | Path) -> list[str]:
    path = Path(folder) / "examples.txt"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
