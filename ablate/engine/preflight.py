"""What can be known before training: does this machine have what a valid config names?

A config that validates (ablate.core.config) can still be unrunnable here: a data folder or split file that is not
there, a CUDA device the machine lacks, a model or tokenizer folder that does not exist (or, offline, a hub name
not in the local cache), a $ABLATE_KERNELS setting that names no kernel. `ablate validate`, `ablate run` and
`ablate sweep` call `check_runnable` before anything is written, so such a config fails in one line at once instead
of writing a failed row after start-up.
Study files themselves stay machine-independent (ablate.sweep.study does not call this).
"""

from __future__ import annotations

import os
from pathlib import Path

from ablate.core.config import LOCAL_LOADERS, ConfigError, DataConfig, ModelSection, RunConfig
from ablate.core.sources import resolve_source


def check_device(name: str) -> str | None:
    """Why `train.device` cannot be used here (None when it can)."""
    if name in ("auto", "cpu"):
        return None
    import torch

    if name == "mps":
        available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if available else "mps is not available on this machine; use cpu or auto"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if count == 0:
        return f"{name} is not available: torch sees no CUDA device here; use cpu or auto"
    if index >= count:
        return f"{name} is not available: torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
    return None


def check_data(data: DataConfig) -> str | None:
    """Why the corpus a data config names cannot be read here (None when it can)."""
    if data.vocab_file is not None:
        vocab = Path(data.vocab_file)
        if not vocab.is_file():
            return f"data.vocab_file: {vocab} does not exist"
        reason = _text_file_reason(vocab)
        if reason:
            return f"data.vocab_file: {vocab} {reason}"
    if data.name in ("ptb", "yahoo", "yelp", "snli", "lines"):
        from ablate.data.corpus import SPLITS, find_split_file

        folder = Path(data.path or "")
        if not folder.is_dir():
            what = "is a file" if folder.is_file() else "does not exist"
            return f"data.path: {folder} {what}; give the folder holding the split files"
        for split in SPLITS:
            if split == "valid" and data.valid_fraction is not None:
                continue  # carved from train
            try:
                path = find_split_file(folder, split, data.name, data.files)
            except ConfigError as error:
                return str(error)
            reason = _text_file_reason(path)
            if reason:
                return f"data.path: {path} {reason}"
    if data.name == "hf":
        for split, file in (data.hf_data_files or {}).items():
            if "://" not in file and not any(c in file for c in "*?[") and not Path(file).is_file():
                return f"data.hf_data_files.{split}: {file} does not exist"
        if data.hf_name not in LOCAL_LOADERS and not Path(data.hf_name or "").exists() and _offline():
            return _cached_dataset_reason(data)
    return None


def _text_file_reason(path: Path, probe_bytes: int = 1 << 20) -> str | None:
    """Why a split file cannot be a corpus: empty, or not UTF-8 text in its first MB."""
    if path.stat().st_size == 0:
        return "is empty"
    with path.open("rb") as handle:
        head = handle.read(probe_bytes)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if len(head) < probe_bytes or error.start < len(head) - 4:  # not merely a character cut by the probe
            return f"is not UTF-8 text (byte {error.start}); convert it to UTF-8"
    return None


def _offline(*variables: str) -> bool:
    """Whether any of the Hugging Face offline switches is on (default: the hub's and datasets')."""
    names = variables or ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in names)


def _cached_dataset_reason(data: DataConfig) -> str | None:
    """Offline, a hub dataset must already be in the local `datasets` cache."""
    import datasets

    try:
        datasets.load_dataset_builder(data.hf_name, data.hf_config)
    except Exception as error:  # noqa: BLE001 - offline misses surface as ConnectionError or FileNotFoundError
        first = " ".join(str(error).split())[:120]
        return (f"data.hf_name: {data.hf_name!r} is not in the local datasets cache and the hub is offline "
                f"({first}); run once with internet or give local files")
    return None


def _hub_reason(key: str, name: str, needs: tuple[str, ...]) -> str | None:
    """A folder must exist and hold one of `needs`; offline, a hub name must already be in the local cache."""
    folder = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or folder.exists():
        if not folder.is_dir():
            return f"{key}: {name} does not exist" if not folder.exists() else f"{key}: {name} is not a folder"
        if not any((folder / file).exists() for file in needs):
            return f"{key}: {name} holds no {needs[0]} (or the like); give a folder saved with save_pretrained"
        return None
    if not _offline("HF_HUB_OFFLINE"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(name, file) for file in ("config.json", "tokenizer_config.json")]
    except Exception:  # noqa: BLE001 - not a valid repo name either
        return f"{key}: {name!r} is neither a local folder nor a valid hub name"
    if any(isinstance(path, str) for path in cached):
        return None
    return (f"{key}: {name!r} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1; "
            "give a folder or download it once with internet")


def check_model(model: ModelSection) -> str | None:
    """Why a model's pretrained weights or tokenizer cannot be found here (None when they can)."""
    sources = list(model.pretrained_sources())
    pretrained, tokenizer = getattr(model, "pretrained", None), getattr(model, "tokenizer", None)
    if pretrained:
        sources.insert(0, ("model.pretrained", pretrained, ("config.json",)))
    if tokenizer and tokenizer != "train":
        sources.append(("model.tokenizer", tokenizer, TOKENIZER_FILES))
    for key, name, needs in sources:
        try:
            reason = _hub_reason(key, resolve_source(key, name), needs)
        except ConfigError as error:  # a `package:` source whose package is not installed
            reason = str(error)
        if reason:
            return reason
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "vocab.txt",
                   "sentencepiece.bpe.model")


def check_kernel_setting() -> None:
    """Raise a one-line ConfigError when $ABLATE_KERNELS is set to something ablate.models.kernel_choice refuses
    (before a run or a sweep writes anything, instead of a failed row per cell)."""
    from ablate.models.kernel_choice import env_setting

    try:
        env_setting()
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_runnable(config: RunConfig, source: str) -> None:
    """Raise a one-line ConfigError naming `source` when this machine cannot run the config."""
    check_kernel_setting()
    device = check_device(config.train.device)
    if device:
        raise ConfigError(f"{source}: train.device: {device}")
    reason = check_data(config.data) or check_model(config.model)
    if reason:
        raise ConfigError(f"{source}: {reason}")


def check_configs_runnable(labelled: list[tuple[str, RunConfig]]) -> None:
    """check_runnable for many configs (a study's cells), each distinct device/data/model checked once."""
    seen: set[str] = set()
    for source, config in labelled:
        key = repr((config.train.device, config.data.model_dump(mode="json"), config.model.model_dump(mode="json")))
        if key not in seen:
            seen.add(key)
            check_runnable(config, source)
