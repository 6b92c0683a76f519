"""Corpus loaders, vocabulary, framing and length-bucketed batching."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ablate.core.config import ConfigError, DataConfig
from ablate.data.batching import bucketed_order, encode_split, iterate_batches, make_batch
from ablate.data.corpus import PTB_MD5, load_corpus, md5_of
from ablate.data.tokenize import WordVocab
from conftest import SHARED_DATA


def write_lines(folder: Path, names: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in names.items():
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


def test_ptb_full_corpus_counts_and_md5(ptb_dir):
    corpus = load_corpus(DataConfig(name="ptb", path=str(ptb_dir)))
    assert [len(corpus.texts[s]) for s in ("train", "valid", "test")] == [42_068, 3_370, 3_761]
    words = [sum(len(t.split()) for t in corpus.texts[s]) for s in ("train", "valid", "test")]
    assert words == [887_521, 70_390, 78_669]  # REFERENCE.md section 4
    assert corpus.notes == []  # canonical md5s
    vocab = WordVocab.build(corpus.texts["train"])
    assert len(vocab) == 10_000 + 2  # Mikolov 10k counts <unk> and </s>; we add <pad> and <s>
    assert md5_of(ptb_dir / "ptb.valid.txt") == PTB_MD5["ptb.valid.txt"]


def test_ptb_md5_mismatch_warns_and_is_noted(tmp_path):
    folder = write_lines(tmp_path / "ptb", {"ptb.train.txt": [" a b c"], "ptb.valid.txt": ["a b"],
                                            "ptb.test.txt": ["c"]})
    with pytest.warns(UserWarning, match="md5"):
        corpus = load_corpus(DataConfig(name="ptb", path=str(folder)))
    assert len(corpus.notes) == 3 and "md5" in corpus.notes[0]


def test_yahoo_label_column_becomes_a_factor(tmp_path):
    folder = write_lines(tmp_path / "yahoo", {
        "train.txt": ["1\tthe cat sat", "2\ta dog ran", "1\tthe end"],
        "val.txt": ["2\tdog"], "test.txt": ["1\tcat _UNK"]})
    corpus = load_corpus(DataConfig(name="yahoo", path=str(folder)))
    assert corpus.texts["train"] == ["the cat sat", "a dog ran", "the end"]
    assert corpus.factors["train"]["label"] == [0, 1, 0] and corpus.factor_classes == {"label": 2}
    vocab = WordVocab.build(corpus.texts["train"])
    assert vocab.encode("cat _UNK zebra")[1:] == [3, 3]  # _UNK and unseen words map to <unk>


def test_missing_split_file_is_a_clear_error(tmp_path):
    folder = write_lines(tmp_path / "y", {"val.txt": ["a"], "test.txt": ["b"]})
    with pytest.raises(ConfigError, match=r"no train file .*data\.files\.train"):
        load_corpus(DataConfig(name="yahoo", path=str(folder)))
    corpus = load_corpus(DataConfig(name="yahoo", path=str(folder), files={"train": "val.txt"}))
    assert corpus.texts["train"] == ["a"]


def test_snli_jsonl_sentences_deduplicated(tmp_path):
    folder = tmp_path / "snli"
    folder.mkdir()
    pairs = [{"sentence1": "A man sleeps .", "sentence2": "A person rests ."},
             {"sentence1": "A man sleeps .", "sentence2": "Nobody sleeps ."}]
    for split in ("train", "dev", "test"):
        (folder / f"snli_1.0_{split}.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    corpus = load_corpus(DataConfig(name="snli", path=str(folder)))
    assert corpus.texts["valid"] == ["A man sleeps .", "A person rests .", "Nobody sleeps ."]


def test_hf_text_loader_offline(tmp_path):
    folder = write_lines(tmp_path / "hf", {"tr.txt": ["one two", "three"], "va.txt": ["four"], "te.txt": ["five"]})
    files = {k: str(folder / v) for k, v in {"train": "tr.txt", "validation": "va.txt", "test": "te.txt"}.items()}
    corpus = load_corpus(DataConfig(name="hf", hf_name="text", hf_data_files=files))
    assert corpus.texts == {"train": ["one two", "three"], "valid": ["four"], "test": ["five"]}


def test_max_train_is_a_noted_reduced_setting():
    corpus = load_corpus(DataConfig(synthetic={"n_train": 50, "n_valid": 5, "n_test": 5}, max_train=20))
    assert len(corpus.texts["train"]) == 20 and len(corpus.factors["train"]["topic"]) == 20
    assert "reduced setting" in corpus.notes[0]


def test_framing_and_truncation():
    vocab = WordVocab.build(["a b c d e"])
    split = encode_split(["a b c d e", "a b"], vocab, max_length=4)
    assert split.n_truncated == 1 and split.tokens[0] == vocab.encode("a b c")
    assert split.n_words == [6, 3]  # words of the original text + </s>
    batch = make_batch(split, [1], vocab.framing)
    a, b = vocab.encode("a b")
    assert batch.enc_ids.tolist() == [[1, a, b, 2]]  # <s> a b </s>
    assert batch.dec_in.tolist() == [[1, a, b]] and batch.dec_target.tolist() == [[a, b, 2]]
    assert split.n_predicted == (3 + 1) + (2 + 1)


def test_bucketing_covers_every_index_once_and_keeps_padding_small():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(5000)]
    batches = bucketed_order(lengths, 32, random.Random(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(5000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1  # random batches would pad ~1.9x
    assert bucketed_order(lengths, 32, random.Random(1)) == batches  # deterministic for a seed


def test_batches_masks_match_lengths():
    vocab = WordVocab.build(["x y z w"])
    split = encode_split(["x", "x y z", "y z", "w w w w"], vocab, max_length=20)
    for batch in iterate_batches(split, vocab.framing, 3):
        assert (batch.enc_mask.sum(1) == batch.dec_mask.sum(1) + 1).all()  # encoder has <s> and </s>
        assert ((batch.enc_ids != 0) == batch.enc_mask).all()


def test_hf_local_files_may_name_the_split_valid(tmp_path):
    """`hf_data_files: {train, valid, test}` works as well as `validation` (split_names' default)."""
    folder = write_lines(tmp_path / "hf", {"tr.txt": ["one two"], "va.txt": ["four"], "te.txt": ["five"]})
    files = {k: str(folder / v) for k, v in {"train": "tr.txt", "valid": "va.txt", "test": "te.txt"}.items()}
    corpus = load_corpus(DataConfig(name="hf", hf_name="text", hf_data_files=files))
    assert corpus.texts == {"train": ["one two"], "valid": ["four"], "test": ["five"]}


def test_valid_fraction_carves_the_end_of_train_with_its_labels(tmp_path):
    folder = write_lines(tmp_path / "c", {"train.txt": [f"{i % 3}\tw{i} x" for i in range(10)],
                                          "test.txt": ["0\tt y"]})
    corpus = load_corpus(DataConfig(name="yahoo", path=str(folder), valid_fraction=0.25))
    assert corpus.texts["train"] == [f"w{i} x" for i in range(7)]
    assert corpus.texts["valid"] == ["w7 x", "w8 x", "w9 x"]  # ceil(0.25 · 10) = 3, the last ones
    assert corpus.factors["valid"]["label"] == [1, 2, 0] and len(corpus.factors["train"]["label"]) == 7
    assert "valid = the last 3 of 10 train sentences" in corpus.notes[0]


def test_a_fixed_vocabulary_file_in_yang_et_al_format(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("<pad>\t0\n<bos>\t1\n<eos>\t2\n_UNK\t3\n.\t4\nthe\t5\ncat\t6\n")
    vocab = WordVocab.from_file(vocab_file)
    assert vocab.itos == ["<pad>", "<s>", "</s>", "<unk>", ".", "the", "cat"]
    assert vocab.encode("the cat sat _UNK .") == [5, 6, 3, 3, 4]


def test_yahoo_reduced_setting_from_the_shared_files():
    """He et al.'s Yahoo files hold no train split here: train on val.txt less a carved validation split, test
    on test.txt, with Yang et al.'s 20k vocabulary (a reduced setting, noted)."""
    folder = SHARED_DATA / "yahoo_yang2017"
    if not (folder / "vocab.txt").exists():
        pytest.skip(f"reference data absent: {folder}")
    from ablate.models.lstm import LSTMConfig
    from ablate.models.build import build_tokenizer

    data = DataConfig(name="yahoo", path=str(folder), files={"train": "val.txt"}, valid_fraction=0.1,
                      vocab_file=str(folder / "vocab.txt"))
    corpus = load_corpus(data)
    assert (len(corpus.texts["train"]), len(corpus.texts["valid"]), len(corpus.texts["test"])) == (9000, 1000, 10000)
    tokenizer = build_tokenizer(LSTMConfig(), data, corpus.texts["train"])
    assert len(tokenizer) == 20000


def _pair():
    """Two real Hugging Face tokenizers of different vocabularies and conventions: the encoder BART-style (<s> t
    </s>, <mask>), the decoder T5-style (no <s>, decoding starts from <pad>)."""
    from ablate.data.tokenize import HFTokenizer, PairTokenizer
    from ablate.models.subword import train_subword_tokenizer

    texts = load_corpus(DataConfig(synthetic={"n_train": 300, "n_valid": 10, "n_test": 10})).texts["train"]
    encoder = HFTokenizer(train_subword_tokenizer(texts, 300, "bart"), decoder_start_id=None)
    decoder = HFTokenizer(train_subword_tokenizer(texts, 200, "t5"))
    return PairTokenizer(encoder, decoder), texts


def test_a_pair_of_tokenizers_frames_each_side_with_its_own_ids(tmp_path):
    """Optimus-style models read a sentence with the encoder's tokenizer and predict it with the decoder's: the
    batch's encoder side is the encoder's ids framed with its specials, the decoder side the decoder's."""
    from ablate.data.tokenize import load_tokenizer

    pair, texts = _pair()
    text = texts[0]
    split = encode_split([text, texts[1]], pair, max_length=200)
    assert split.tokens[0] == pair.decoder.encode(text) and split.enc_tokens[0] == pair.encoder.encode(text)
    assert split.tokens[0] != split.enc_tokens[0]  # two vocabularies
    batch = make_batch(split, [0, 1], pair.framing)
    enc = pair.encoder.special_ids
    first = batch.enc_ids[0][batch.enc_mask[0]].tolist()
    assert first == [enc.bos] + pair.encoder.encode(text) + [enc.eos]  # <s> t </s> in the encoder's ids
    assert batch.enc_ids[~batch.enc_mask].eq(enc.pad).all()
    dec = pair.decoder.special_ids
    assert batch.dec_in[0][batch.dec_mask[0]].tolist() == [pair.decoder.framing.dec_start] + split.tokens[0]
    assert batch.dec_target[0][batch.dec_mask[0]].tolist() == split.tokens[0] + [dec.eos]
    assert len(pair) == len(pair.decoder) and pair.decode(split.tokens[0]) == pair.decoder.decode(split.tokens[0])
    cut = encode_split([text], pair, max_length=4)
    assert cut.truncated == [0] and len(cut.tokens[0]) == len(cut.enc_tokens[0]) == 3
    assert split.head(1).enc_tokens == split.enc_tokens[:1]
    pair.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode_encoder(text) == pair.encode_encoder(text) and again.encode(text) == pair.encode(text)
    assert again.framing == pair.framing and again.encoder_special_ids == pair.encoder_special_ids


def test_denoising_masks_the_encoders_ids_with_the_encoders_mask_token():
    import torch

    from ablate.techniques.base import TrainContext
    from ablate.techniques.base import build_techniques

    pair, texts = _pair()
    batch = make_batch(encode_split(texts[:8], pair, 200), list(range(8)), pair.framing)
    context = TrainContext(nz=2, steps_per_epoch=1, special_ids=pair.special_ids,
                           encoder_special_ids=pair.encoder_special_ids)
    [masking] = build_techniques({"denoising": {"mode": "mask", "p": 1.0}}, context)
    masked = masking.corrupt(batch, torch.Generator().manual_seed(0))
    enc = pair.encoder_special_ids
    inner = batch.enc_mask & ~torch.isin(batch.enc_ids, torch.tensor([enc.bos, enc.eos, enc.pad]))
    assert masked.enc_ids[inner].eq(enc.mask).all() and enc.mask != pair.special_ids.mask
    assert masked.enc_ids[~inner].equal(batch.enc_ids[~inner])
