"""A corpus of malformed run configs and studies, each of which must be refused by `validate`, `run` and `sweep`
with one short line (file, key, fix), exit status 2, no traceback and nothing written (issue 12).

`{tmp}` in a text is replaced by the test's temporary folder. Every case is wrong in one way only, on top of a
config that is otherwise valid and tiny.
"""

from __future__ import annotations

from dataclasses import dataclass

TINY = """\
seed: 0
data: {name: synthetic, synthetic: {n_train: 40, n_valid: 10, n_test: 10}}
model: {name: lstm, emb_dim: 8, enc_hidden: 8, dec_hidden: 8, nz: 2}
train: {epochs: 1, batch_size: 8, device: cpu}
eval: {iw_samples: 2, probe: false}
"""

STUDY = """\
study: bad
base:
  data: {name: synthetic, synthetic: {n_train: 40, n_valid: 10, n_test: 10}}
  model: {name: lstm, emb_dim: 8, enc_hidden: 8, dec_hidden: 8, nz: 2}
  train: {epochs: 1, batch_size: 8, device: cpu}
  eval: {iw_samples: 2, probe: false}
seeds: [0]
arms:
  - name: vanilla
    techniques: {}
"""


def _bomb(levels: int, width: int = 9) -> str:
    """The billion-laughs alias nest: each level a list of `width` aliases of the one before."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _config(**sections: str) -> str:
    """TINY with whole lines replaced: _config(train='train: {...}')."""
    lines = TINY.splitlines()
    out = []
    for line in lines:
        key = line.split(":", 1)[0]
        out.append(sections.pop(key) if key in sections else line)
    out.extend(sections.values())
    return "\n".join(out) + "\n"


def _study(extra: str = "", **replace: str) -> str:
    text = STUDY
    for old, new in replace.items():
        old = old.replace("__", " ")
        assert old in text, old
        text = text.replace(old, new)
    return text + extra


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "config" or "study"
    text: str


CONFIGS = [
    Case("empty file", "config", ""),
    Case("only comments", "config", "# nothing here\n"),
    Case("yaml syntax", "config", "train: {epochs: 1\n"),
    Case("tab indentation", "config", "train:\n\tepochs: 1\n"),
    Case("a list, not a mapping", "config", "- seed: 0\n"),
    Case("a scalar", "config", "hello\n"),
    Case("binary garbage", "config", "\x00\x01\x02\xff\xfe"),
    Case("python tag", "config", "seed: !!python/object/apply:os.system ['echo pwned']\n"),
    Case("unknown section", "config", TINY + "trian: {epochs: 1}\n"),
    Case("unknown key", "config", _config(train="train: {epochs: 1, lr_rate: 0.1, device: cpu}")),
    Case("wrong type", "config", _config(train="train: {epochs: ten, device: cpu}")),
    Case("negative epochs", "config", _config(train="train: {epochs: -1, device: cpu}")),
    Case("seed overflow", "config", _config(seed="seed: 1e26")),
    Case("negative seed", "config", _config(seed="seed: -5")),
    Case("seed a string", "config", _config(seed="seed: one")),
    Case("no such device", "config", _config(train="train: {epochs: 1, device: tpu9}")),
    Case("cuda absent", "config", _config(train="train: {epochs: 1, device: 'cuda:7'}")),
    Case("lr infinite", "config", _config(train="train: {epochs: 1, lr: .inf, device: cpu}")),
    Case("lr nan", "config", _config(train="train: {epochs: 1, lr: .nan, device: cpu}")),
    Case("kl_weight infinite", "config", _config(train="train: {epochs: 1, kl_weight: .inf, device: cpu}")),
    Case("grad_clip negative", "config", _config(train="train: {epochs: 1, grad_clip: -1, device: cpu}")),
    Case("huge nz", "config", _config(model="model: {name: lstm, nz: 1e12}")),
    Case("huge hidden", "config", _config(model="model: {name: lstm, enc_hidden: 100000000}")),
    Case("huge batch", "config", _config(train="train: {epochs: 1, batch_size: 1e15, device: cpu}")),
    Case("huge epochs", "config", _config(train="train: {epochs: 1e18, device: cpu}")),
    Case("huge iw samples", "config", _config(eval="eval: {iw_samples: 1e12}")),
    Case("threads zero", "config", _config(train="train: {epochs: 1, threads: 0, device: cpu}")),
    Case("huge threads", "config", _config(train="train: {epochs: 1, threads: 100000000, device: cpu}")),
    Case("missing data path", "config", _config(data="data: {name: ptb, path: '{tmp}/no/such/folder'}")),
    Case("data path needed", "config", _config(data="data: {name: ptb}")),
    Case("data path is a file", "config", _config(data="data: {name: lines, path: '{tmp}/a_file.txt'}")),
    Case("split file missing", "config", _config(data="data: {name: lines, path: '{tmp}/only_train'}")),
    Case("named split file missing", "config",
         _config(data="data: {name: lines, path: '{tmp}/only_train', files: {valid: nope.txt}}")),
    Case("hf data file missing", "config",
         _config(data="data: {name: hf, hf_name: text, hf_data_files: {train: '{tmp}/nope.txt'}}")),
    Case("unknown corpus", "config", _config(data="data: {name: wikitext}")),
    Case("unknown model", "config", _config(model="model: {name: transformer}")),
    Case("model a number", "config", _config(model="model: 5")),
    Case("seq2seq folder missing", "config", _config(model="model: {name: seq2seq, pretrained: '{tmp}/no_t5'}")),
    Case("seq2seq tokenizer missing", "config",
         _config(model="model: {name: seq2seq, config: {family: t5}, tokenizer: '{tmp}/no_tokenizer'}")),
    Case("unknown technique", "config", TINY + "techniques: {free_bit: {}}\n"),
    Case("technique field unknown", "config", TINY + "techniques: {free_bits: {lamda: 1}}\n"),
    Case("technique field type", "config", TINY + "techniques: {free_bits: {lambda_per_dim: many}}\n"),
    Case("technique infinite", "config", TINY + "techniques: {kl_constraint: {C: .inf}}\n"),
    Case("two KL terms", "config", TINY + "techniques: {free_bits: {}, kl_constraint: {}}\n"),
    Case("techniques a list", "config", TINY + "techniques: [free_bits]\n"),
    Case("iw samples zero", "config", _config(eval="eval: {iw_samples: 0}")),
    Case("mi pool one", "config", _config(eval="eval: {mi_pool: 1}")),
    Case("eval split unknown", "config", _config(eval="eval: {splits: [train]}")),
    Case("duplicate key", "config", TINY + "seed: 1\n"),
    Case("non-string key", "config", TINY + "1: 2\n"),
    Case("yaml bomb", "config", _bomb(9) + TINY),
    Case("recursive alias", "config", TINY + "techniques: &t {free_bits: *t}\n"),
    Case("small yaml bomb in a value", "config", _bomb(6) + _config(seed="seed: *a6")),
    Case("study key in a run config", "config", TINY + "arms: []\n"),
    Case("deep nesting", "config", "train: " + "[" * 5000 + "]" * 5000 + "\n"),
    Case("huge string", "config", _config(train="train: {device: '" + "x" * 100_000 + "'}")),
]

STUDIES = [
    Case("study: no arms", "study", "study: bad\nbase: {}\n"),
    Case("study: empty arms", "study", _study(**{"arms:\n  - name: vanilla\n    techniques: {}\n": "arms: []\n"})),
    Case("study: arm without name", "study", _study(**{"- name: vanilla": "- techniques: {}\n    train: {}"})),
    Case("study: name with a slash", "study", _study(**{"study: bad": "study: ../escape"})),
    Case("study: name dot-dot", "study", _study(**{"study: bad": "study: '..'"})),
    Case("study: arm name with a slash", "study", _study(**{"name: vanilla": "name: a/b"})),
    Case("study: duplicate arm", "study", _study("  - name: vanilla\n    techniques: {}\n")),
    Case("study: unknown top key", "study", _study("armz: []\n")),
    Case("study: unknown arm key", "study", _study(**{"techniques: {}": "techniques: {}\n    technique: {}"})),
    Case("study: unknown technique", "study", _study(**{"techniques: {}": "techniques: {free_bit: {}}"})),
    Case("study: grid not a list", "study",
         _study(**{"techniques: {}": "techniques: {free_bits: {lambda_per_dim: {a: 1}}}"})),
    Case("study: bad base", "study", _study(**{"epochs: 1,": "epochs: -3,"})),
    Case("study: base device", "study", _study(**{"device: cpu": "device: tpu9"})),
    Case("study: base data path", "study",
         _study(**{"data: {name: synthetic, synthetic: {n_train: 40, n_valid: 10, n_test: 10}}":
                   "data: {name: ptb, path: '{tmp}/missing'}"})),
    Case("study: seeds not a list", "study", _study(**{"seeds: [0]": "seeds: zero"})),
    Case("study: seed overflow", "study", _study(**{"seeds: [0]": "seeds: [1e26]"})),
    Case("study: empty seeds", "study", _study(**{"seeds: [0]": "seeds: []"})),
    Case("study: exclude unknown arm", "study", _study("exclude: [{arm: vanila}]\n")),
    Case("study: exclude unknown key", "study", _study("exclude: [{armm: vanilla}]\n")),
    Case("study: excludes every cell", "study", _study("exclude: [{arm: vanilla}]\n")),
    Case("study: datasets empty", "study", _study("datasets: []\n")),
    Case("study: unknown dataset", "study", _study("datasets: [wikitext]\n")),
    Case("study: models unknown", "study", _study("models: [gpt5]\n")),
    Case("study: references missing", "study", _study("references: [{arm: nope, source: x, values: {}}]\n")),
    Case("study: arm lr infinite", "study", _study(**{"techniques: {}": "techniques: {}\n    train: {lr: .inf}"})),
    Case("study: yaml bomb", "study", _bomb(9) + STUDY),
    Case("study: small bomb in arms", "study", _bomb(5) + _study(**{"techniques: {}": "techniques: {}\n    x: *a5"})),
    Case("study: yaml syntax", "study", STUDY + "arms: [\n"),
    Case("study: storage unreachable", "study", _study("storage: postgresql://u:secret@127.0.0.1:1/db\n")),
]

CASES = CONFIGS + STUDIES

MORE = [
    Case("hf text loader without files", "config", _config(data="data: {name: hf, hf_name: text}")),
    Case("hf dataset not cached offline", "config", _config(data="data: {name: hf, hf_name: nosuchorg/nosuchset}")),
    Case("empty split file", "config", _config(data="data: {name: lines, path: '{tmp}/empty_splits'}")),
    Case("latin-1 split file", "config", _config(data="data: {name: lines, path: '{tmp}/latin1_splits'}")),
    Case("pretrained folder without a model", "config",
         _config(model="model: {name: seq2seq, pretrained: '{tmp}/only_train'}")),
    Case("tokenizer folder without a tokenizer", "config",
         _config(model="model: {name: seq2seq, config: {family: t5}, tokenizer: '{tmp}/only_train'}")),
    Case("optimizer unknown", "config", _config(train="train: {optimizer: adamw, device: cpu}")),
    Case("mi pool word", "config", _config(eval="eval: {mi_pool: everything}")),
    Case("heads do not divide the width", "config",
         _config(model="model: {name: seq2seq, config: {family: t5, d_model: 100, num_heads: 3}}")),
    Case("bart heads do not divide the width", "config",
         _config(model="model: {name: seq2seq, config: {family: bart, d_model: 64, num_heads: 5}}")),
    Case("study: a grid of a million settings", "study",
         _study(**{"techniques: {}": "techniques: {}\n    train: {lr: " + str([0.001 + i * 1e-6 for i in range(1000)])
                   + ", batch_size: " + str(list(range(1, 1001))) + "}"})),
    Case("study: seeds repeat", "study", _study(**{"seeds: [0]": "seeds: [0, 0]"})),
    Case("study: model entry unknown key", "study", _study("models: [{label: x, modle: {}}]\n")),
    Case("study: dataset without path", "study", _study("datasets: [{name: ptb}]\n")),
    Case("study: a run config passed as study", "study", TINY + "study: x\n"),
    # issue 27: what passed validation and failed later, or reached the terminal raw
    Case("a NUL byte", "config", TINY + "# a\x00b\n"),
    Case("a raw escape character", "config", TINY + "# \x1b]0;retitled\x07\n"),
    Case("an escape sequence in a value", "config", _config(train='train: {device: "cpu\\x1b[2J"}')),
    Case("study: an escape sequence in the name", "study", _study(**{"study: bad": 'study: "bad\\x1b]0;x\\x07"'})),
    Case("study: a study name longer than a file name", "study", _study(**{"study: bad": "study: " + "s" * 300})),
    Case("study: an arm name longer than a file name", "study", _study(**{"name: vanilla": "name: " + "a" * 300})),
] + [
    Case(f"study: search {what}", "study",
         _study(**{"techniques: {}": "techniques: {free_bits: {}}\n    search: {trials: 2, space: "
                   "{techniques.free_bits.lambda_per_dim: " + space + "}}"}))
    for what, space in (("step zero", "{low: 0.1, high: 1.0, step: 0}"),
                        ("step negative", "{low: 0.1, high: 1.0, step: -0.1}"),
                        ("step a string", "{low: 0.1, high: 1.0, step: tenth}"),
                        ("step wider than the range", "{low: 0.1, high: 1.0, step: 5}"),
                        ("log a string", "{low: 0.1, high: 1.0, log: yes please}"))
] + [
    Case(f"study: search int range {what}", "study",
         _study(**{"techniques: {}": "techniques: {}\n    search: {trials: 2, space: {train.batch_size: "
                   + space + "}}"}))
    for what, space in (("fractional step", "{low: 8, high: 64, step: 0.5, int: true}"),
                        ("int a string", "{low: 8, high: 64, int: 'true'}"))
]

CASES = CONFIGS + STUDIES + MORE
