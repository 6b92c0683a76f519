"""Tests for the synthetic corpus (ablate.data.synthetic)."""

from __future__ import annotations

import math
import time
from collections import Counter
from itertools import combinations

import pytest

from ablate.data.synthetic import FACTORS, LENGTH_BANDS, SyntheticSplits, generate_synthetic

SPLITS = ("train", "valid", "test")
SPECIAL_TOKENS = {"<s>", "</s>", "<unk>", "<pad>"}


@pytest.fixture(scope="module")
def default() -> SyntheticSplits:
    """The default 10k/1k/1k corpus, generated once (and timed)."""
    start = time.perf_counter()
    splits = generate_synthetic()
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"default generation took {elapsed:.2f}s"
    return splits


# --------------------------------------------------------------------------- #
# Tiny reference models
# --------------------------------------------------------------------------- #


def unigram_bigram_ppl(
    train: list[str], test: list[str], k_uni: float = 1.0, k_bi: float = 0.05
) -> tuple[float, float]:
    """Per-token perplexities of add-k unigram and bigram models (``</s>`` predicted, OOV -> ``<unk>``)."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    contexts: Counter[str] = Counter()
    for text in train:
        prev = "<s>"
        for word in text.split() + ["</s>"]:
            unigrams[word] += 1
            bigrams[prev, word] += 1
            contexts[prev] += 1
            prev = word
    vocab_size = len(unigrams) + 1  # + <unk>
    total = sum(unigrams.values())
    nll_uni = nll_bi = 0.0
    n_tokens = 0
    for text in test:
        prev = "<s>"
        for word in [w if w in unigrams else "<unk>" for w in text.split()] + ["</s>"]:
            nll_uni -= math.log((unigrams[word] + k_uni) / (total + k_uni * vocab_size))
            nll_bi -= math.log((bigrams[prev, word] + k_bi) / (contexts[prev] + k_bi * vocab_size))
            n_tokens += 1
            prev = word
    return math.exp(nll_uni / n_tokens), math.exp(nll_bi / n_tokens)


def naive_bayes_accuracy(
    train: list[str], y_train: list[int], test: list[str], y_test: list[int], n_classes: int
) -> float:
    """Multinomial naive Bayes on token counts with add-1 smoothing; accuracy on ``test``."""
    counts = [Counter() for _ in range(n_classes)]
    priors = Counter(y_train)
    for text, label in zip(train, y_train):
        counts[label].update(text.split())
    vocab = set().union(*counts)
    denominators = [sum(c.values()) + len(vocab) for c in counts]

    def score(text: str, c: int) -> float:
        words = [w for w in text.split() if w in vocab]
        return math.log(priors[c] / len(y_train)) + sum(math.log((counts[c][w] + 1) / denominators[c]) for w in words)

    correct = sum(max(range(n_classes), key=lambda c: score(text, c)) == label for text, label in zip(test, y_test))
    return correct / len(test)


# --------------------------------------------------------------------------- #
# Structure, determinism, prefix stability
# --------------------------------------------------------------------------- #


def test_public_api_shape() -> None:
    assert FACTORS == {"topic": 8, "sentiment": 2, "tense": 3, "length": 3}
    splits = generate_synthetic(30, 7, 5, seed=1)
    assert set(splits.texts) == set(SPLITS) and set(splits.factors) == set(SPLITS)
    for split, n in zip(SPLITS, (30, 7, 5)):
        assert len(splits.texts[split]) == n
        assert set(splits.factors[split]) == set(FACTORS)
        for name, k in FACTORS.items():
            assert len(splits.factors[split][name]) == n
            assert all(0 <= v < k for v in splits.factors[split][name])


def test_empty_splits_and_negative_size() -> None:
    splits = generate_synthetic(3, 0, 0)
    assert splits.texts["valid"] == [] and splits.factors["test"]["topic"] == []
    with pytest.raises(ValueError):
        generate_synthetic(n_train=-1)


def test_deterministic_for_same_seed() -> None:
    assert generate_synthetic(200, 50, 50, seed=3) == generate_synthetic(200, 50, 50, seed=3)


def test_different_seed_gives_different_data() -> None:
    a, b = generate_synthetic(200, 50, 50, seed=3), generate_synthetic(200, 50, 50, seed=4)
    for split in SPLITS:
        assert a.texts[split] != b.texts[split]


def test_splits_differ_from_each_other() -> None:
    splits = generate_synthetic(100, 100, 100)
    assert len({tuple(splits.texts[s]) for s in SPLITS}) == 3


def test_train_prefix_stable_when_other_sizes_change() -> None:
    a = generate_synthetic(n_train=300, n_valid=10, n_test=10, seed=7)
    b = generate_synthetic(n_train=200, n_valid=77, n_test=3, seed=7)
    assert a.texts["train"][:200] == b.texts["train"]
    for name in FACTORS:
        assert a.factors["train"][name][:200] == b.factors["train"][name]
    assert a.texts["valid"] == b.texts["valid"][:10]
    assert a.texts["test"][:3] == b.texts["test"]


# --------------------------------------------------------------------------- #
# Text properties on the default corpus
# --------------------------------------------------------------------------- #


def test_text_format(default: SyntheticSplits) -> None:
    for split in SPLITS:
        for text in default.texts[split]:
            words = text.split()
            assert words, "empty sentence"
            assert text == " ".join(words), f"not single-space separated: {text!r}"
            assert text == text.lower()
            assert all(w.isalpha() for w in words), text
            assert not SPECIAL_TOKENS.intersection(words)


def test_sizes(default: SyntheticSplits) -> None:
    assert [len(default.texts[s]) for s in SPLITS] == [10_000, 1_000, 1_000]


def test_vocabulary_size(default: SyntheticSplits) -> None:
    vocab = {w for split in SPLITS for text in default.texts[split] for w in text.split()}
    assert 1_000 <= len(vocab) <= 2_000, len(vocab)


def test_lengths_follow_length_factor(default: SyntheticSplits) -> None:
    lengths = [len(t.split()) for t in default.texts["train"]]
    assert 10.0 <= sum(lengths) / len(lengths) <= 14.0
    for n, cls in zip(lengths, default.factors["train"]["length"]):
        low, high = LENGTH_BANDS[cls]
        assert low <= n <= high


def test_bigram_beats_unigram(default: SyntheticSplits) -> None:
    unigram, bigram = unigram_bigram_ppl(default.texts["train"], default.texts["test"])
    assert unigram > 100, unigram
    assert bigram < 0.6 * unigram, (unigram, bigram)


# --------------------------------------------------------------------------- #
# Factors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", list(FACTORS))
def test_factor_recoverable_by_bag_of_words(default: SyntheticSplits, name: str) -> None:
    y_train, y_test = default.factors["train"][name], default.factors["test"][name]
    accuracy = naive_bayes_accuracy(default.texts["train"], y_train, default.texts["test"], y_test, FACTORS[name])
    majority_class = Counter(y_train).most_common(1)[0][0]
    majority = sum(y == majority_class for y in y_test) / len(y_test)
    assert majority < 0.6
    assert accuracy >= 0.9, (name, accuracy)
    assert accuracy - majority > 0.3


def test_classes_balanced(default: SyntheticSplits) -> None:
    n = len(default.texts["train"])
    for name, k in FACTORS.items():
        counts = Counter(default.factors["train"][name])
        assert set(counts) == set(range(k))
        for c in range(k):
            assert abs(counts[c] / n - 1 / k) < 0.2 / k, (name, c, counts[c])


def test_factors_approximately_independent(default: SyntheticSplits) -> None:
    factors = default.factors["train"]
    n = len(default.texts["train"])
    for a, b in combinations(FACTORS, 2):
        joint = Counter(zip(factors[a], factors[b]))
        expected = n / (FACTORS[a] * FACTORS[b])
        for i in range(FACTORS[a]):
            for j in range(FACTORS[b]):
                assert abs(joint[i, j] - expected) < 0.3 * expected, (a, b, i, j, joint[i, j])
