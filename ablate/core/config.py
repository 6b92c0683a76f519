"""Run configuration: the pydantic sections, the config hash and the flattened columns (reading a file, `--set` and
the one-line errors: ablate.core.config_reading).

A run config has five sections (data, model, techniques, train, eval) plus a seed. Every section is strict:
an unknown key is an error that names the file, the key path and the closest valid key ("did you mean").
Technique configs are validated by the technique registry (ablate.core.technique_registry), which applies the
same rules to each technique's own fields.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ablate.core.registry import Registry, did_you_mean
from ablate.core.technique_registry import get as get_technique
from ablate.core.technique_registry import (
    resolve_techniques,
    step_takers,
    technique_versions,
)


class ConfigError(ValueError):
    """A bad config: the message is one line naming the file, the key and the fix."""


SEED_MAX = 2**31 - 1  # numpy's and every generator's range, with room for the derived seeds (seed + 7919, ...)
MAX_DIM = 16_384  # widths (embedding, hidden, d_model): the literature's largest is 1024-4096
MAX_NZ = 4_096

# A field added to a config section after studies have committed results is declared with
# `json_schema_extra=NEW_FIELD`: at its default it is left out of the config hash, so the committed cells keep their
# ids (and a sweep resumes them) while a config that sets it gets a new id.
NEW_FIELD = {"hash_omits_default": True}


class Strict(BaseModel):
    """Unknown keys are errors; numbers must be finite (`.inf`/`.nan` are refused: a run could only diverge)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(Strict):
    """Sizes of the embedded corpus (ablate.data.synthetic); its own seed so the corpus is fixed across run seeds."""

    n_train: int = Field(10_000, ge=1, le=10_000_000)
    n_valid: int = Field(1_000, ge=1, le=10_000_000)
    n_test: int = Field(1_000, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0, le=SEED_MAX)


LOCAL_LOADERS = ("text", "csv", "json", "parquet")  # Hugging Face loaders that read data_files


class DataConfig(Strict):
    """Which corpus, and how it becomes token ids."""

    name: Literal["synthetic", "ptb", "yahoo", "yelp", "snli", "lines", "hf"] = "synthetic"
    path: str | None = Field(None, description="directory of line files (ptb/yahoo/yelp/snli/lines)")
    synthetic: SyntheticConfig = SyntheticConfig()
    files: dict[str, str] | None = Field(
        None, description="split -> file name inside data.path, when the names are not the standard ones"
    )
    hf_name: str | None = Field(None, description="Hugging Face dataset name or loader ('text', 'csv', ...)")
    hf_config: str | None = None
    hf_data_files: dict[str, str] | None = Field(None, description="split -> file, for local 'text'/'csv' loaders")
    text_column: str = "text"
    split_names: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"},
        description="our split -> the dataset's split name (hf)",
    )
    max_vocab: int | None = Field(None, ge=4, le=10_000_000,
                                  description="word vocabulary size cap (None: every train word)")
    min_freq: int = Field(1, ge=1)
    max_length: int = Field(200, ge=2, le=100_000,
                            description="max tokens per sentence, longer ones are truncated (counted)")
    max_train: int | None = Field(None, ge=1, description="use only the first N train sentences (a reduced setting)")
    valid_fraction: float | None = Field(
        None, gt=0, le=0.5, description="carve the validation split from the last fraction of train (for a corpus "
        "without one; noted in the row as a reduced setting; the corpus's own valid split is then not used)")
    vocab_file: str | None = Field(
        None, description="a fixed word vocabulary, one word per line (optionally `word<TAB>id`, Yang et al.'s "
        "vocab.txt), instead of the train words; <pad>/<bos>/<eos>/_UNK lines map to ours")
    check_md5: bool = True

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.name in ("ptb", "yahoo", "yelp", "snli", "lines") and not self.path:
            raise ValueError(f"data.name={self.name} needs data.path (a directory of line files)")
        if self.name == "hf" and not self.hf_name:
            raise ValueError("data.name=hf needs data.hf_name (a dataset name or a loader such as 'text')")
        if self.vocab_file is not None and self.max_vocab is not None:
            raise ValueError("data.vocab_file fixes the vocabulary: drop data.max_vocab")
        if self.name == "hf" and self.hf_name in LOCAL_LOADERS and not self.hf_data_files:
            raise ValueError(f"data.hf_name={self.hf_name} reads local files: give data.hf_data_files "
                             "(split -> file), e.g. {train: train.txt, validation: valid.txt, test: test.txt}")
        return self


class ModelSection(Strict):
    """The base of every model family's config class (ablate.models.<family>): `name` says which family."""

    name: str

    def pretrained_sources(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(key, name or folder, files one of which such a folder holds) of each thing the family loads with
        `from_pretrained` beyond `pretrained`/`tokenizer` (preflight checks they are here before a run starts)."""
        return []

    def hugging_face_parts(self) -> dict[str, str]:
        """{export subfolder: model attribute} of the Hugging Face networks `ablate export` writes with
        save_pretrained (each reusable by transformers as it is)."""
        return {}

    def in_export(self, folder: Path) -> "ModelSection":
        """This section as it rebuilds the model inside an export folder: its pretrained sources pointed at the
        exported parts (so neither the hub nor the original folders are needed)."""
        return self


@dataclass(frozen=True)
class ModelFamily:
    """What ablate needs to know to build one family of text VAEs: its config class, how to build its tokenizer and
    the model itself (ablate.models.build calls them)."""

    name: str  # the config's model.name
    config: type[ModelSection]  # its config class (a `name: Literal[<name>]` field and the family's own fields)
    build_tokenizer: Callable[..., Any]  # (model section, DataConfig, train texts) -> ablate.data.tokenize.Tokenizer
    tokenizer_key: Callable[[ModelSection], str]  # what its token ids depend on besides the corpus
    build_model: Callable[..., Any]  # (model section, tokenizer) -> ablate.models.base.TextVAE


# The model families by model.name, in one registry: each family's own module registers itself with
# `register_family`, found by discovery on first use (an unknown family is an error with a suggestion, never a
# fallback). Adding a family is one file: `ablate/models/<family>.py`.
FAMILIES: Registry[ModelFamily] = Registry("model family", base=ModelFamily, discover=("ablate.models",))
DEFAULT_MODEL = "lstm"  # model.name when a config's model section omits it


def register_family(entry: ModelFamily) -> ModelFamily:
    """Register a family (the run config validates `model:` with its config class)."""
    if entry.config.model_fields["name"].default != entry.name:
        raise ValueError(f"model family '{entry.name}': its config's name field must default to '{entry.name}'")
    return FAMILIES.register(entry.name, entry)  # type: ignore[return-value]


def model_name(section: Any) -> str:
    """The model.name a model section asks for (the default family when it names none)."""
    return str(section.get("name", DEFAULT_MODEL)) if isinstance(section, dict) else DEFAULT_MODEL


def model_config_class(name: str) -> type[ModelSection] | None:
    """The config class of a family name (None when there is no such family)."""
    family = FAMILIES.all().get(name)
    return None if family is None else family.config


class LRDecayConfig(Strict):
    """He et al. 2019's rule (vae-lagging-encoder text.py): after `min_epochs` VAE epochs, when the validation
    loss has not improved for `patience` epochs, multiply the learning rate by `factor`, go back to the best state
    and start a fresh optimiser; stop training after `max_decays` decays."""

    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(5, ge=1, description="epochs without improvement before a decay (He et al.: 5)")
    min_epochs: int = Field(15, ge=0, description="no decay before this many VAE epochs (He et al.: 15)")
    max_decays: int = Field(5, ge=1, description="training stops at this many decays (He et al.: 5)")


FREEZE_COMPONENT = re.compile(r"\*|\d+(-\d+)?|[A-Za-z_][A-Za-z0-9_]*")  # one dotted part of a train.freeze pattern


class TrainConfig(Strict):
    """Optimisation. The reconstruction term is a per-sentence sum over tokens (never a mean over padded length)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    epochs: int = Field(10, ge=0, le=1_000_000)
    max_steps: int | None = Field(None, ge=1, le=10**10,
                                  description="stop after this many optimiser steps (overrides epochs)")
    grad_clip: float | None = Field(5.0, gt=0)
    batching: Literal["bucketed", "one_length"] = Field(
        "bucketed", description="training batches: of similar length, padded (bucketed), or of exactly one length "
        "each, the same every epoch in a shuffled order (one_length: He et al.'s create_data_batch; more batches, "
        "some small; schedules still count train sentences / batch_size steps per epoch, as their annealing does)",
        json_schema_extra=NEW_FIELD)
    lr_decay: LRDecayConfig | None = Field(None, description="He et al.'s decay-on-plateau rule (None: constant lr)")
    kl_weight: float = Field(1.0, ge=0, description="base KL weight; techniques multiply it (0 = autoencoder)")
    select_by: Literal["nelbo", "rec", "last"] = Field(
        "nelbo", description="which VAE-phase epoch's state is kept: best validation -ELBO (default), best "
        "validation rec (for an autoencoder, whose KL grows without bound), or the last"
    )
    grad_accum: int = Field(1, ge=1, le=4096, description="batches per optimiser step, their gradients averaged "
                            "(an effective batch of batch_size × grad_accum); steps and schedules count optimiser "
                            "steps")
    freeze: list[str] = Field(default_factory=list, description="parameters that do not train, by module path over "
                              "the model's parameter names: names, * or ranges a-b, e.g. lm.model.layers.0-23")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="fp32, or bf16 autocast of the training forward pass (metrics are always fp32); auto: "
        "bf16 where the device multiplies bf16 natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else "
        "fp32 — the row's `precision` says which")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads (None: torch's default)")
    divergence_threshold: float = Field(1e6, gt=0, description="a loss above this ends the run as diverged")
    checkpoint_every_epoch: bool = True
    checkpoint_minutes: float | None = Field(
        10.0, ge=0, description="also save the checkpoint mid-epoch when this many minutes passed since the last "
        "save, so a long epoch survives a killed worker (0: after every step; None: at epoch ends only); saving "
        "draws no random numbers, so results do not depend on it", json_schema_extra=NEW_FIELD)

    @field_validator("freeze")
    @classmethod
    def _freeze_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            for part in pattern.split("."):
                if not FREEZE_COMPONENT.fullmatch(part):
                    raise ValueError(f"{pattern!r}: {part!r} is not a name, * or a range a-b (dotted components, "
                                     "e.g. lm.model.layers.0-23)")
                if part[0].isdigit() and "-" in part and int(part.split("-")[0]) > int(part.split("-")[1]):
                    raise ValueError(f"{pattern!r}: the range {part} is empty; write low-high")
        return patterns

    def steps_per_epoch(self, sentences: int) -> int:
        """Optimiser steps in one pass over `sentences` training sentences."""
        batches = -(-sentences // self.batch_size)
        return -(-batches // self.grad_accum)

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", v):
            raise ValueError("not a device name; use auto, cpu, cuda, cuda:N or mps")
        return v


class EvalConfig(Strict):
    """Metric conventions; every one is recorded in the result row."""

    splits: list[Literal["valid", "test"]] = ["valid", "test"]
    batch_size: int = Field(64, ge=1, le=1_000_000)
    iw_samples: int = Field(500, ge=1, le=100_000,
                            description="K of the importance-weighted NLL (He et al. 500, Optimus 100)")
    iw_max_elements: int = Field(
        3_200_000, ge=1, le=10**10, description="logits per output-layer block in evaluation (memory bound and cache "
        "fit: ≈13 MB fp32, 320 positions of a 10k vocabulary; the estimate does not depend on it)"
    )
    max_sentences: int | None = Field(
        None, ge=1, description="evaluate only the first N sentences of each split (unset: all; a reduced setting)")
    mi_pool: Union[Literal["dataset"], int] = Field(
        "dataset", description="aggregate posterior over the whole split ('dataset', Li/Optimus) or blocks of M (He: 32)"
    )
    au_delta: float = Field(0.01, gt=0, description="active-unit threshold on Var_x E[z] (Burda et al. 2016)")
    probe: bool = Field(True, description="linear probes of ground-truth factors from a posterior sample z "
                                          "(embedded corpus)")

    mi_samples: int = Field(8, ge=1, le=1024, description="S: draws per sentence of the paired MI estimate (metric "
                            "mi_paired: both terms at the same draws; ablate.metrics.estimators.mutual_information_paired)",
                            json_schema_extra=NEW_FIELD)
    bootstrap: int = Field(100, ge=0, le=100_000, description="resamples of the bootstrap over sentences behind the "
                           "standard errors of MI and AU (0: none; ablate.metrics.uncertainty)", json_schema_extra=NEW_FIELD)
    mi_pool_order: Literal["split", "length", "length_batches"] = Field(
        "split", description="blocks of M (mi_pool: M): consecutive sentences in split order; in length order (blocks "
        "cross length boundaries); or length_batches, He et al. 2019's calc_mi over their create_data_batch "
        "batches: at most M sentences of one length each")

    @field_validator("mi_pool")
    @classmethod
    def _pool_positive(cls, v: Any) -> Any:
        if isinstance(v, int) and not 2 <= v <= 10**9:
            raise ValueError("eval.mi_pool must be 'dataset' or an integer M >= 2")
        return v


class RunConfig(Strict):
    """One run: corpus → model + techniques → training → evaluation → one result row."""

    seed: int = Field(0, ge=0, le=SEED_MAX)
    data: DataConfig = DataConfig()
    model: SerializeAsAny[ModelSection] = Field(default_factory=lambda: FAMILIES.get(DEFAULT_MODEL).config())
    techniques: dict[str, dict[str, Any] | None] = Field(default_factory=dict)  # None: the defaults
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("model", mode="wrap")
    @classmethod
    def _model_of_its_family(cls, value: Any, handler: Any) -> ModelSection:
        """Validate the model section with its family's config class (model.name picks it)."""
        if isinstance(value, ModelSection):
            return value
        if not isinstance(value, dict):
            raise PydanticCustomError("model_section", "must be a mapping: model.name (one of {known}) and that "
                                      "family's fields",
                                      {"known": ", ".join(sorted(FAMILIES.names()))})
        asked = model_name(value)
        config_class = model_config_class(asked)
        if config_class is None:
            raise PydanticCustomError("model_family", "no model family '{asked}'{hint}; model.name is one of {known}",
                                      {"asked": asked, "hint": did_you_mean(asked, FAMILIES.names()),
                                       "known": ", ".join(sorted(FAMILIES.names()))})
        return config_class.model_validate({"name": asked, **value})

    @model_validator(mode="after")
    def _techniques_known(self) -> "RunConfig":
        self.__dict__["techniques"] = resolve_techniques(self.techniques)
        if getattr(self.model, "nz", 1) == 0 and self.techniques:
            raise ValueError(f"techniques: model.nz 0 is a language model (no latent), so {sorted(self.techniques)[0]} "
                             "has nothing to act on; drop the techniques or give model.nz ≥ 1")
        takers = step_takers(self.techniques)
        if takers and self.train.grad_accum > 1:
            raise ValueError(f"train.grad_accum: {takers[0]} takes its own optimiser steps; use grad_accum 1 with it "
                             "(or a larger train.batch_size)")
        return self


def canonical_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config (defaults filled) with technique versions, as plain JSON-able data."""
    data = config.model_dump(mode="json")
    data["technique_versions"] = technique_versions(config.techniques)
    return data


def _without_new_defaults(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("hash_omits_default") and name in data and value == info.default:
            del data[name]
        elif isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            _without_new_defaults(value, data[name])
    return data


def config_hash(config: RunConfig) -> str:
    """A stable id of a config: sha256 of its canonical JSON (sorted keys; fields declared NEW_FIELD left out at
    their default), first 12 hex digits."""
    text = json.dumps(_without_new_defaults(config, canonical_dict(config)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as JSON strings so columns stay scalar."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        elif isinstance(value, (list, dict)):
            out[path] = json.dumps(value)
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------- overrides


# ---------------------------------------------------------------- errors


# ---------------------------------------------------------------- the declared field at a key path

CONTAINER = dict  # what a key path holds once it names a dict- or list-valued field: its keys are data, not fields


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (Optional[Model] included)."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _is_container(annotation: Any) -> bool:
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    return any(typing.get_origin(c) in (dict, list) or c in (dict, list) for c in candidates)


def walk_fields(path: Sequence[Any], family: str | None) -> tuple[Any, Any]:
    """The run config's declared field at a key path (list positions skipped), the one walk over its schema:
    (its annotation, what it holds) — a pydantic model (`model` holds the family's config class,
    `techniques.<name>` that technique's Config), CONTAINER for a dict or list field, None for a scalar.
    (None, CONTAINER) inside a container, (None, None) once the path leaves the declared fields."""
    annotation: Any = None
    holds: Any = RunConfig
    keys = [k for k in path if not isinstance(k, int)]
    for i, key in enumerate(keys):
        if i == 1 and keys[0] == "techniques":
            try:
                holds = annotation = get_technique(str(key)).Config
            except ValueError:
                return None, None
            continue
        if holds is CONTAINER:
            return None, CONTAINER
        if holds is None or key not in holds.model_fields:
            return None, None
        annotation = holds.model_fields[key].annotation
        if i == 0 and key == "model":
            holds = model_config_class(family or DEFAULT_MODEL)
        else:
            holds = _model_in(annotation) or (CONTAINER if _is_container(annotation) else None)
    return annotation, holds
