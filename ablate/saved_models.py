"""Reading trained models back: a run's saved model file (`load_run`: rebuilt from its config, so the corpus must
be there) or an `ablate export` folder (`load_vae`: self-contained). Both load data only: tensors and plain values
(weights_only pickles, safetensors), never code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def model_file(run: str | Path) -> Path:
    """The .model.pt of a run given as the model file itself or as its result row (rows/<stem>.parquet)."""
    from ablate.config import ConfigError
    from ablate.layout import MODEL_SUFFIX, ROW_SUFFIX, RunFiles

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
    from ablate.config import ConfigError, build_config
    from ablate.outputs import load_tensors
    from ablate.preflight import check_data, check_model
    from ablate.run import build, prepare, resolve_device

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


def load_vae(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(run config, tokenizer, model in eval mode) of an export folder; needs neither the corpus nor the original
    pretrained model."""
    from safetensors.torch import load_model

    from ablate.config import ConfigError, build_config
    from ablate.data.tokenize import load_tokenizer
    from ablate.models.registry import build_model
    from ablate.run import resolve_device
    from ablate.techniques.registry import posterior_transforms

    folder = Path(folder)
    if not is_export(folder):
        raise ConfigError(f"{folder}: not an export folder (config.json and model.safetensors); "
                          "write one with `ablate export RUN --out DIR`")
    config = build_config(json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
    tokenizer = load_tokenizer(folder / "tokenizer")
    model = build_model(config.model.in_export(folder), tokenizer)  # the exported Hugging Face parts, not the hub's
    for module in posterior_transforms(config.techniques, model.nz):
        model.add_posterior_transform(module)
    load_model(model, str(folder / "model.safetensors"))
    return config, tokenizer, model.to(resolve_device(str(device))).eval()


def examples(folder: str | Path) -> list[str]:
    path = Path(folder) / "examples.txt"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
