"""Model family name → how to build its tokenizer and the model itself (one entry per family, registered by the
family's own module; an unknown family is an error with a suggestion, never a fallback).

A family's config class lives in ablate.config (the schema every layer reads); its entry here names the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ablate.config import DataConfig, ModelConfig
from ablate.data.tokenize import Tokenizer
from ablate.models.base import TextVAE
from ablate.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """What ablate needs to know to build one family of text VAEs."""

    name: str  # the config's model.name
    build_tokenizer: Callable[[ModelConfig, DataConfig, list[str]], Tokenizer]  # from the train texts
    tokenizer_key: Callable[[ModelConfig], str]  # what its token ids depend on besides the corpus
    build_model: Callable[[ModelConfig, Tokenizer], TextVAE]


FAMILIES: Registry[ModelFamily] = Registry("model family", base=ModelFamily, discover=("ablate.models",))


def family(model: ModelConfig) -> ModelFamily:
    return FAMILIES.get(model.name)


def build_tokenizer(model: ModelConfig, data: DataConfig, train_texts: list[str]) -> Tokenizer:
    """The family's tokenizer (the LSTM: a word vocabulary on train; seq2seq: the model's own or a trained one)."""
    return family(model).build_tokenizer(model, data, train_texts)


def tokenizer_key(model: ModelConfig) -> str:
    """What a model's tokenizer depends on besides the corpus (two configs with the same key share token ids)."""
    return f"{model.name}:{family(model).tokenizer_key(model)}"


def build_model(model: ModelConfig, tokenizer: Tokenizer) -> TextVAE:
    return family(model).build_model(model, tokenizer)
