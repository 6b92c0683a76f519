"""Config loading: strict keys with 'did you mean', --set overrides, stable hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablate.core.config import ConfigError, config_hash
from ablate.core.config_reading import build_config, load_config, parse_override
from ablate.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "studies" / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_corpus_and_lstm():
    config = load_config(None)
    assert config.data.name == "synthetic"
    assert config.model.name == "lstm"
    assert config.eval.iw_samples == 500 and config.eval.mi_pool == "dataset" and config.eval.au_delta == 0.01


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  nz: 8\n  enc_hiden: 64\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "model.enc_hiden" in message and "did you mean 'enc_hidden'" in message
    assert "\n" not in message


def test_unknown_section_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  epochs: 2\n"))


def test_bad_value_is_one_line_with_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr: .*greater than 0"):
        load_config(write(tmp_path, "train:\n  lr: -1\n"))


def test_unknown_technique_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean"):
        build_config({"techniques": {"free_bit": {}}})


def test_set_overrides_any_key_with_yaml_values():
    config = load_config(EXAMPLES / "lstm_vae.yaml", ["train.epochs=2", "data.name=ptb", "data.path=/x",
                                                      "eval.mi_pool=32", "train.grad_clip=null"])
    assert config.train.epochs == 2 and config.data.name == "ptb" and config.data.path == "/x"
    assert config.eval.mi_pool == 32 and config.train.grad_clip is None
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_corpus_needing_a_path_says_so():
    with pytest.raises(ConfigError, match="data.path"):
        build_config({"data": {"name": "ptb"}})


def test_hash_stable_and_sensitive():
    a = build_config({"train": {"epochs": 3}})
    b = build_config({"train": {"epochs": 3, "lr": 0.001}})  # default written out: same config
    c = build_config({"train": {"epochs": 4}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError, match="line 3"):
        load_config(write(tmp_path, "train:\n  epochs: 3\n  lr: [1, : 2\n"))


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(EXAMPLES / "lstm_vae.yaml")]) == 0
    assert main(["validate", str(write(tmp_path, "modle: {}\n"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'model'" in err


def test_technique_written_without_fields_takes_its_defaults(tmp_path):
    config = load_config(write(tmp_path, "techniques:\n  denoising:\n"))
    assert config.techniques["denoising"]["mode"] == "delete"


def test_cli_stops_quietly_when_its_reader_goes_away():
    """`ablate techniques | head -1`: no BrokenPipeError traceback on stderr."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "ablate", "techniques"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_run_summary_without_evaluation_splits_says_so():
    from ablate.cli.main import format_metrics

    assert format_metrics({"train_tokens_per_second": 10.0}) == "no evaluation splits (eval.splits: []): training only"
    text = format_metrics({"test.kl": 1.5, "test.au": 3.0, "eval.iw_samples": 100, "eval.token_unit": "word",
                           "eval.mi_pool": 1000, "eval.au_delta": 0.01})
    assert "kl" in text and "1.500" in text and "K=100 per word" in text


def test_print_config_round_trips(tmp_path, capsys):
    """`ablate run CONFIG --print-config` prints the resolved config; it validates to the same config (hash)."""
    assert main(["run", str(EXAMPLES / "free_bits.yaml"), "--print-config", "--set", "train.epochs=3"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    original = load_config(EXAMPLES / "free_bits.yaml", ["train.epochs=3"])
    assert config_hash(load_config(printed)) == config_hash(original)


def test_one_walk_over_the_config_schema_finds_each_declared_field():
    """walk_fields is the one walker behind 'did you mean', the config columns' types and a study's list fields."""
    from ablate.core.config import CONTAINER, walk_fields
    from ablate.models.lstm import LSTMConfig
    from ablate.techniques.free_bits import FreeBitsConfig

    assert walk_fields(("train", "lr"), "lstm") == (float, None)
    assert walk_fields(("model", "nz"), "lstm") == (int, None)
    assert walk_fields(("model",), "lstm")[1] is LSTMConfig  # the family's own class, not the base section
    assert walk_fields(("techniques", "free_bits"), None)[1] is FreeBitsConfig
    assert walk_fields(("eval", "splits"), "lstm")[1] is CONTAINER
    assert walk_fields(("eval", "splits", 0), "lstm")[1] is CONTAINER
    assert walk_fields(("train", "nope"), "lstm") == (None, None)
    assert walk_fields(("techniques", "nope", "x"), None) == (None, None)
    assert walk_fields(("model", "nz"), "no_such_family") == (None, None)
