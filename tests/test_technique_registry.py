"""The technique registry: every technique registered with its metadata, "did you mean" errors for unknown
techniques and fields, the free_bits + kl_constraint conflict rejected at validation with the reason, versions and
the resolved config in the result row, the composition of the loss, and the `ablate techniques` listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ablate.cli.main import main
from ablate.core.config import ConfigError
from ablate.core.config_reading import build_config, load_config
from ablate.engine.run import base_row
from ablate.techniques.base import LossParts, Step, Technique, TechniqueConfig, TrainContext, compose_loss
from ablate.data.tokenize import SpecialIds
from ablate.core.technique_registry import describe, techniques
from ablate.techniques.base import build_techniques
from ablate.core.technique_registry import get, resolve_techniques

EXAMPLES = Path(__file__).resolve().parents[1] / "studies" / "examples"
NAMES = ["aggressive", "bn_vae", "denoising", "encoder_pretraining", "free_bits", "kl_annealing", "kl_constraint"]
RECIPES = ["li2019", "lee_park2021_phase1", "lee_park2021", "prokhorov2019"]
TECHNIQUE_EXAMPLES = NAMES + ["kl_annealing_cyclical", "kl_annealing_cyclical_zero"] + RECIPES
CONTEXT = TrainContext(nz=3, steps_per_epoch=10, special_ids=SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3))


def test_all_registered_with_metadata():
    found = techniques()
    assert list(found) == NAMES  # the fixed order of application
    for name, cls in found.items():
        assert issubclass(cls, Technique) and cls.name == name and cls.version == 1
        assert cls.paper and cls.summary and cls.__doc__
        assert issubclass(cls.Config, TechniqueConfig) and cls.Config.model_config["extra"] == "forbid"
        for field_name, info in cls.Config.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
    assert {n for n, c in found.items() if c.replaces_kl_term} == {"free_bits", "kl_constraint"}
    module_docs = [__import__(f"ablate.techniques.{n}", fromlist=["x"]).__doc__ for n in NAMES]
    assert all(doc and ("=" in doc or "·" in doc) for doc in module_docs)  # each states its formula


def test_unknown_technique_did_you_mean():
    with pytest.raises(ConfigError) as info:
        build_config({"techniques": {"free_bit": {"lambda_per_dim": 1}}}, "run.yaml")
    message = str(info.value)
    assert message.startswith("run.yaml: ") and "unknown technique 'techniques.free_bit'" in message
    assert "did you mean 'free_bits'?" in message and "\n" not in message
    with pytest.raises(ValueError, match="did you mean 'kl_annealing'"):
        get("kl_anealing")


def test_unknown_field_did_you_mean():
    with pytest.raises(ConfigError) as info:
        build_config({"techniques": {"free_bits": {"lamda_per_dim": 1}}}, "run.yaml")
    message = str(info.value)
    assert "unknown key 'techniques.free_bits.lamda_per_dim'" in message
    assert "did you mean 'lambda_per_dim'?" in message
    with pytest.raises(ConfigError, match="did you mean 'ramp_steps'"):
        build_config({"techniques": {"kl_constraint": {"C": 3, "ramp_step": 10}}})


def test_a_technique_needs_a_mapping():
    with pytest.raises(ConfigError, match="techniques.denoising: .*dictionary"):
        build_config({"techniques": {"denoising": 0.15}})
    assert build_config({"techniques": {"denoising": {}}}).techniques["denoising"]["mode"] == "delete"


def test_two_kl_replacements_rejected_with_the_reason():
    with pytest.raises(ConfigError) as info:
        build_config({"techniques": {"free_bits": {"lambda_per_dim": 0.5}, "kl_constraint": {"C": 15}}}, "x.yaml")
    message = str(info.value)
    assert "free_bits and kl_constraint both replace the KL term" in message and "keep one" in message
    assert message.startswith("x.yaml: ") and "\n" not in message


def test_set_switches_a_technique_on():
    config = load_config(EXAMPLES / "lstm_vae.yaml", ["techniques.kl_constraint.C=15"])
    assert config.techniques == {"kl_constraint": {"C": 15.0, "beta": 1.0, "ramp_steps": None, "ramp_epochs": None}}


@pytest.mark.parametrize("name", TECHNIQUE_EXAMPLES)
def test_example_configs_validate(name):
    config = load_config(EXAMPLES / f"{name}.yaml")
    assert config.data.name == "synthetic"  # the embedded corpus stays the default of every example


def test_examples_cover_every_technique_and_the_published_recipes():
    for name in NAMES:
        assert name in load_config(EXAMPLES / f"{name}.yaml").techniques
    li = load_config(EXAMPLES / "li2019.yaml").techniques
    assert li["encoder_pretraining"]["reset_decoder"] and li["free_bits"]["mode"] == "per_dim_example"
    assert li["kl_annealing"]["schedule"] == "linear"
    lee = load_config(EXAMPLES / "lee_park2021.yaml").techniques
    assert not lee["encoder_pretraining"]["reset_decoder"] and lee["denoising"]["mode"] == "delete"


def test_versions_and_resolved_config_in_the_result_row():
    config = build_config({"techniques": {"free_bits": {"target_total": 8},
                                          "kl_annealing": {"schedule": "cyclical"}}})
    row = base_row(config, "run-1", {})
    recorded = json.loads(row["techniques"])
    assert recorded["versions"] == {"free_bits": 1, "kl_annealing": 1}
    assert recorded["config"]["free_bits"] == {"mode": "per_dim_example", "lambda_per_dim": None, "target_total": 8.0}
    assert recorded["config"]["kl_annealing"]["n_cycles"] == 4  # defaults resolved, not left implicit
    assert row["config.techniques.free_bits.mode"] == "per_dim_example"
    assert row["config.techniques.kl_annealing.shape"] == "linear"
    assert row["config.technique_versions.free_bits"] == 1


def test_composition_order_and_the_assembled_loss():
    resolved = resolve_techniques({
        "kl_annealing": {"schedule": "constant", "beta": 0.5},
        "free_bits": {"mode": "per_dim_example", "lambda_per_dim": 0.5},
        "denoising": {"mode": "mask", "p": 0.1},
        "encoder_pretraining": {"epochs": 1},
    })
    built = build_techniques(resolved, CONTEXT)
    assert [t.name for t in built] == ["denoising", "encoder_pretraining", "free_bits", "kl_annealing"]
    kl = torch.tensor([[2.0, 0.125, 0.5], [0.0, 1.125, 0.02]], dtype=torch.float64)
    parts = LossParts(rec=torch.tensor([10.0, 20.0], dtype=torch.float64), kl_per_dim=kl, mu=kl, logvar=kl, z=kl)
    vae = compose_loss(parts, built, 0.8, Step(10, 3, 1, "vae"))
    # loss = mean rec + (base 0.8 · annealing 0.5) · free-bits term (2.5625) + no extra
    assert vae.beta == pytest.approx(0.4)
    assert float(vae.loss) == pytest.approx(15.0 + 0.4 * 2.5625)
    pretrain = compose_loss(parts, built, 0.8, Step(3, 3, 0, "pretrain"))
    assert pretrain.beta == 0.0 and float(pretrain.loss) == pytest.approx(15.0)

    constrained = build_techniques(resolve_techniques({
        "kl_annealing": {"schedule": "constant", "beta": 0.5}, "kl_constraint": {"C": 4, "beta": 3, "ramp_steps": 1},
    }), CONTEXT)
    objective = compose_loss(parts, constrained, 1.0, Step(10, 10, 1, "vae"))  # |1.885 − 4| · 0.5 · 3
    assert float(objective.loss) == pytest.approx(15.0 + 1.5 * (4 - 1.885))


def test_describe_lists_fields_defaults_and_papers():
    rows = {row["name"]: row for row in describe()}
    assert list(rows) == NAMES
    fields = {f["name"]: f for f in rows["free_bits"]["fields"]}
    assert fields["mode"]["default"] == "per_dim_example" and "Kingma" in fields["mode"]["help"]
    assert {f["name"] for f in rows["kl_constraint"]["fields"] if f["required"]} == {"C"}
    assert "Prokhorov" in rows["kl_constraint"]["paper"] and rows["kl_constraint"]["replaces_kl_term"]


def test_ablate_techniques_command(capsys):
    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"{name} (v1)" in out
    for text in ("lambda_per_dim", "cyclical_zero", "Fu et al. 2019", "Prokhorov", "Bowman", "word_dropout",
                 "reset_decoder", "replaces the KL term"):
        assert text in out


def test_two_phase_recipe_runs_end_to_end(tmp_path):
    """li2019.yaml at a tiny size through `execute`: one ok row with the technique versions, both phases in the
    curves, β = 0 throughout pretraining and the plain KL logged."""
    from ablate.engine.run import execute

    config = load_config(EXAMPLES / "li2019.yaml", [
        "data.synthetic.n_train=48", "data.synthetic.n_valid=16", "data.synthetic.n_test=16",
        "model.emb_dim=8", "model.enc_hidden=8", "model.dec_hidden=8", "model.nz=4",
        "train.batch_size=16", "train.epochs=1", "techniques.encoder_pretraining.epochs=1",
        "eval.iw_samples=2", "eval.probe=false", "eval.splits=[test]"])
    outcome = execute(config, tmp_path, progress=False, save_model=False)
    assert outcome.ok, outcome.row.get("error_message")
    assert json.loads(outcome.row["techniques"])["versions"] == {
        "encoder_pretraining": 1, "free_bits": 1, "kl_annealing": 1}
    train_rows = [r for r in outcome.curves if r["split"] == "train"]
    assert [r["phase"] for r in train_rows] == ["pretrain"] * 3 + ["vae"] * 3
    assert all(r["beta"] == 0.0 for r in train_rows[:3]) and train_rows[4]["beta"] > 0
    assert train_rows[0]["kl"] < 1.0  # the plain KL of a fresh model, not a thresholded term (≥ 8 nats)


def test_order_of_application_is_declared_not_alphabetical():
    """Each technique declares its `order`; techniques() follows it, a new technique slots in by its order, and a
    missing or repeated order is refused at registration (issue 13: the order was alphabetical)."""
    from ablate.core.technique_registry import register
    from ablate.core.technique_registry import TECHNIQUES

    assert [cls.order for cls in techniques().values()] == sorted(cls.order for cls in techniques().values())

    class Late(Technique):
        name, order, paper, summary = "aaa_late", 65, "x", "x"

    with TECHNIQUES.temporarily("aaa_late", Late):
        names = list(techniques())
        assert names.index("aaa_late") == names.index("kl_annealing") + 1  # by order 65, not first by name

    class NoOrder(Technique):
        name = "no_order"

    class Clash(Technique):
        name, order = "clash", 60

    with pytest.raises(TypeError, match="must declare its order"):
        register(NoOrder)
    with pytest.raises(ValueError, match="declares order 60, already that of 'kl_annealing'"):
        register(Clash)
