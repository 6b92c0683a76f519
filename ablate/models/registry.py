"""Model family name → its config class, how to build its tokenizer and the model itself (one entry per family,
registered by the family's own module with `register_family`; an unknown family is an error with a suggestion,
never a fallback). Adding a family is one file: `ablate/models/<family>.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ablate.core.config import MODEL_CONFIGS, DataConfig, ModelSection
from ablate.data.tokenize import Tokenizer
from ablate.models.base import TextVAE
from ablate.core.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """What ablate needs to know to build one family of text VAEs."""

    name: str  # the config's model.name
    config: type[ModelSection]  # its config class (a `name: Literal[<name>]` field and the family's own fields)
    build_tokenizer: Callable[[ModelSection, DataConfig, list[str]], Tokenizer]  # from the train texts
    tokenizer_key: Callable[[ModelSection], str]  # what its token ids depend on besides the corpus
    build_model: Callable[[ModelSection, Tokenizer], TextVAE]


FAMILIES: Registry[ModelFamily] = Registry("model family", base=ModelFamily, discover=("ablate.models",))


def register_family(entry: ModelFamily) -> ModelFamily:
    """Register a family and its config class (the run config validates `model:` with it)."""
    if entry.config.model_fields["name"].default != entry.name:
        raise ValueError(f"model family '{entry.name}': its config's name field must default to '{entry.name}'")
    MODEL_CONFIGS.register(entry.name, entry.config)
    return FAMILIES.register(entry.name, entry)  # type: ignore[return-value]


def family(model: ModelSection) -> ModelFamily:
    return FAMILIES.get(model.name)


def build_tokenizer(model: ModelSection, data: DataConfig, train_texts: list[str]) -> Tokenizer:
    """The family's tokenizer (the LSTM: a word vocabulary on train; seq2seq: the model's own or a trained one)."""
    return family(model).build_tokenizer(model, data, train_texts)


def tokenizer_key(model: ModelSection) -> str:
    """What a model's tokenizer depends on besides the corpus (two configs with the same key share token ids)."""
    return f"{model.name}:{family(model).tokenizer_key(model)}"


def build_model(model: ModelSection, tokenizer: Tokenizer) -> TextVAE:
    return family(model).build_model(model, tokenizer)
