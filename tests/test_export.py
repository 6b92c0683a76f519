"""`ablate export RUN --out DIR` writes a self-contained folder; `load_vae(DIR)` and `ablate sample DIR` work with
the corpus gone, and give what the original model gives (issue 14)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ablate.cli.main import main
from ablate.core.config_reading import build_config
from ablate.data.batching import encode_split, make_batch
from ablate.engine.run import execute
from ablate.engine.saved_models import load_run, load_vae
from conftest import tiny_overrides
from test_sample import TINY_T5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _line_corpus(folder):
    folder.mkdir()
    words = "the cat sat on a mat dog ran far away fast slow big small red blue".split()
    for split, n in (("train", 120), ("valid", 20), ("test", 20)):
        lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 5)) for i in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("family", ["lstm", "seq2seq"])
def test_export_then_delete_the_corpus_then_sample(family, tmp_path, capsys):
    data = _line_corpus(tmp_path / "corpus")
    overrides = tiny_overrides(**{"data": {"name": "lines", "path": str(data)}, "eval.splits": ["test"],
                                  "eval.iw_samples": 2, "train.threads": 1,
                                  "techniques": {"bn_vae": {"gamma": 0.5}}})
    if family == "seq2seq":
        overrides["model"] = dict(TINY_T5)
    outcome = execute(build_config(overrides), tmp_path, progress=False)
    assert outcome.ok, outcome.row.get("error_message")
    _, prepared, original = load_run(outcome.model_path)
    texts = prepared.corpus.texts["test"][:4]
    batch = make_batch(encode_split(texts, prepared.tokenizer, 50), list(range(4)), prepared.tokenizer.framing)
    with torch.no_grad():
        mu_original, _ = original.encode(batch)

    folder = tmp_path / "export"
    assert main(["export", str(outcome.result_path), "--out", str(folder)]) == 0
    shutil.rmtree(data)  # the corpus is gone
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer", "result.json", "examples.txt"} <= names
    assert ("hf_model" in names) == (family == "seq2seq")
    assert all(isinstance(t, torch.Tensor) for t in load_file(folder / "model.safetensors").values())
    assert json.loads((folder / "result.json").read_text())["test.nll"] == pytest.approx(outcome.row["test.nll"])

    config, tokenizer, model = load_vae(folder)
    assert tokenizer.encode(texts[0]) == prepared.tokenizer.encode(texts[0])
    with torch.no_grad():
        mu, _ = model.encode(batch)
    assert torch.allclose(mu, mu_original)  # BN-VAE's running statistics travel too
    capsys.readouterr()
    assert main(["sample", str(folder), "--prior", "2", "--reconstruct", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["prior"]["greedy"]) == 2 and report["reconstruct"][0]["input"] == texts[0]
    assert main(["sample", str(folder), "--prior", "1", "--reconstruct", "1"]) == 0  # the text report too
    printed = capsys.readouterr().out
    assert printed.startswith(f"# {folder}: {family} on lines") and "== reconstructions" in printed


def test_export_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing.model.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "no saved model" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["sample", str(tmp_path)]) == 2
