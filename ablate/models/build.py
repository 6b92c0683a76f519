"""A model of its family: the family of a model section (ablate.core.config.FAMILIES), its tokenizer, its model."""

from __future__ import annotations

from ablate.core.config import FAMILIES, DataConfig, ModelFamily, ModelSection
from ablate.data.tokenize import Tokenizer
from ablate.models.base import TextVAE


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
