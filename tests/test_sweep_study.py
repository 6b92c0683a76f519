"""Study expansion: axes crossed and zipped, arms chained, × datasets × seeds, exclusions, cell ids = config
hashes (stable when a study grows), and one-line errors with file, line and key. No training here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ablate.cli.main import main
from ablate.core.config import ConfigError, config_hash
from ablate.core.config_reading import build_config
from ablate.study.protocol import TOPICS
from ablate.sweep.study import load_study

BASE = """\
base:
  data: {synthetic: {n_train: 200, n_valid: 50, n_test: 50}}
  model: {emb_dim: 16, enc_hidden: 32, dec_hidden: 32, nz: 4}
  train: {epochs: 1}
  eval: {iw_samples: 5, probe: false}
"""


def write(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def study_text(arms: str, seeds: str = "[0]", extra: str = "") -> str:
    return f"study: s\n{BASE}seeds: {seeds}\narms:\n{textwrap.indent(textwrap.dedent(arms), '  ')}{extra}"


def test_axes_cross_arms_chain_and_seeds_multiply(tmp_path):
    path = write(tmp_path, study_text("""\
        - name: vae
          techniques: {}
        - name: grid
          train: {kl_weight: [0.0, 0.5, 0.8], lr: [0.001, 0.003]}
        """, seeds="[0, 1]"))
    study = load_study(path)
    assert study.counts() == {"vae": {"synthetic": 2}, "grid": {"synthetic": 12}}
    grid = [c for c in study.cells if c.arm == "grid"]
    pairs = {(c.settings["train.kl_weight"], c.settings["train.lr"], c.seed) for c in grid}
    assert len(pairs) == 12
    for cell in grid:  # the axis values are in the resolved config, and the id is its hash
        assert cell.config.train.kl_weight == cell.settings["train.kl_weight"]
        assert cell.config.train.lr == cell.settings["train.lr"]
        assert cell.cell_id == config_hash(cell.config)
    assert [c.settings for c in study.cells if c.arm == "vae"] == [{}, {}]
    assert len({c.cell_id for c in study.cells}) == len(study.cells)
    summary = study.summary()
    assert "14 cells" in summary and "grid" in summary and "vae" in summary


def test_zip_pairs_axes_instead_of_crossing(tmp_path):
    path = write(tmp_path, study_text("""\
        - name: paired
          train: {kl_weight: [0.2, 0.5, 0.8], lr: [0.001, 0.002, 0.003], batch_size: [16, 32]}
          zip: [train.kl_weight, train.lr]
        """))
    cells = load_study(path).cells
    assert len(cells) == 6  # 3 zipped pairs × 2 batch sizes
    assert {(c.config.train.kl_weight, c.config.train.lr) for c in cells} == {(0.2, 0.001), (0.5, 0.002),
                                                                               (0.8, 0.003)}


def test_exclude_drops_matching_cells_on_labels_and_config_keys(tmp_path):
    path = write(tmp_path, study_text("""\
        - name: vae
        - name: grid
          train: {kl_weight: [0.0, 0.5]}
          exclude: [{train.kl_weight: 0.0, seed: 1}]
        """, seeds="[0, 1, 2]", extra="exclude:\n  - {arm: vae, seed: [1, 2]}\n  - {train.lr: 0.5}\n"))
    study = load_study(path)
    assert study.counts() == {"vae": {"synthetic": 1}, "grid": {"synthetic": 5}}
    assert not any(c.arm == "grid" and c.seed == 1 and c.config.train.kl_weight == 0.0 for c in study.cells)
    assert study.excluded == 3
    assert any("matches no cell" in w for w in study.warnings)  # train.lr 0.5 never occurs


def test_cell_ids_are_stable_when_a_seed_a_value_or_an_arm_is_added(tmp_path):
    small = load_study(write(tmp_path, study_text("""\
        - name: grid
          train: {kl_weight: [0.0, 1.0]}
        """, seeds="[0, 1]"), "small.yaml"))
    grown = load_study(write(tmp_path, study_text("""\
        - name: renamed_arm
          train: {kl_weight: [0.0, 0.5, 1.0]}
        - name: other
          train: {lr: 0.01}
        """, seeds="[0, 1, 2]"), "grown.yaml"))
    old = {c.cell_id for c in small.cells}
    new = {c.cell_id for c in grown.cells}
    assert old < new  # every old cell keeps its id: the arm name and the position are not part of it
    assert len(new) == 3 * 3 + 3
    # the id is the hash of the resolved config: the same cell written as a plain run config gets it too
    direct = build_config({**{"seed": 1}, "data": {"synthetic": {"n_train": 200, "n_valid": 50, "n_test": 50}},
                           "model": {"emb_dim": 16, "enc_hidden": 32, "dec_hidden": 32, "nz": 4},
                           "train": {"epochs": 1, "kl_weight": 0.0}, "eval": {"iw_samples": 5, "probe": False}})
    assert config_hash(direct) in old


def test_datasets_and_models_multiply_and_label_cells(tmp_path):
    path = write(tmp_path, f"""\
        study: s
        {textwrap.indent(BASE, '        ').strip()}
        datasets:
          - synthetic
          - {{name: synthetic, label: synthetic_small, synthetic: {{n_train: 100}}}}
        models:
          - {{nz: 4}}
          - {{label: wide, nz: 8}}
        arms:
          - name: vae
        """)
    study = load_study(path)
    assert len(study.cells) == 4
    assert {(c.dataset, c.model, c.config.model.nz, c.config.data.synthetic.n_train) for c in study.cells} == {
        ("synthetic", "lstm", 4, 200), ("synthetic", "wide", 8, 200), ("synthetic_small", "lstm", 4, 100),
        ("synthetic_small", "wide", 8, 100)}
    assert all(c.config.model.emb_dim == 16 for c in study.cells)  # model entries merge over base.model


def test_list_typed_fields_are_not_axes_unless_lists_of_lists(tmp_path):
    path = write(tmp_path, study_text("""\
        - name: one
          eval: {splits: [test]}
        - name: two
          eval: {splits: [[valid], [valid, test]]}
        """))
    counts = load_study(path).counts()
    assert counts == {"one": {"synthetic": 1}, "two": {"synthetic": 2}}


def test_arm_overrides_other_sections_by_deep_merge(tmp_path):
    path = write(tmp_path, study_text("""\
        - name: autoencoder
          train: {kl_weight: 0.0}
        """))
    (cell,) = load_study(path).cells
    assert cell.config.train.kl_weight == 0.0 and cell.config.train.epochs == 1  # base keys kept


@pytest.mark.parametrize("body, line, fragment", [
    (study_text("- name: vae\n  train: {lrr: 0.1}\n"), 10, "unknown key 'train.lrr'; did you mean 'lr'?"),
    ("study: s\nbasee: {}\narms: [{name: x}]\n", 2, "unknown study key 'basee'; did you mean 'base'?"),
    (study_text("- name: vae\n- name: vae\n  train: {lr: 0.1}\n"), 10, "arm name 'vae' is used twice"),
    (study_text("- name: a\n  train: {kl_weight: [0.1, 0.2], lr: [0.1]}\n  zip: [train.kl_weight, train.lr]\n"),
     11, "zipped axes must have equal lengths"),
    (study_text("- name: a\n  train: {kl_weight: [0.1, 0.2]}\n  zip: [train.kl_weight, train.lrr]\n"), 11,
     "'train.lrr' is not a swept key"),
    (study_text("- name: a\n  train: {lr: -1.0}\n"), 10, "train.lr: Input should be greater than 0"),
    (study_text("- name: a\n  techniques: {no_such_remedy: {}}\n"), 10, "unknown technique"),
    (study_text("- name: a\n- name: b\n  train: {kl_weight: 1.0}\n"), 10, "has the same resolved config as arm 'a'"),
    (study_text("- name: a\n", extra="exclude: [{train.lrr: 1}]\n"), 10, "exclude: unknown key 'train.lrr'"),
    (study_text("- name: a\n  train: {kl_weight: []}\n"), 10, "an empty list"),
    ("study: s\narms: [{name: a}\n", 3, "invalid YAML"),
    (study_text("- name: a\n", seeds="[0, x]"), 7, "a seed must be an integer"),
], ids=["unknown-config-key", "unknown-study-key", "duplicate-arm", "zip-lengths", "zip-unknown-key",
        "invalid-value", "unknown-technique", "duplicate-config", "exclude-unknown-key", "empty-axis",
        "invalid-yaml", "bad-seed"])
def test_malformed_study_gives_one_line_with_file_line_and_key(tmp_path, body, line, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:") and f"line {line}" in message, message
    assert fragment in message, message


def test_validate_prints_counts_and_errors_on_one_line(tmp_path, capsys):
    good = write(tmp_path, study_text("- name: vae\n- name: ae\n  train: {kl_weight: 0.0}\n", seeds="[0, 1]"))
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "ae" in out
    bad = write(tmp_path, study_text("- name: vae\n  train: {lrr: 0.1}\n"), "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 10" in err and "train.lrr" in err


STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", sorted(p.relative_to(STUDIES).as_posix() for p in STUDIES.rglob("*.yaml")
                                         if p.parent.name != "examples"))
def test_shipped_studies_validate(name):
    path = STUDIES / name
    study = load_study(path)
    assert study.cells and study.name == path.stem


def test_reproduction_studies_carry_their_published_numbers():
    he = load_study(STUDIES / "reproduce" / "he2019_yahoo.yaml")
    by_arm = {r.arm: r for r in he.references}
    assert by_arm["vae_anneal"].values == {"nll": 328.6, "kl": 0.0, "mi": 0.0, "au": 0.0}
    assert by_arm["aggressive_anneal"].values["nll"] == 326.7  # the camera-ready row, not the submission's 326.6
    assert by_arm["lstm_lm"].conventions.nll == "exact" and by_arm["vae_anneal"].quoted_in
    assert by_arm["aggressive_anneal"].conventions.mi_pool_kind == "length_batch"
    assert {c.config.eval.mi_pool_order for c in he.cells} == {"length_batches"}
    li = load_study(STUDIES / "reproduce" / "li2019_ptb.yaml")
    assert {r.conventions.nll for r in li.references} == {"iw", "exact"}
    assert li.protocol is not None and {s.topic for s in li.protocol.settings} == set(TOPICS)


def _card(entries: str = "") -> str:
    """A protocol card covering every topic (one line each), plus `entries` (YAML list items)."""
    lines = [f"    - {{topic: {t}, paper: x, source: 'f.py:1'}}" for t in TOPICS]
    return "protocol:\n  paper: P\n  settings:\n" + "\n".join(lines) + "\n" + entries


REF = "references:\n  - {arm: vae, source: T, values: {nll: 1.0}}\n"


def test_a_study_with_published_numbers_needs_its_protocol_card(tmp_path):
    arms = "- name: vae\n  techniques: {}\n"
    with pytest.raises(ConfigError, match=r"references: a study with published numbers needs its protocol card"):
        load_study(write(tmp_path, study_text(arms, extra=REF)))
    study = load_study(write(tmp_path, study_text(arms, extra=REF + _card())))
    assert len(study.protocol.settings) == len(TOPICS)
    lacking = _card().replace("    - {topic: au, paper: x, source: 'f.py:1'}\n", "")
    with pytest.raises(ConfigError, match=r"protocol.settings: the card says nothing about au;"):
        load_study(write(tmp_path, study_text(arms, extra=REF + lacking)))
    with pytest.raises(ConfigError, match=r"no protocol topic 'learning_rat'; did you mean 'learning_rate'"):
        load_study(write(tmp_path, study_text(arms, extra=REF + _card("    - {topic: learning_rat, paper: x, "
                                                                        "source: y}\n"))))
    with pytest.raises(ConfigError, match=r"settings\[16\].source: Field required"):
        load_study(write(tmp_path, study_text(arms, extra=REF + _card("    - {topic: batch, paper: x}\n"))))


def test_the_card_is_checked_against_every_cell_it_covers(tmp_path):
    arms = "- name: vae\n  techniques: {}\n- name: fast\n  train: {lr: [0.001, 0.01], kl_weight: 0.5}\n"
    lr = "    - {topic: learning_rate, paper: 0.001, source: 'run.py:7', expect: {train.lr: 0.001}%s}\n"
    with pytest.raises(ConfigError, match=r"line \d+: protocol.settings\[16\].expect.train.lr: arm 'fast' has "
                                          r"train.lr = 0.01, the paper 0.001 \(run.py:7\); set it, or say why this "
                                          r"study differs with reduced: <reason>"):
        load_study(write(tmp_path, study_text(arms, extra=REF + _card(lr % ""))))
    only_vae = lr % ", arms: [vae]"
    assert load_study(write(tmp_path, study_text(arms, extra=REF + _card(only_vae)))).protocol
    reduced = lr % ", reduced: 'a CPU budget'"
    card = load_study(write(tmp_path, study_text(arms, extra=REF + _card(reduced)))).protocol
    assert card.settings[-1].reduced == "a CPU budget"
    free_bits = "    - {topic: free_bits, paper: none, source: s, expect: {techniques.free_bits: null}}\n"
    assert load_study(write(tmp_path, study_text(arms, extra=REF + _card(free_bits)))).protocol
    with pytest.raises(ConfigError, match=r"no config key 'train.lrr' in arm 'vae'"):
        load_study(write(tmp_path, study_text(arms, extra=REF + _card(lr.replace("train.lr:", "train.lrr:") % ""))))
    with pytest.raises(ConfigError, match=r"protocol.settings\[16\].arms: no arm 'vea' in this study; did you mean "
                                          r"'vae'"):
        load_study(write(tmp_path, study_text(arms, extra=REF + _card(lr % ", arms: [vea]"))))


def test_full_grid_runs_both_model_families():
    study = load_study(STUDIES / "full_grid.yaml")
    per_model = {m: sorted({c.arm for c in study.cells if c.model == m}) for m in study.models}
    assert per_model["t5"] == ["free_bits", "lee_park2021", "vanilla"] and len(per_model["lstm"]) == 12
    assert {c.config.model.name for c in study.cells if c.model == "t5"} == {"seq2seq"}
    assert len(study.cells) == 45


def test_long_form_model_entry_brings_its_own_training_settings(tmp_path):
    path = write(tmp_path, f"""\
        study: s
        {textwrap.indent(BASE, '        ').strip()}
        models:
          - {{nz: 4}}
          - label: wide
            model: {{nz: 8}}
            train: {{lr: 0.0005}}
        arms:
          - name: vae
          - name: fast
            train: {{lr: 0.003}}
        """)
    study = load_study(path)
    lr = {(c.arm, c.model): (c.config.train.lr, c.config.model.nz) for c in study.cells}
    # base ← model entry (model and train) ← arm: the arm's own setting wins over the model entry's
    assert lr == {("vae", "lstm"): (0.001, 4), ("vae", "wide"): (0.0005, 8),
                  ("fast", "lstm"): (0.003, 4), ("fast", "wide"): (0.003, 8)}


def test_label_only_exclusion_drops_cells_that_would_not_validate_for_that_model(tmp_path):
    seq2seq = "{name: seq2seq, config: {family: t5, d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}, nz: 4}"
    body = f"""\
        study: s
        {textwrap.indent(BASE, '        ').strip()}
        models:
          - {{nz: 4}}
          - label: t5
            model: {seq2seq}
        arms:
          - name: vae
          - name: wide_embeddings
            model: {{emb_dim: 32}}
        """
    with pytest.raises(ConfigError, match=r"line \d+: .*emb_dim"):  # an LSTM-only key on the seq2seq model
        load_study(write(tmp_path, body))
    study = load_study(write(tmp_path, body.rstrip(" ") + "        exclude: [{model: t5, arm: [wide_embeddings]}]\n"))
    assert sorted((c.arm, c.model) for c in study.cells) == [("vae", "lstm"), ("vae", "t5"),
                                                              ("wide_embeddings", "lstm")]
    assert study.excluded == 1 and not study.warnings


def test_label_only_exclusion_counts_every_setting_and_long_form_needs_a_model_mapping(tmp_path):
    body = f"""\
        study: s
        {textwrap.indent(BASE, '        ').strip()}
        models:
          - {{nz: 4}}
          - {{label: wide, model: {{nz: 8}}}}
        arms:
          - name: grid
            train: {{lr: [0.001, 0.003]}}
        seeds: [0, 1]
        exclude: [{{model: wide, arm: grid}}]
        """
    study = load_study(write(tmp_path, body))
    assert len(study.cells) == 4 and study.excluded == 4  # 2 settings × 2 seeds dropped on 'wide'
    bad = body.replace("{label: wide, model: {nz: 8}}", "{label: wide, model: 8}")
    with pytest.raises(ConfigError, match=r"line \d+: .*model must be a model section"):
        load_study(write(tmp_path, bad))


def test_a_study_names_its_baseline_arm_for_the_report(tmp_path):
    from ablate.report.build import study_baseline

    arms = "- name: vae\n  techniques: {}\n- name: anneal\n  train: {kl_weight: 0.5}\n"
    text = study_text(arms, extra="baseline: anneal\n")
    assert load_study(write(tmp_path, text)) and study_baseline(text) == "anneal"
    with pytest.raises(ConfigError, match=r"line \d+: baseline: no arm 'aneal' in this study; did you mean 'anneal'"):
        load_study(write(tmp_path, study_text(arms, extra="baseline: aneal\n")))
    assert study_baseline(study_text(arms)) is None and study_baseline("{{bad") is None


def test_a_study_declares_its_selection_rule_with_a_constraint(tmp_path):
    arms = "- name: vae\n  techniques: {}\n"
    study = load_study(write(tmp_path, study_text(arms, extra='select: {by: valid.nll, where: "valid.au >= 8 and '
                                                              'valid.kl > 1.5"}\n')))
    assert study.select_by == ("valid.nll",)
    assert [(c.column, c.op, c.value) for c in study.select_where] == [("valid.au", ">=", 8.0), ("valid.kl", ">", 1.5)]
    for extra, message in [
        ('select: {by: test.nll}\n', r"select.by: 'test.nll' is not a validation metric column"),
        ('select: {by: valid.nll, where: "valid.au >= eight"}\n', r"select.where: 'valid.au >= eight' is not a "
                                                                 r"condition: write <valid column> <op> <number>"),
        ('select: {by: valid.nll, where: "valid.auu >= 8"}\n', r"select.where: 'valid.auu' is not a validation "
                                                              r"metric"),
        ('select: {by: valid.nll, wher: "valid.au >= 8"}\n', r"select.wher: unknown select key 'wher'; did you "
                                                           r"mean 'where'"),
    ]:
        with pytest.raises(ConfigError, match=r"line \d+: " + message):
            load_study(write(tmp_path, study_text(arms, extra=extra)))
