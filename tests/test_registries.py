"""The one registry class (ablate.core.registry) and what lives on it: model families and CLI subcommands."""

from __future__ import annotations

import pytest

from ablate.core.config import (
    FAMILIES,
    ConfigError,
    ModelFamily,
    model_config_class,
    register_family,
)
from ablate.core.config_reading import build_config
from ablate.core.registry import Registry, UnknownName


class Base:
    pass


class Thing(Base):
    pass


def test_registry_rules():
    things: Registry[type] = Registry("thing", base=Base)
    things.register("a", Thing)

    @things.register("b")
    class Other(Base):
        pass

    assert things.names() == ["a", "b"] and things.get("b") is Other
    with pytest.raises(ValueError, match="thing 'a' registered twice"):
        things.register("a", Other)
    with pytest.raises(TypeError, match="must be a Base"):
        things.register("c", int)
    with pytest.raises(UnknownName) as info:
        things.get("aa")
    assert str(info.value) == "unknown thing 'aa'; did you mean 'a'?"
    assert str(pytest.raises(UnknownName, things.get, "zzz").value) == "unknown thing 'zzz'; known: a, b"


def test_a_registry_is_frozen_after_discovery():
    assert "lstm" in FAMILIES  # discovery ran
    with pytest.raises(RuntimeError, match="frozen"):
        FAMILIES.register("late", FAMILIES.get("lstm"))


def test_a_family_is_registered_once_with_the_config_class_the_run_config_validates_with():
    for name, family in FAMILIES.all().items():
        assert family.name == name and model_config_class(name) is family.config
        assert family.config.model_fields["name"].default == name
    lstm = FAMILIES.get("lstm")
    with pytest.raises(ValueError, match="its config's name field must default to 'other'"):
        register_family(ModelFamily("other", lstm.config, lstm.build_tokenizer, lstm.tokenizer_key, lstm.build_model))


def test_an_unknown_family_is_an_error_with_a_suggestion_never_a_fallback():
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"name": "lsmt"}}, "x.yaml")
    assert str(info.value) == ("x.yaml: model: no model family 'lsmt'; did you mean 'lstm'?; model.name is one of "
                               "lstm, optimus, seq2seq")
    with pytest.raises(UnknownName, match="unknown model family 'transformer'"):
        FAMILIES.get("transformer")


def test_subcommands_come_from_the_registry():
    from ablate.cli.commands import COMMANDS
    from ablate.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "validate", "techniques", "sweep", "worker", "status", "report", "sample"} <= set(sub.choices)
    assert set(COMMANDS.names()) == {"sweep", "report", "results", "sample", "export", "collect"}


NEW_FAMILY = '''"""A model family added as one file: the LSTM VAE under another name and a wider default latent."""
from typing import Literal

from pydantic import Field

from ablate.core.config import MAX_NZ
from ablate.models.lstm import LSTMConfig, LSTMVAE, _word_vocab
from ablate.core.config import ModelFamily, register_family


class WideConfig(LSTMConfig):
    name: Literal["wide_lstm"] = "wide_lstm"
    nz: int = Field(5, ge=1, le=MAX_NZ)


register_family(ModelFamily(
    name="wide_lstm", config=WideConfig, build_tokenizer=_word_vocab, tokenizer_key=lambda model: "word",
    build_model=lambda model, tokenizer: LSTMVAE(len(tokenizer), model, pad_id=tokenizer.framing.pad)))
'''


def test_a_model_family_is_one_file(tmp_path):
    """In a copy of the package with exactly one new file in ablate/models/, `ablate run` validates, trains and
    evaluates the new family (its own defaults filled, its name in the row) and the unknown-family hint lists it."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    import ablate
    from ablate.results.rows import row_files

    shutil.copytree(Path(ablate.__file__).parent, tmp_path / "ablate", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ablate" / "models" / "wide_lstm.py").write_text(NEW_FAMILY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    sets = ["model.name=wide_lstm", "model.emb_dim=8", "model.enc_hidden=8", "model.dec_hidden=8",
            "data.synthetic.n_train=64", "data.synthetic.n_valid=16", "data.synthetic.n_test=16", "train.epochs=1",
            "eval.iw_samples=2", "eval.probe=false", "train.threads=1"]
    argv = [sys.executable, "-m", "ablate", "run", "--out", str(tmp_path / "out"), "--quiet"]
    for text in sets:
        argv += ["--set", text]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = row_files(tmp_path / "out")
    assert len(rows) == 1
    row = pd.read_parquet(rows[0]).iloc[0]
    assert row["config.model.name"] == "wide_lstm" and row["config.model.nz"] == 5
    assert (tmp_path / "ablate" / "models" / "wide_lstm.py").exists()
    typo = subprocess.run([sys.executable, "-m", "ablate", "run", "--set", "model.name=wide_lstn"], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert typo.returncode == 2 and "did you mean 'wide_lstm'?" in typo.stderr
    assert "lstm, optimus, seq2seq, wide_lstm" in typo.stderr


def test_results_and_out_mean_one_thing_in_every_command():
    """--results is the results root a command reads (run and sweep: another name for --out, the root they write);
    --out is the folder a command writes."""
    from ablate.cli.main import build_parser

    parser = build_parser()
    reads = {"run": [], "sweep": ["s.yaml"], "worker": ["s.yaml"], "status": ["s.yaml"], "report": [],
             "results": ["s.yaml"]}
    for command, positional in reads.items():
        args = parser.parse_args([command, *positional, "--results", "R"])
        root = args.out if command in ("run", "sweep", "worker", "status") else args.results
        assert root == "R", command
    assert parser.parse_args(["run", "--out", "R"]).out == parser.parse_args(["sweep", "s", "--out", "R"]).out == "R"
    assert parser.parse_args(["report", "--out", "P"]).out == "P"
    assert parser.parse_args(["export", "m.model.pt", "--out", "P"]).out == "P"


NEW_COMMAND = '''"""A subcommand added as one file."""
from ablate.cli.commands import COMMANDS


def cmd_hello(args) -> int:
    print(f"hello {args.who}")
    return 0


@COMMANDS.register("hello")
def register(sub) -> None:
    p = sub.add_parser("hello", help="say hello")
    p.add_argument("who")
    p.set_defaults(func=cmd_hello)
'''


def test_a_subcommand_is_one_file(tmp_path):
    """In a copy of the package with one new file in ablate/cli/, `ablate hello` runs and `ablate --help` lists it
    after the workflow's commands (discovery of ablate/cli/, no list to edit)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import ablate

    shutil.copytree(Path(ablate.__file__).parent, tmp_path / "ablate", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ablate" / "cli" / "hello.py").write_text(NEW_COMMAND)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ablate", "hello", "world"], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "hello world", done.stderr
    listed = subprocess.run([sys.executable, "-m", "ablate", "--help"], env=env, capture_output=True, text=True,
                            cwd=tmp_path, timeout=120).stdout
    assert listed.index("export") < listed.index("hello")
