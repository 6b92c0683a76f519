"""`ablate export RUN --out DIR`: a trained VAE as a self-contained folder, and `load_vae(DIR)` to use it.

    DIR/config.json          the resolved run config
    DIR/model.safetensors    the weights (safetensors: tensors only, no code)
    DIR/tokenizer/           the tokenizer (a word list, or the Hugging Face tokenizer's save_pretrained files)
    DIR/hf_model/            seq2seq models: the Hugging Face encoder-decoder (save_pretrained), reusable by
                             transformers as it is
    DIR/hf_encoder/, hf_decoder/   optimus models: the finetuned encoder (AutoModel) and causal LM decoder
                             (AutoModelForCausalLM), each save_pretrained
    DIR/result.json          the run's result row, when its parquet is beside the model file
    DIR/examples.txt         the first test sentences (what `ablate sample DIR` reconstructs without the corpus)

Nothing in the folder needs the corpus or the original pretrained model: `ablate sample DIR` and `load_vae(DIR)`
work with both gone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from ablate.cli.commands import COMMANDS

EXAMPLES = 20  # test sentences kept in examples.txt


def export_run(run: str | Path, out: str | Path) -> Path:
    """Write the export folder of a saved run (a .model.pt, or its result .parquet); returns the folder."""
    import pyarrow.parquet as pq
    from safetensors.torch import save_model

    from ablate.results.layout import RunFiles
    from ablate.results.safe_files import atomic_target, check_writable, current_umask, write_text_atomic
    from ablate.engine.saved_models import load_run, model_file

    out = Path(out)
    check_writable(out, "--out")
    config, prepared, model = load_run(run)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(config.model_dump(mode="json"), indent=1) + "\n")
    with atomic_target(out / "model.safetensors") as tmp:
        save_model(model, str(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors writes 0600; an export is for sharing
    prepared.tokenizer.save(out / "tokenizer")
    for folder, attribute in config.model.hugging_face_parts().items():  # e.g. seq2seq's hf_model, optimus' halves
        getattr(model, attribute).save_pretrained(str(out / folder))
    row_path = RunFiles.of(model_file(run)).row
    if row_path.exists():
        row = pq.read_table(row_path).to_pylist()[0]
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        write_text_atomic(out / "result.json", json.dumps(clean, indent=1, default=str) + "\n")
    examples = prepared.corpus.texts["test"][:EXAMPLES]
    write_text_atomic(out / "examples.txt", "\n".join(examples) + "\n")
    return out


def cmd_export(args: argparse.Namespace) -> int:
    out = export_run(args.run, args.out)
    parts = "".join(f", {p.name}/" for p in sorted(out.glob("hf_*")) if p.is_dir())
    print(f"wrote {out}: config.json, model.safetensors, tokenizer/" + parts
          + (", result.json" if (out / "result.json").exists() else "") + ", examples.txt")
    return 0


@COMMANDS.register("export")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a trained run as a self-contained folder (config, safetensors, tokenizer)")
    p.add_argument("run", help="results/<study>/models/<stem>.model.pt, or the run's rows/<stem>.parquet")
    p.add_argument("--out", required=True, help="the folder to write")
    p.set_defaults(func=cmd_export)
