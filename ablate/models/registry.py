"""Model name → how to build its tokenizer and the model itself."""

from __future__ import annotations

from ablate.config import DataConfig, LSTMConfig, ModelConfig
from ablate.data.tokenize import Tokenizer, WordVocab
from ablate.models.base import TextVAE


def build_tokenizer(model: ModelConfig, data: DataConfig, train_texts: list[str]) -> Tokenizer:
    """Word vocabulary on train for the LSTM; the model's own (or a trained) subword tokenizer for seq2seq."""
    if isinstance(model, LSTMConfig):
        return WordVocab.build(train_texts, max_size=data.max_vocab, min_freq=data.min_freq)
    from ablate.models.seq2seq import build_seq2seq_tokenizer

    return build_seq2seq_tokenizer(model, train_texts)


def tokenizer_key(model: ModelConfig) -> str:
    """What a model's tokenizer depends on besides the corpus (two configs with the same key share token ids)."""
    if isinstance(model, LSTMConfig):
        return "word"
    family = model.config.family if model.config is not None else None
    return f"seq2seq:{model.pretrained}:{model.tokenizer}:{model.tokenizer_vocab_size}:{family}"


def build_model(model: ModelConfig, tokenizer: Tokenizer) -> TextVAE:
    if isinstance(model, LSTMConfig):
        from ablate.models.lstm import LSTMVAE

        return LSTMVAE(len(tokenizer), model, pad_id=tokenizer.framing.pad)
    from ablate.models.seq2seq import build_seq2seq_vae

    return build_seq2seq_vae(model, tokenizer)
