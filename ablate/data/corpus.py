"""A corpus is named splits of texts (plus ground-truth factors when known), loaded from one of several sources.

Sources: the embedded synthetic corpus; line-per-example files in the literature's formats (Mikolov's PTB,
Yang et al. 2017 Yahoo/Yelp with an optional leading `label<TAB>` column, SNLI sentences, plain line files);
and Hugging Face `datasets` by name (or a local loader such as 'text' with data_files).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ablate.core.config import ConfigError, DataConfig

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"valid": ("validation", "valid", "val", "dev"), "test": ("test", "eval")}

# Canonical md5s of Mikolov's PTB files (as distributed with the Mikolov RNNLM toolkit / the tensorflow tutorial).
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}

# File names tried for each split, per format (the first that exists wins).
FILE_CANDIDATES = {
    "ptb": {"train": ["ptb.train.txt"], "valid": ["ptb.valid.txt"], "test": ["ptb.test.txt"]},
    "yahoo": {"train": ["train.txt", "yahoo.train.txt"], "valid": ["valid.txt", "val.txt", "yahoo.valid.txt"],
              "test": ["test.txt", "yahoo.test.txt"]},
    "yelp": {"train": ["train.txt", "yelp.train.txt"], "valid": ["valid.txt", "val.txt", "yelp.valid.txt"],
             "test": ["test.txt", "yelp.test.txt"]},
    "snli": {"train": ["train.txt", "snli_1.0_train.jsonl", "snli_1.0_train.txt"],
             "valid": ["valid.txt", "dev.txt", "snli_1.0_dev.jsonl", "snli_1.0_dev.txt"],
             "test": ["test.txt", "snli_1.0_test.jsonl", "snli_1.0_test.txt"]},
    "lines": {"train": ["train.txt"], "valid": ["valid.txt", "val.txt", "dev.txt"], "test": ["test.txt"]},
}


@dataclass
class Corpus:
    """Texts per split; factors[split][name] = class id per text when the ground truth is known."""

    name: str
    texts: dict[str, list[str]]
    factors: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    factor_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_split_file(directory: Path, split: str, fmt: str, files: dict[str, str] | None) -> Path:
    if files and split in files:
        path = directory / files[split]
        if not path.exists():
            raise ConfigError(f"data.files.{split}: {path} does not exist")
        return path
    for candidate in FILE_CANDIDATES[fmt][split]:
        if (directory / candidate).exists():
            return directory / candidate
    tried = ", ".join(FILE_CANDIDATES[fmt][split])
    raise ConfigError(
        f"data.path: no {split} file for data.name={fmt} in {directory} (tried {tried}); "
        f"name it with data.files.{split}=FILE"
    )


def _read_lines(path: Path, fmt: str) -> tuple[list[str], list[str] | None]:
    """Texts and (for Yang et al. files with 'label<TAB>text') the labels of one file."""
    if path.suffix == ".jsonl":  # SNLI's official release: both sentences of each pair, deduplicated in order
        seen: dict[str, None] = {}
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                for key in ("sentence1", "sentence2"):
                    text = " ".join(str(row.get(key, "")).split())
                    if text:
                        seen.setdefault(text, None)
        return list(seen), None
    texts, labels = [], []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            label = None
            if fmt in ("yahoo", "yelp") and "\t" in line:
                label, _, line = line.partition("\t")
            text = " ".join(line.split())
            if text:
                texts.append(text)
                labels.append(label)
    has_labels = any(label is not None for label in labels)
    return texts, ([label or "" for label in labels] if has_labels else None)


def _check_ptb_md5(path: Path, notes: list[str]) -> None:
    expected = PTB_MD5.get(path.name)
    if expected and md5_of(path) != expected:
        message = f"{path}: md5 differs from the canonical Mikolov PTB file; results will not compare with papers"
        warnings.warn(message)
        notes.append(message)


def load_line_corpus(config: DataConfig) -> Corpus:
    directory = Path(config.path or "")
    if not directory.is_dir():
        raise ConfigError(f"data.path: {directory} is not a directory (give the folder holding the split files)")
    corpus = Corpus(name=config.name, texts={})
    labels: dict[str, list[str]] = {}
    for split in SPLITS:
        if split == "valid" and config.valid_fraction is not None:
            continue  # carved from train below (load_corpus)
        path = find_split_file(directory, split, config.name, config.files)
        if config.name == "ptb" and config.check_md5:
            _check_ptb_md5(path, corpus.notes)
        try:
            texts, split_labels = _read_lines(path, config.name)
        except UnicodeDecodeError as error:
            raise ConfigError(f"data.path: {path} is not UTF-8 text ({error.reason} at byte {error.start} of a "
                              "line); convert it to UTF-8") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"data.path: {path}: a line is not JSON ({error.msg}); give JSON lines") from None
        corpus.texts[split] = texts
        if split_labels is not None:
            labels[split] = split_labels
    if len(labels) == len(corpus.texts):
        classes = sorted({label for split_labels in labels.values() for label in split_labels})
        index = {label: i for i, label in enumerate(classes)}
        corpus.factors = {split: {"label": [index[x] for x in labels[split]]} for split in corpus.texts}
        corpus.factor_classes = {"label": len(classes)}
    return corpus


def load_hf_corpus(config: DataConfig) -> Corpus:
    """A Hugging Face dataset by name (needs internet) or a local loader ('text', 'csv', 'json') with data_files."""
    import datasets

    kwargs = {"data_files": config.hf_data_files} if config.hf_data_files else {}
    loaded = datasets.load_dataset(config.hf_name, config.hf_config, **kwargs)
    corpus = Corpus(name=f"hf:{config.hf_name}", texts={})
    for split in SPLITS:
        if split == "valid" and config.valid_fraction is not None:
            continue  # carved from train (load_corpus)
        theirs = config.split_names.get(split, split)
        if theirs not in loaded:  # the common other names of a split (`valid` for `validation`, ...)
            theirs = next((n for n in SPLIT_ALIASES.get(split, ()) if n in loaded), theirs)
        if theirs not in loaded:
            raise ConfigError(
                f"data.split_names.{split}: dataset {config.hf_name} has no split '{theirs}' "
                f"(it has {', '.join(loaded)})"
            )
        column = loaded[theirs]
        if config.text_column not in column.column_names:
            raise ConfigError(
                f"data.text_column: '{config.text_column}' is not a column of {config.hf_name} "
                f"(columns: {', '.join(column.column_names)})"
            )
        texts = (" ".join(str(t).split()) for t in column[config.text_column])
        corpus.texts[split] = [t for t in texts if t]
    return corpus


def load_synthetic(config: DataConfig) -> Corpus:
    from ablate.data.synthetic import FACTORS, generate_synthetic

    s = config.synthetic
    splits = generate_synthetic(n_train=s.n_train, n_valid=s.n_valid, n_test=s.n_test, seed=s.seed)
    return Corpus(name="synthetic", texts=dict(splits.texts), factors=dict(splits.factors),
                  factor_classes=dict(FACTORS))


def carve_valid(corpus: Corpus, fraction: float) -> None:
    """Move the last ceil(fraction · n) train sentences (and their factors) into a new valid split, noted."""
    train = corpus.texts["train"]
    n_valid = min(len(train) - 1, math.ceil(fraction * len(train)))
    if n_valid < 1:
        raise ConfigError(f"data.valid_fraction: {len(train)} train sentences are too few to carve a validation split")
    corpus.texts["valid"] = train[-n_valid:]
    corpus.texts["train"] = train[:-n_valid]
    for name, values in corpus.factors.get("train", {}).items():
        corpus.factors.setdefault("valid", {})[name] = values[-n_valid:]
        corpus.factors["train"][name] = values[:-n_valid]
    corpus.texts = {split: corpus.texts[split] for split in SPLITS if split in corpus.texts}
    corpus.notes.append(f"reduced setting: valid = the last {n_valid} of {len(train)} train sentences "
                        f"(data.valid_fraction {fraction})")


def load_corpus(config: DataConfig) -> Corpus:
    """The corpus a data config names, with train cut to data.max_train when asked (noted as a reduced setting)."""
    if config.name == "synthetic":
        corpus = load_synthetic(config)
    elif config.name == "hf":
        corpus = load_hf_corpus(config)
    else:
        corpus = load_line_corpus(config)
    if config.valid_fraction is not None:
        carve_valid(corpus, config.valid_fraction)
    for split in SPLITS:
        if not corpus.texts.get(split):
            raise ConfigError(f"data: the {split} split of {corpus.name} is empty")
    if config.max_train is not None and config.max_train < len(corpus.texts["train"]):
        corpus.notes.append(f"reduced setting: first {config.max_train} of {len(corpus.texts['train'])} train texts")
        corpus.texts["train"] = corpus.texts["train"][: config.max_train]
        if corpus.factors:
            corpus.factors["train"] = {k: v[: config.max_train] for k, v in corpus.factors["train"].items()}
    return corpus
