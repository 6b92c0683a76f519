"""Synthetic corpus with known latent factors (the default, embedded data set).

Every sentence is produced by a small probabilistic grammar conditioned on four
independent, uniformly distributed factors. After training a text VAE on it, a
linear probe on the latent code can be scored against the true factors,
which makes posterior collapse measurable against a known answer.

Factors (``FACTORS``)
---------------------
``topic`` (8 classes: food, sport, tech, music, nature, health, money, travel)
    Chooses the pools of nouns (8 agent nouns + 32 object nouns per topic),
    transitive verbs (20 per topic) and neutral descriptive adjectives
    (12 per topic). The pools are disjoint across topics.
``sentiment`` (2 classes: negative, positive)
    Chooses the evaluative words: 30 adjectives, 12 adverbs and 10 nouns per
    polarity. Every clause carries one or two of them.
``tense`` (3 classes: past, present, future)
    Chooses the verb group: past ``V-ed`` / ``was V-ing`` / ``had V-en``,
    present ``V-s`` / ``is V-ing`` / ``has V-en``, future ``will V`` /
    ``will be V-ing`` / ``shall V`` (probabilities 0.6 / 0.25 / 0.15), and the
    copula of the evaluative tail (``was`` / ``is`` / ``will be``).
``length`` (3 classes: short, medium, long)
    Chooses the sentence plan below and a word-count band: short 5-8 (in
    practice 6-8), medium 9-14, long 15-25 words. A sentence falling outside
    its band is re-drawn (rejection sampling), so the bands are exact.

Grammar (``p=`` are the probabilities of optional parts)
---------------------------------------------------------
::

    S_short   -> CLAUSE
    S_medium  -> [OPENER p=.25] CLAUSE PP [PP p=.3] [TIME p=.3] [MANNER p=.25]
    S_long    -> [OPENER p=.3] CLAUSE_c [PP p=.5] CONJ CLAUSE_c' [PP p=.3]
                 [EVAL_TAIL p=.35] [TIME p=.2]
    CLAUSE    -> NP_subj VG NP_obj
    CLAUSE_c  -> NP_subj VG NP_obj [and NP_obj p=.15]
    CLAUSE_c' -> like CLAUSE_c, but the subject is PRONOUN (he/she/it) with p=.5
    NP_subj   -> DET [EVAL_ADJ] [TOPIC_ADJ p=.25] (AGENT p=.7 | THING)
    NP_obj    -> DET [EVAL_ADJ] [TOPIC_ADJ p=.25] THING     (plural with p=.3)
    PP        -> PREP DET [TOPIC_ADJ p=.2] THING  (plural p=.3; off-topic p=.1)
    VG        -> the tense-dependent verb group above
    EVAL_TAIL -> which (was | is | will be) (a | an) EVAL_NOUN
    OPENER    -> perhaps | meanwhile | apparently | in fact | of course | ... (14)
    MANNER    -> quickly | slowly | quietly | ... (12, sentiment-neutral)
    TIME      -> today | in the morning | at night | on monday | ... (15)
    CONJ      -> and | but | because | while | although | so | ... (12)
    PREP      -> in | on | near | with | for | ... (18)
    DET       -> the | a/an | this | that | his | ... (9; plural: the | some | ...)

Every clause carries one sentiment marker (p=.7) or two (p=.3), each in a
distinct slot among: an ``EVAL_ADJ`` on the subject (not for a pronoun), an
``EVAL_ADJ`` on the object, an ``EVAL_ADV`` placed before the main verb or
after the object (p=.5 each). The second clause of a long sentence repeats
the topic, sentiment and tense of the first. Nouns, verbs and adjectives
inside a pool are drawn with Zipf-like weights ``1 / (rank + 1) ** 0.8``;
function words use fixed hand-set weights. Inflections (plural, 3rd person,
past, ``-ing``, participle) come from English spelling rules plus a table of
irregular forms. Sentences may be semantically odd ("the oven bakes the
chef"): only the factors are controlled, not plausibility.

Sizes: 1,313 distinct topic words (inflected forms included) and 30 + 12 +
10 evaluative words per polarity; about 1,500 distinct words occur in the default 12,000 sentences.
Mean lengths are about 7 (short), 12 (medium) and 20 (long) words, 13
overall. Text is lower-case, tokens are separated by single spaces, with no
punctuation and no special tokens.

Determinism: only ``random.Random`` is used (so the output is the same on
every platform for a given Python version). Each split has its own generator
seeded from ``(seed, split name)`` through SHA-256, and sentences are drawn
one after the other, so a split's first ``n`` sentences do not depend on the
sizes of the other splits (nor on its own size beyond ``n``).
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Generic, Sequence, TypeVar

__all__ = [
    "FACTORS",
    "FACTOR_CLASS_NAMES",
    "LENGTH_BANDS",
    "SyntheticSplits",
    "generate_synthetic",
]

FACTORS: dict[str, int] = {"topic": 8, "sentiment": 2, "tense": 3, "length": 3}

FACTOR_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "topic": ("food", "sport", "tech", "music", "nature", "health", "money", "travel"),
    "sentiment": ("negative", "positive"),
    "tense": ("past", "present", "future"),
    "length": ("short", "medium", "long"),
}

LENGTH_BANDS: tuple[tuple[int, int], ...] = ((5, 8), (9, 14), (15, 25))
"""Inclusive word-count band per length class (short, medium, long)."""

_SPLITS = ("train", "valid", "test")
_MAX_TRIES = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class SyntheticSplits:
    """Generated sentences and their ground-truth factor classes, per split."""

    texts: dict[str, list[str]]
    factors: dict[str, dict[str, list[int]]]


# --------------------------------------------------------------------------- #
# Word lists
# --------------------------------------------------------------------------- #

_TOPIC_WORDS: dict[str, dict[str, str]] = {
    "food": {
        "agents": "chef cook baker waiter butcher diner caterer grocer",
        "things": "kitchen oven stove pan pot knife spoon bowl plate recipe soup bread "
        "cake pie salad sauce onion garlic tomato potato carrot cheese noodle dough "
        "menu dinner dessert cookie sandwich omelette kettle apron",
        "verbs": "bake cook stir chop slice taste season roast boil fry grill serve peel "
        "mix whisk knead grate simmer toast garnish",
        "adjs": "crispy spicy salty savory creamy crunchy sour smoky golden homemade "
        "buttery raw",
    },
    "sport": {
        "agents": "player coach referee striker goalkeeper athlete captain sprinter",
        "things": "goal ball match stadium league racket bat glove helmet trophy medal "
        "scoreboard court tournament jersey whistle penalty net rival marathon relay "
        "hurdle dumbbell treadmill locker playoff sneaker puck wicket opponent paddle "
        "kickoff",
        "verbs": "kick tackle pass dribble shoot defend block sprint catch throw win lose "
        "chase punch dodge hit cheer smash lift outrun",
        "adjs": "athletic competitive muscular defensive olympic professional amateur "
        "undefeated varsity veteran agile tactical",
    },
    "tech": {
        "agents": "engineer programmer developer technician hacker coder analyst tester",
        "things": "computer laptop server network database keyboard screen monitor robot "
        "sensor chip battery cable router app website browser password algorithm "
        "compiler kernel printer tablet drone circuit processor modem bug script "
        "cursor pixel gadget",
        "verbs": "install debug compile deploy reboot upload download encrypt update test "
        "hack configure format scan patch optimize render index automate sync",
        "adjs": "digital wireless virtual electronic robotic automated technical binary "
        "mobile online portable networked",
    },
    "music": {
        "agents": "singer guitarist drummer pianist violinist composer conductor bassist",
        "things": "band orchestra choir guitar piano violin drum flute trumpet cello harp "
        "melody song album chorus lyric rhythm tune concert microphone record ballad "
        "anthem opera symphony chord beat verse solo duet playlist saxophone",
        "verbs": "sing play strum hum compose perform rehearse conduct pluck remix chant "
        "applaud clap harmonize improvise transpose arrange hear amplify orchestrate",
        "adjs": "acoustic musical melodic rhythmic classical orchestral vocal electric "
        "symphonic lyrical harmonic jazzy",
    },
    "nature": {
        "agents": "hiker ranger botanist hunter explorer gardener forester naturalist",
        "things": "forest river mountain valley meadow ocean lake tree flower leaf branch "
        "bird eagle wolf deer fox bear rabbit squirrel owl storm cloud glacier canyon "
        "cliff cave pond hill island volcano swamp fern",
        "verbs": "climb hike explore plant grow feed hunt watch track observe gather "
        "flood freeze melt cross protect shelter bury spot trap",
        "adjs": "wild rocky misty snowy rainy windy muddy leafy tropical coastal alpine "
        "mossy",
    },
    "health": {
        "agents": "doctor nurse surgeon paramedic pharmacist dentist therapist physician",
        "things": "patient clinic hospital ward pill vaccine injection bandage wound fever "
        "cough virus infection symptom diagnosis therapy treatment dose syringe "
        "stethoscope ambulance pharmacy prescription surgery medicine ointment splint "
        "pulse kidney tumor allergy vitamin",
        "verbs": "treat heal diagnose examine inject prescribe vaccinate cure stitch "
        "massage sterilize immunize discharge soothe relieve disinfect medicate sedate "
        "resuscitate wrap",
        "adjs": "medical clinical surgical chronic acute viral sterile feverish "
        "contagious cardiac immune pediatric",
    },
    "money": {
        "agents": "banker investor trader accountant broker auditor merchant cashier",
        "things": "bank loan mortgage stock bond share fund budget tax invoice receipt "
        "wallet coin dollar credit debt profit salary pension account ledger market "
        "portfolio dividend asset currency cheque payment deposit client contract "
        "voucher",
        "verbs": "invest borrow lend save spend pay buy sell trade audit deposit withdraw "
        "owe earn refund charge insure auction hedge purchase",
        "adjs": "financial fiscal monetary annual quarterly taxable liquid corporate "
        "economic offshore retail wholesale",
    },
    "travel": {
        "agents": "traveler tourist pilot passenger driver guide sailor backpacker",
        "things": "airport flight plane ticket passport suitcase landmark backpack hotel "
        "hostel map compass route journey voyage cruise ferry taxi bus station highway "
        "border visa souvenir postcard harbor resort cabin tent camera itinerary motel",
        "verbs": "travel fly drive book pack unpack visit board tour navigate rent ride "
        "sail photograph reserve cancel reach land miss postpone",
        "adjs": "scenic foreign exotic touristy international domestic overnight seaside "
        "historic rural urban transatlantic",
    },
}

_EVAL_WORDS: dict[str, dict[str, str]] = {
    "negative": {
        "adjs": "terrible awful horrible dreadful miserable nasty ugly clumsy rude lazy "
        "boring dull broken filthy disgusting useless careless gloomy hostile annoying "
        "pathetic shabby unreliable mediocre sloppy grim bitter awkward tedious worthless",
        "advs": "sadly badly poorly clumsily angrily lazily carelessly awkwardly "
        "miserably rudely terribly sloppily",
        "nouns": "disaster failure mess nightmare shame fiasco letdown catastrophe "
        "blunder tragedy",
    },
    "positive": {
        "adjs": "wonderful excellent brilliant delightful lovely superb marvelous "
        "splendid fantastic charming pleasant cheerful gorgeous elegant graceful "
        "friendly clever generous reliable impressive remarkable joyful glorious "
        "perfect beautiful terrific admirable kind amazing fabulous",
        "advs": "happily gladly gracefully brilliantly wonderfully proudly cheerfully "
        "skillfully beautifully elegantly perfectly joyfully",
        "nouns": "delight triumph success pleasure joy treat blessing marvel masterpiece "
        "victory",
    },
}

# Function words with hand-set weights.
_SING_DETS = {"the": 50, "a": 20, "this": 5, "that": 5, "his": 5, "her": 5, "their": 4, "our": 3, "my": 3}
_PLUR_DETS = {"the": 40, "some": 15, "these": 8, "those": 8, "many": 8, "their": 7, "our": 5, "two": 5, "three": 4}
_PREPS = {
    "in": 14, "on": 10, "near": 8, "with": 12, "behind": 4, "beside": 4, "under": 5,
    "inside": 3, "outside": 3, "across": 3, "around": 4, "without": 4, "for": 8,
    "from": 6, "into": 4, "through": 3, "against": 3, "beyond": 2,
}
_OPENERS = {
    "perhaps": 8, "meanwhile": 6, "apparently": 6, "honestly": 4, "surprisingly": 4,
    "naturally": 4, "frankly": 3, "indeed": 4, "again": 3, "in fact": 5,
    "of course": 5, "as usual": 4, "after all": 3, "once again": 3,
}
_MANNER = {
    "quickly": 8, "slowly": 7, "quietly": 6, "loudly": 4, "carefully": 6, "suddenly": 5,
    "calmly": 4, "briefly": 4, "openly": 2, "silently": 3, "gently": 3, "firmly": 3,
}
_TIMES = {
    "today": 8, "this week": 4, "in the morning": 6, "in the evening": 5, "at night": 5,
    "at dawn": 3, "at noon": 3, "at dusk": 2, "on monday": 2, "on tuesday": 2,
    "on wednesday": 2, "on thursday": 2, "on friday": 2, "on saturday": 2, "on sunday": 2,
}
_CONJS = {
    "and": 20, "but": 12, "because": 10, "while": 8, "although": 6, "so": 6,
    "since": 4, "when": 6, "after": 5, "before": 5, "whereas": 2, "until": 2,
}
_PRONOUNS = {"he": 4, "she": 4, "it": 3}

# Verb-group choices per tense: (probability weight, template). "V" is replaced
# by the form named after it.
_VERB_GROUPS: tuple[tuple[tuple[float, tuple[str, ...]], ...], ...] = (
    ((0.6, ("past",)), (0.25, ("was", "ing")), (0.15, ("had", "participle"))),
    ((0.6, ("third",)), (0.25, ("is", "ing")), (0.15, ("has", "participle"))),
    ((0.6, ("will", "base")), (0.25, ("will", "be", "ing")), (0.15, ("shall", "base"))),
)
_COPULA = (("was",), ("is",), ("will", "be"))
_VERB_FORMS = ("base", "third", "past", "ing", "participle")

# --------------------------------------------------------------------------- #
# Inflection
# --------------------------------------------------------------------------- #

_VOWELS = frozenset("aeiou")
_IRREGULAR_PLURALS = {
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "deer": "deer",
    "diagnosis": "diagnoses", "tomato": "tomatoes", "potato": "potatoes",
    "volcano": "volcanoes",
}
_IRREGULAR_VERBS = {  # base -> (past, participle)
    "shoot": ("shot", "shot"), "catch": ("caught", "caught"), "throw": ("threw", "thrown"),
    "win": ("won", "won"), "lose": ("lost", "lost"), "hit": ("hit", "hit"),
    "outrun": ("outran", "outrun"), "sing": ("sang", "sung"), "hear": ("heard", "heard"),
    "grow": ("grew", "grown"), "feed": ("fed", "fed"), "freeze": ("froze", "frozen"),
    "lend": ("lent", "lent"), "spend": ("spent", "spent"), "pay": ("paid", "paid"),
    "buy": ("bought", "bought"), "sell": ("sold", "sold"),
    "withdraw": ("withdrew", "withdrawn"), "fly": ("flew", "flown"),
    "drive": ("drove", "driven"), "ride": ("rode", "ridden"),
}
_FORCE_DOUBLE = frozenset({"debug", "format", "outrun"})


def _vowel_groups(word: str) -> int:
    """Number of maximal runs of vowels (a rough syllable count)."""
    groups, prev = 0, False
    for ch in word:
        cur = ch in _VOWELS
        groups += cur and not prev
        prev = cur
    return groups


def _doubles_final(word: str) -> bool:
    """Whether the final consonant doubles before -ed/-ing (stop -> stopped)."""
    if word in _FORCE_DOUBLE:
        return True
    return (
        len(word) >= 3
        and _vowel_groups(word) == 1
        and word[-1] not in _VOWELS
        and word[-1] not in "wxy"
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def _add_s(word: str) -> str:
    """Plural noun / third person singular spelling (box -> boxes, fly -> flies)."""
    if word.endswith(("s", "x", "z", "ch", "sh")) or word in ("go", "do"):
        return word + "es"
    if word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def _plural(noun: str) -> str:
    """Plural of a noun."""
    return _IRREGULAR_PLURALS.get(noun) or _add_s(noun)


def _regular_past(verb: str) -> str:
    """Regular -ed form (bake -> baked, fry -> fried, stop -> stopped)."""
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ied"
    if _doubles_final(verb):
        return verb + verb[-1] + "ed"
    return verb + "ed"


def _ing(verb: str) -> str:
    """Present participle (bake -> baking, stir -> stirring, see -> seeing)."""
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    if _doubles_final(verb):
        return verb + verb[-1] + "ing"
    return verb + "ing"


def _verb_forms(verb: str) -> dict[str, str]:
    """All forms used by the grammar, keyed by ``_VERB_FORMS`` names."""
    past, participle = _IRREGULAR_VERBS.get(verb, (_regular_past(verb),) * 2)
    return {"base": verb, "third": _add_s(verb), "past": past, "ing": _ing(verb), "participle": participle}


# --------------------------------------------------------------------------- #
# Weighted pools and the lexicon
# --------------------------------------------------------------------------- #


class _Pool(Generic[T]):
    """Items with fixed sampling weights; draws with one ``rng.random()``."""

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        if len(items) != len(weights) or not items:
            raise ValueError("items and weights must be non-empty and equally long")
        self.items = tuple(items)
        self._cum = tuple(accumulate(weights))
        self._total = self._cum[-1]

    def draw(self, rng: random.Random) -> T:
        """One weighted draw."""
        return self.items[bisect(self._cum, rng.random() * self._total)]


def _zipf(items: Sequence[T], exponent: float = 0.8) -> _Pool[T]:
    """Pool whose weights decay as ``1 / (rank + 1) ** exponent`` in list order."""
    return _Pool(items, [1.0 / (rank + 1) ** exponent for rank in range(len(items))])


def _weighted(table: dict[str, float]) -> _Pool[str]:
    """Pool from a ``word -> weight`` table."""
    return _Pool(list(table), list(table.values()))


@dataclass(frozen=True)
class _Topic:
    agents: _Pool[str]
    things: _Pool[tuple[str, str]]  # (singular, plural)
    verbs: _Pool[dict[str, str]]
    adjs: _Pool[str]


@dataclass(frozen=True)
class _Polarity:
    adjs: _Pool[str]
    advs: _Pool[str]
    nouns: _Pool[str]


@dataclass(frozen=True)
class _Lexicon:
    topics: tuple[_Topic, ...]
    polarities: tuple[_Polarity, ...]
    sing_dets: _Pool[str]
    plur_dets: _Pool[str]
    preps: _Pool[str]
    openers: _Pool[str]
    manner: _Pool[str]
    times: _Pool[str]
    conjs: _Pool[str]
    pronouns: _Pool[str]


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    """Build (once) the weighted word pools from the word lists."""
    topics = []
    for name in FACTOR_CLASS_NAMES["topic"]:
        words = {key: value.split() for key, value in _TOPIC_WORDS[name].items()}
        topics.append(
            _Topic(
                agents=_zipf(words["agents"]),
                things=_zipf([(noun, _plural(noun)) for noun in words["things"]]),
                verbs=_zipf([_verb_forms(verb) for verb in words["verbs"]]),
                adjs=_zipf(words["adjs"]),
            )
        )
    polarities = []
    for name in FACTOR_CLASS_NAMES["sentiment"]:
        words = {key: value.split() for key, value in _EVAL_WORDS[name].items()}
        polarities.append(_Polarity(_zipf(words["adjs"]), _zipf(words["advs"]), _zipf(words["nouns"])))
    return _Lexicon(
        topics=tuple(topics),
        polarities=tuple(polarities),
        sing_dets=_weighted(_SING_DETS),
        plur_dets=_weighted(_PLUR_DETS),
        preps=_weighted(_PREPS),
        openers=_weighted(_OPENERS),
        manner=_weighted(_MANNER),
        times=_weighted(_TIMES),
        conjs=_weighted(_CONJS),
        pronouns=_weighted(_PRONOUNS),
    )


# --------------------------------------------------------------------------- #
# Grammar
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Factors:
    topic: int
    sentiment: int
    tense: int
    length: int


def _article(det: str, next_word: str) -> str:
    """``a`` -> ``an`` before a vowel letter."""
    return "an" if det == "a" and next_word[0] in _VOWELS else det


def _noun_phrase(
    rng: random.Random,
    lex: _Lexicon,
    topic: int,
    *,
    agent: bool,
    eval_adj: str | None,
    topic_adj_p: float,
    plural_p: float = 0.0,
) -> list[str]:
    """DET [EVAL_ADJ] [TOPIC_ADJ] NOUN."""
    pools = lex.topics[topic]
    plural = False
    if agent:
        noun = pools.agents.draw(rng)
    else:
        singular, plural_form = pools.things.draw(rng)
        plural = rng.random() < plural_p
        noun = plural_form if plural else singular
    words = [noun]
    if rng.random() < topic_adj_p:
        words.insert(0, pools.adjs.draw(rng))
    if eval_adj is not None:
        words.insert(0, eval_adj)
    det = (lex.plur_dets if plural else lex.sing_dets).draw(rng)
    return [_article(det, words[0]), *words]


def _verb_group(rng: random.Random, lex: _Lexicon, topic: int, tense: int) -> list[str]:
    """Tense-marked verb group; the main verb is the last word."""
    verb = lex.topics[topic].verbs.draw(rng)
    r, template = rng.random(), _VERB_GROUPS[tense][-1][1]
    for weight, candidate in _VERB_GROUPS[tense]:
        if r < weight:
            template = candidate
            break
        r -= weight
    return [verb[word] if word in _VERB_FORMS else word for word in template]


def _prep_phrase(rng: random.Random, lex: _Lexicon, topic: int) -> list[str]:
    """PREP NP_obj, with a 10% chance of an off-topic noun (noise)."""
    if rng.random() < 0.1:
        topic = (topic + 1 + rng.randrange(len(lex.topics) - 1)) % len(lex.topics)
    np = _noun_phrase(rng, lex, topic, agent=False, eval_adj=None, topic_adj_p=0.2, plural_p=0.3)
    return [lex.preps.draw(rng), *np]


def _clause(
    rng: random.Random,
    lex: _Lexicon,
    f: _Factors,
    *,
    n_pp: int,
    pronoun_subject: bool = False,
    coordination_p: float = 0.0,
) -> list[str]:
    """NP_subj VG NP_obj [and NP_obj] PP*, with one or two sentiment markers."""
    polarity = lex.polarities[f.sentiment]
    slots = ["obj", "adv"] if pronoun_subject else ["subj", "obj", "adv"]
    marked = rng.sample(slots, 1 if rng.random() < 0.7 else 2)
    topic_adj_p = 0.25

    if pronoun_subject:
        subject = [lex.pronouns.draw(rng)]
    else:
        eval_adj = polarity.adjs.draw(rng) if "subj" in marked else None
        agent = rng.random() < 0.7
        subject = _noun_phrase(rng, lex, f.topic, agent=agent, eval_adj=eval_adj, topic_adj_p=topic_adj_p)
    verb_group = _verb_group(rng, lex, f.topic, f.tense)
    eval_adj = polarity.adjs.draw(rng) if "obj" in marked else None
    obj = _noun_phrase(rng, lex, f.topic, agent=False, eval_adj=eval_adj, topic_adj_p=topic_adj_p, plural_p=0.3)
    if rng.random() < coordination_p:
        obj += ["and", *_noun_phrase(rng, lex, f.topic, agent=False, eval_adj=None, topic_adj_p=0.2, plural_p=0.3)]
    if "adv" in marked:
        adverb = polarity.advs.draw(rng)
        if rng.random() < 0.5:
            verb_group.insert(len(verb_group) - 1, adverb)
        else:
            obj.append(adverb)
    words = subject + verb_group + obj
    for _ in range(n_pp):
        words += _prep_phrase(rng, lex, f.topic)
    return words


def _optional(rng: random.Random, pool: _Pool[str], p: float) -> list[str]:
    """With probability ``p``, one (possibly multi-word) phrase from ``pool``."""
    return pool.draw(rng).split() if rng.random() < p else []


def _short(rng: random.Random, lex: _Lexicon, f: _Factors) -> list[str]:
    """S_short -> CLAUSE."""
    return _clause(rng, lex, f, n_pp=0)


def _medium(rng: random.Random, lex: _Lexicon, f: _Factors) -> list[str]:
    """S_medium -> [OPENER] CLAUSE PP [PP] [TIME] [MANNER]."""
    words = _optional(rng, lex.openers, 0.25)
    words += _clause(rng, lex, f, n_pp=1 + (rng.random() < 0.3))
    return words + _optional(rng, lex.times, 0.3) + _optional(rng, lex.manner, 0.25)


def _long(rng: random.Random, lex: _Lexicon, f: _Factors) -> list[str]:
    """S_long -> [OPENER] CLAUSE [PP] CONJ CLAUSE' [PP] [EVAL_TAIL] [TIME]."""
    words = _optional(rng, lex.openers, 0.3)
    words += _clause(rng, lex, f, n_pp=int(rng.random() < 0.5), coordination_p=0.15)
    words.append(lex.conjs.draw(rng))
    pronoun = rng.random() < 0.5
    words += _clause(rng, lex, f, n_pp=int(rng.random() < 0.3), pronoun_subject=pronoun, coordination_p=0.15)
    if rng.random() < 0.35:
        noun = lex.polarities[f.sentiment].nouns.draw(rng)
        words += ["which", *_COPULA[f.tense], _article("a", noun), noun]
    return words + _optional(rng, lex.times, 0.2)


_PLANS = (_short, _medium, _long)


def _sentence(rng: random.Random, lex: _Lexicon, f: _Factors) -> str:
    """Draw sentences for ``f`` until one falls inside its length band."""
    low, high = LENGTH_BANDS[f.length]
    for _ in range(_MAX_TRIES):
        words = _PLANS[f.length](rng, lex, f)
        if low <= len(words) <= high:
            return " ".join(words)
    raise RuntimeError(f"could not draw a sentence in band {low}-{high}")  # pragma: no cover


def _split_rng(seed: int, split: str) -> random.Random:
    """Independent, platform-stable generator for one split."""
    digest = hashlib.sha256(f"ablate.synthetic:{seed}:{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _generate_split(rng: random.Random, n: int) -> tuple[list[str], dict[str, list[int]]]:
    """``n`` sentences with uniformly and independently drawn factors."""
    lex = _lexicon()
    texts: list[str] = []
    factors: dict[str, list[int]] = {name: [] for name in FACTORS}
    for _ in range(n):
        classes = {name: rng.randrange(k) for name, k in FACTORS.items()}
        texts.append(_sentence(rng, lex, _Factors(**classes)))
        for name, value in classes.items():
            factors[name].append(value)
    return texts, factors


def generate_synthetic(
    n_train: int = 10_000, n_valid: int = 1_000, n_test: int = 1_000, seed: int = 0
) -> SyntheticSplits:
    """Generate the train/valid/test splits of the synthetic corpus.

    Deterministic in ``seed``; each split's prefix is independent of the other
    splits' sizes. Returns texts (space-joined lower-case tokens) and the
    class id of every factor in ``FACTORS`` for each sentence.
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    texts: dict[str, list[str]] = {}
    factors: dict[str, dict[str, list[int]]] = {}
    for split in _SPLITS:
        if sizes[split] < 0:
            raise ValueError(f"n_{split} must be >= 0, got {sizes[split]}")
        texts[split], factors[split] = _generate_split(_split_rng(seed, split), sizes[split])
    return SyntheticSplits(texts=texts, factors=factors)
