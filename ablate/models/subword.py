"""A subword tokenizer fitted on the training split, for seq2seq models built without a pretrained tokenizer.

SentencePiece-style BPE (Sennrich et al. 2016; Kudo & Richardson 2018's `▁` word-boundary marker) trained with the
Hugging Face `tokenizers` library and wrapped as a transformers `PreTrainedTokenizerFast`, so the rest of ablate
sees it exactly like a pretrained tokenizer (through ablate.data.tokenize.HFTokenizer).

Deterministic: the same texts and vocabulary size give the same vocabulary and merges in every process (the BPE
trainer breaks ties by pair order; the Unigram trainer of `tokenizers` does not, which is why it is not used).
This matters: `ablate sample` rebuilds the tokenizer from the config to decode a saved model.

Special tokens follow the model family, so that ids mean what the architecture expects:
  t5:   <pad>=0  </s>=1  <unk>=2                      (no <s>; the decoder starts from <pad>)
  bart: <s>=0  <pad>=1  </s>=2  <unk>=3  <mask>=4      (encoder input <s> … </s>; the decoder starts from </s>)
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = {
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    "bart": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
             "mask_token": "<mask>"},
}
SPECIAL_ORDER = {"t5": ["<pad>", "</s>", "<unk>"], "bart": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}


def train_subword_tokenizer(texts: list[str], vocab_size: int, family: str = "t5"):
    """Fit a BPE model with `▁` word boundaries on `texts`; return a transformers PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    if family not in SPECIALS:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {', '.join(SPECIALS)}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_ORDER[family], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIALS[family])
