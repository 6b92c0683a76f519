"""Every malformed input is refused in one short line, exit status 2, no traceback, nothing written (issue 12).

The corpus (tests/malformed_inputs.py) goes through `validate`, `run` and `sweep` in this process; a traceback
would be an exception escaping `main`, a hang would stop the suite (the YAML bombs are in the corpus).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from ablate.cli.main import main
from malformed_inputs import CASES, CONFIGS, STUDIES

MAX_LINES = 3
MAX_LINE_CHARS = 300


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _workspace(tmp_path: Path, text: str) -> Path:
    """The input file among the things a case may point at (a file, a folder with only a train split)."""
    (tmp_path / "a_file.txt").write_text("x\n")
    (tmp_path / "only_train").mkdir()
    (tmp_path / "only_train" / "train.txt").write_text("a b\n")
    for name, content in (("empty_splits", b""), ("latin1_splits", "a caf\xe9\n".encode("latin-1"))):
        (tmp_path / name).mkdir()
        for split in ("train", "valid", "test"):
            (tmp_path / name / f"{split}.txt").write_bytes(content if split == "valid" else b"a b\n")
    path = tmp_path / "input.yaml"
    raw = text.replace("{tmp}", str(tmp_path))
    path.write_bytes(raw.encode("latin-1") if "\x00" in raw else raw.encode("utf-8"))
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, (out.getvalue() + err.getvalue()).strip()


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 50 and len(CONFIGS) >= 40 and len(STUDIES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("command", ["validate", "run", "sweep"])
def test_malformed_files_are_refused_in_one_line(command, tmp_path, monkeypatch):
    """Each case in its own folder, run from there: exit 2, ≤ 3 short lines, nothing created anywhere in it."""
    monkeypatch.chdir(tmp_path)
    failures = []
    for i, case in enumerate(CASES):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        path = _workspace(folder, case.text)
        before = _listing(folder)
        argv = [command, str(path)] + ([] if command == "validate" else ["--out", str(folder / "out"), "--quiet"])
        code, text = run_cli(argv)
        lines = text.splitlines()
        written = _listing(folder) - before
        if code != 2 or not 1 <= len(lines) <= MAX_LINES or max(map(len, lines)) > MAX_LINE_CHARS or written:
            failures.append(f"{case.name}: exit {code}, {len(lines)} line(s), wrote {sorted(written)[:3]}: "
                            f"{text[:200]!r}")
        elif str(path) not in text and "--set" not in text:
            failures.append(f"{case.name}: the message does not name the file: {text[:200]!r}")
    assert not failures, "\n".join(failures)
    assert not list(tmp_path.glob("results")) and not list(tmp_path.glob("reports"))


BAD_COMMAND_LINES = [
    ["run", "--set", "train.epochs=[1"],
    ["run", "--set", "noequals"],
    ["run", "--set", "=3"],
    ["run", "--set", "train.epochs=ten"],
    ["run", "--set", "train.device=tpu9"],
    ["run", "--set", "seed=1e26"],
    ["run", "{tmp}/missing.yaml"],
    ["run", "{tmp}"],
    ["validate", "{tmp}/missing.yaml"],
    ["validate", "{study}", "--set", "train.epochs=[1"],
    ["validate", "{study}", "--set", "train.epochz=1"],
    ["sweep", "{study}", "--set", "train.lr=.inf"],
    ["sweep", "{study}", "--jobs", "0"],
    ["sweep", "{study}", "--max-attempts", "0"],
    ["sweep", "{study}", "--jobs", "many"],
    ["sweep", "{study}", "--storage", "foo://u:secret@host/db"],
    ["sweep", "{study}", "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"],
    ["sweep", "{study}", "--storage", "sqlite:////no/such/folder/x.db"],
    ["sweep", "{study}", "--out", "{tmp}/a_file.txt/results"],
    ["status", "{tmp}/missing.yaml"],
    ["status", "{tmp}"],
    ["worker", "{study}"],
    ["sample", "{tmp}/missing.model.pt"],
    ["sample", "{tmp}/a_file.txt"],
    ["report", "{tmp}/nothing_here", "--out", "{tmp}/r"],
    ["run", "--no-such-flag"],
    ["frobnicate"],
]


@pytest.mark.parametrize("argv", BAD_COMMAND_LINES, ids=" ".join)
def test_bad_command_lines_are_refused_in_a_few_lines(argv, tmp_path, monkeypatch):
    from malformed_inputs import STUDY

    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    (tmp_path / "a_file.txt").write_text("x\n")
    before = _listing(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{study}", str(study)) for a in argv]
    code, text = run_cli(argv)
    assert code == 2, text
    assert "Traceback" not in text and "secret" not in text
    assert len(text.splitlines()) <= MAX_LINES + 3  # argparse prints its usage (≤ 3 lines) before the error
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("command", ["validate", "run", "sweep"])
@pytest.mark.parametrize("setting", ["lstm=cudnn", "output blocks (logits fast); eval blas; lstm aten"])
def test_a_bad_kernel_setting_is_refused_before_anything_is_written(command, setting, tmp_path, monkeypatch):
    """$ABLATE_KERNELS (name=value pairs, or a row's `kernels` value) is checked with the config: one line, exit 2,
    no failed row per run or cell."""
    from malformed_inputs import STUDY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_KERNELS", setting)
    config = tmp_path / "input.yaml"  # a study for sweep and validate, a run config for run
    config.write_text(STUDY if command != "run" else
                      "data: {name: synthetic, synthetic: {n_train: 40, n_valid: 10, n_test: 10}}\n"
                      "model: {name: lstm, emb_dim: 8, enc_hidden: 8, dec_hidden: 8, nz: 2}\n")
    before = _listing(tmp_path)
    code, text = run_cli([command, str(config)] + ([] if command == "validate" else ["--out", str(tmp_path / "out")]))
    assert code == 2 and text.startswith("error: $ABLATE_KERNELS: ") and len(text.splitlines()) == 1, text
    assert _listing(tmp_path) == before


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "studies" / "examples").glob("*.yaml"))
SMALL = ["data.synthetic.n_train=40", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "train.max_steps=1",
         "eval.splits=[]", "train.device=cpu"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_what_passes_validate_starts(example, tmp_path, one_torch_thread):
    """Every shipped example validates and then starts: corpus, tokenizer, model, techniques, one training step
    (at a tiny corpus size: start-up is what validation vouches for, not the full run). An example of models
    installed from the package registry (scripts/setup.sh --pretrained) is skipped where they are not installed."""
    from ablate.core.config_reading import load_config
    from ablate.engine.preflight import check_model

    reason = check_model(load_config(example).model)
    if reason and "no installed package" in reason:
        pytest.skip(reason)
    code, text = run_cli(["validate", str(example), *sum((["--set", s] for s in SMALL), [])])
    assert code == 0, text
    code, text = run_cli(["run", str(example), "--out", str(tmp_path), "--quiet", *sum((["--set", s] for s in SMALL),
                                                                                         [])])
    assert code == 0, text


def test_bare_ablate_shows_its_commands_and_version_is_known(capsys):
    """Issue 26 (10): bare `ablate` printed an error; it lists the commands now, and `--version` answers."""
    import ablate
    from ablate.cli.main import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: ablate" in out and "sweep" in out and "report" in out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"ablate {ablate.__version__}"


def test_python_dash_m_ablate_is_the_command():
    import subprocess
    import sys

    import ablate

    done = subprocess.run([sys.executable, "-m", "ablate", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"ablate {ablate.__version__}"
