"""Texts → token ids: a word vocabulary built on train, and an adapter for Hugging Face tokenizers.

Both expose the same small interface (`Tokenizer`): `encode(text)` gives the ids of the text without special
tokens, `framing` says how encoder and decoder sequences are framed with special tokens, `unit` names the
token unit ('word' or 'subword') that PPL is counted in, and `decode(ids)` goes back to text.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ablate.results.safe_files import write_text_atomic


@dataclass(frozen=True)
class SpecialIds:
    """Token ids a corruption must recognise (never corrupt bos/eos/pad)."""

    pad: int
    bos: int | None
    eos: int
    unk: int
    mask: int | None = None


PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
TOKENIZER_RECORD = "ablate_tokenizer.json"  # what kind of tokenizer a saved folder holds (see load_tokenizer)


@dataclass(frozen=True)
class Framing:
    """How a token list t becomes model inputs.

    encoder input  = enc_prefix + t_enc + [enc_eos]   (t_enc = t, unless the encoder has its own tokenizer)
    decoder input  = [dec_start] + t          (teacher forcing)
    decoder target = t + [eos]                (so </s> is predicted and counted; dec_start never is)

    `enc_eos`/`enc_pad` default to `eos`/`pad`; an encoder with a tokenizer of its own (PairTokenizer: BERT's
    [CLS] t [SEP] with [PAD] = 0) sets them.
    """

    enc_prefix: tuple[int, ...]
    dec_start: int
    eos: int
    pad: int
    enc_eos_id: int | None = None
    enc_pad_id: int | None = None

    @property
    def enc_eos(self) -> int:
        return self.eos if self.enc_eos_id is None else self.enc_eos_id

    @property
    def enc_pad(self) -> int:
        return self.pad if self.enc_pad_id is None else self.enc_pad_id


class Tokenizer(Protocol):
    unit: str
    framing: Framing
    special_ids: SpecialIds

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def __len__(self) -> int: ...


class WordVocab:
    """Whitespace words; ids 0..3 are <pad>, <s>, </s>, <unk>; the rest by train frequency (ties alphabetical).

    Words already written as `<unk>` in the corpus (PTB, Yahoo's `_UNK`) map to the <unk> id.
    """

    unit = "word"

    def __init__(self, words: list[str]) -> None:
        self.itos = [PAD, BOS, EOS, UNK] + [w for w in words if w not in (PAD, BOS, EOS, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.special_ids = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)
        self.framing = Framing(enc_prefix=(1,), dec_start=1, eos=2, pad=0)

    @classmethod
    def from_file(cls, path: Path, unk_aliases: tuple[str, ...] = ("_UNK", "<UNK>")) -> "WordVocab":
        """A fixed vocabulary: one word per line in id order, optionally `word<TAB>id` (Yang et al.'s vocab.txt).
        Their special lines (<pad>, <bos>/<s>, <eos>/</s>, _UNK/<unk>) map to ours; the rest keep their order."""
        specials = {PAD, BOS, EOS, UNK, "<bos>", "<eos>", *unk_aliases}
        words = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            word = line.split("\t", 1)[0].strip()
            if word and word not in specials:
                words.append(word)
        vocab = cls(list(dict.fromkeys(words)))
        for alias in unk_aliases:
            vocab.stoi[alias] = 3
        return vocab

    def save(self, folder: Path) -> None:
        """The vocabulary as data (`ablate_tokenizer.json`: the id → word list and the <unk> aliases)."""
        aliases = sorted(w for w, i in self.stoi.items() if i == 3 and w != UNK)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / TOKENIZER_RECORD, json.dumps({"kind": "word", "itos": self.itos,
                                                           "unk_aliases": aliases}, ensure_ascii=False))

    @classmethod
    def build(cls, texts: list[str], max_size: int | None = None, min_freq: int = 1,
              unk_aliases: tuple[str, ...] = ("_UNK", "<UNK>")) -> "WordVocab":
        counts = Counter(w for text in texts for w in text.split() if w not in unk_aliases)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - 4)]
        vocab = cls(words)
        for alias in unk_aliases:
            vocab.stoi[alias] = 3
        return vocab

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, 3) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i not in (0, 1, 2))

    def __len__(self) -> int:
        return len(self.itos)


class HFTokenizer:
    """Adapter for a Hugging Face tokenizer (T5 SentencePiece, BART BPE, ...): subword units.

    T5 style (no BOS): encoder t + </s>; decoder starts from the model's decoder_start_token_id (= pad for T5).
    BART style (BOS): encoder <s> t </s>; decoder starts from decoder_start_token_id.
    """

    unit = "subword"

    def __init__(self, tokenizer, decoder_start_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer has no eos token: a VAE needs one to end sentences")
        bos = tokenizer.bos_token_id
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad
        mask = tokenizer.mask_token_id
        if mask is None:  # T5 has no mask token; its first sentinel plays that part
            sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
            mask = sentinel if isinstance(sentinel, int) and sentinel != unk else unk
        start = decoder_start_id if decoder_start_id is not None else (bos if bos is not None else pad)
        self.special_ids = SpecialIds(pad=pad, bos=bos, eos=eos, unk=unk, mask=mask)
        self.framing = Framing(enc_prefix=(bos,) if bos is not None else (), dec_start=start, eos=eos, pad=pad)

    def save(self, folder: Path) -> None:
        """The Hugging Face tokenizer's own files (save_pretrained) and our decoder start id."""
        self.tokenizer.save_pretrained(str(folder))
        record = {"kind": "hf", "decoder_start_id": self.framing.dec_start}
        write_text_atomic(folder / TOKENIZER_RECORD, json.dumps(record))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __len__(self) -> int:
        return len(self.tokenizer)


class PairTokenizer:
    """Two tokenizers for one sentence: the encoder's (e.g. BERT WordPiece) and the decoder's (e.g. GPT-2 or Llama
    BPE), as Optimus pairs a pretrained encoder with a pretrained causal LM (Li et al. 2020). `encode` and `decode`
    are the decoder's (the tokens the model predicts and PPL counts); `encode_encoder` gives the encoder's input
    ids; `framing` frames the decoder side with the decoder's specials and the encoder side with the encoder's;
    `special_ids` are the decoder's (word dropout acts on decoder inputs), `encoder_special_ids` the encoder's
    (masking and deleting act on encoder inputs)."""

    unit = "subword"

    def __init__(self, encoder: HFTokenizer, decoder: HFTokenizer) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.special_ids = decoder.special_ids
        self.encoder_special_ids = encoder.special_ids
        self.framing = Framing(enc_prefix=encoder.framing.enc_prefix, dec_start=decoder.framing.dec_start,
                               eos=decoder.framing.eos, pad=decoder.framing.pad, enc_eos_id=encoder.framing.eos,
                               enc_pad_id=encoder.framing.pad)

    def save(self, folder: Path) -> None:
        for name, side in (("encoder", self.encoder), ("decoder", self.decoder)):
            (folder / name).mkdir(parents=True, exist_ok=True)
            side.save(folder / name)
        write_text_atomic(folder / TOKENIZER_RECORD, json.dumps({"kind": "pair"}))

    def encode(self, text: str) -> list[int]:
        return self.decoder.encode(text)

    def encode_encoder(self, text: str) -> list[int]:
        return self.encoder.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.decoder.decode(ids)

    def __len__(self) -> int:
        return len(self.decoder)


def load_tokenizer(folder: Path) -> "WordVocab | HFTokenizer | PairTokenizer":
    """A tokenizer saved with `save(folder)` (as `ablate export` writes it); data only, no code."""
    record = json.loads((folder / TOKENIZER_RECORD).read_text())
    if record.get("kind") == "pair":
        encoder, decoder = load_tokenizer(folder / "encoder"), load_tokenizer(folder / "decoder")
        if not isinstance(encoder, HFTokenizer) or not isinstance(decoder, HFTokenizer):
            raise ValueError(f"{folder}: a pair of tokenizers holds two Hugging Face tokenizers")
        return PairTokenizer(encoder, decoder)
    if record.get("kind") == "word":
        vocab = WordVocab([w for w in record["itos"][4:]])
        for alias in record.get("unk_aliases", []):
            vocab.stoi[alias] = 3
        return vocab
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)), decoder_start_id=record["decoder_start_id"])

