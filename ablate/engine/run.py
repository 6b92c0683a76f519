"""One run: config → corpus → model + techniques → train → evaluate → one result row (+ curves).

The only place that wires the parts together. `ablate run`, sweep workers and tests all call `execute`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import random
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import ablate
from ablate.core.config import (
    ConfigError,
    EvalConfig,
    RunConfig,
    canonical_dict,
    config_hash,
    flatten,
)
from ablate.core.log import LOG
from ablate.core.progress import RunProgress
from ablate.core.seeds import derive
from ablate.data.batching import EncodedSplit, encode_split
from ablate.data.corpus import SPLITS, Corpus, load_corpus
from ablate.data.tokenize import Tokenizer
from ablate.engine.evaluate import (
    IW_PAIRS_PER_CHUNK,
    encode_all,
    evaluate_split,
    probe_factors,
    probe_features,
)
from ablate.engine.gradients import sparse_embeddings_allowed
from ablate.engine.tensorboard_log import TensorBoardLog
from ablate.engine.train import train
from ablate.engine.train_state import TrainingDiverged
from ablate.models.base import TextVAE
from ablate.models.kernel_choice import choose, cpu_model, native_bf16, shapes_of
from ablate.models.kernels import Kernels
from ablate.models.kernels import use as use_kernels
from ablate.models.build import build_model, build_tokenizer, tokenizer_key
from ablate.results.layout import RunFiles
from ablate.results.rows import git_commit, write_curves, write_row
from ablate.results.safe_files import atomic_target
from ablate.techniques.base import TrainContext
from ablate.techniques.base import build_techniques, posterior_transforms


@dataclass
class Prepared:
    """A corpus made ready for a model: tokenizer and token ids of every split."""

    corpus: Corpus
    tokenizer: Tokenizer
    splits: dict[str, EncodedSplit]


@dataclass
class RunOutcome:
    row: dict[str, Any]
    result_path: Path
    curves_path: Path
    model_path: Path | None = None
    error: BaseException | None = None
    curves: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


# failures whose one-line message says all (the caller prints it): no traceback
EXPECTED_FAILURES = (TrainingDiverged, ConfigError, torch.OutOfMemoryError)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(config: RunConfig, device: torch.device) -> RunConfig:
    """The config with train.precision auto made bf16 (the device multiplies bf16 natively) or fp32."""
    if config.train.precision != "auto":
        return config
    precision = "bf16" if native_bf16(device) else "fp32"
    return config.model_copy(update={"train": config.train.model_copy(update={"precision": precision})})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


_PREPARED: dict[str, Prepared] = {}  # this process's corpora made ready, by data config and tokenizer
_PREPARED_KEEP = 2


def prepare(config: RunConfig) -> Prepared:
    """Load the corpus, build the tokenizer, encode every split; reused within a process (a sweep worker runs many
    cells of one corpus: it reads and tokenises it once). Nothing downstream modifies a Prepared."""
    key = json.dumps({"data": config.data.model_dump(mode="json"), "tokenizer": tokenizer_key(config.model)},
                     sort_keys=True)
    if key in _PREPARED:
        _PREPARED[key] = _PREPARED.pop(key)  # most recently used last
        return _PREPARED[key]
    corpus = load_corpus(config.data)
    tokenizer = build_tokenizer(config.model, config.data, corpus.texts["train"])
    splits = {s: encode_split(corpus.texts[s], tokenizer, config.data.max_length) for s in SPLITS}
    prepared = Prepared(corpus=corpus, tokenizer=tokenizer, splits=splits)
    _PREPARED[key] = prepared
    while len(_PREPARED) > _PREPARED_KEEP:
        _PREPARED.pop(next(iter(_PREPARED)))
    return prepared


def build(config: RunConfig, prepared: Prepared) -> TextVAE:
    """The model of a config, with the modules its techniques add after the encoder (BN-VAE)."""
    seed_everything(config.seed)
    model = build_model(config.model, prepared.tokenizer)
    for module in posterior_transforms(config.techniques, model.nz):
        model.add_posterior_transform(module)
    return model


def _provenance(device: torch.device) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed version, without importing transformers (0.7 s) for a model that does not use it
        transformers_version = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - declared dependency
        transformers_version = ""
    return {"host": socket.gethostname(), "git_commit": git_commit(), "device": str(device),
            "version.ablate": ablate.__version__, "version.torch": torch.__version__,
            "version.transformers": transformers_version, "version.python": platform.python_version(),
            "threads": torch.get_num_threads() if device.type == "cpu" else None, "cpu": cpu_model()}


def base_row(config: RunConfig, run_id: str, labels: dict[str, Any]) -> dict[str, Any]:
    canonical = canonical_dict(config)
    row: dict[str, Any] = {
        "run_id": run_id, "study": labels.get("study", ""), "cell_id": labels.get("cell_id", config_hash(config)),
        "config_hash": config_hash(config), "arm": labels.get("arm", ""), "attempt": labels.get("attempt", 1),
        "seed": config.seed, "dataset": labels.get("dataset") or config.data.name,
        "model": labels.get("model") or config.model.name, "worker_device": labels.get("worker_device"),
        "search": labels.get("search"), "search_objectives": labels.get("search_objectives"),
        "techniques": json.dumps({"config": canonical["techniques"], "versions": canonical["technique_versions"]},
                                 sort_keys=True),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    row.update(flatten(canonical, "config."))
    return row


def execute(config: RunConfig, out_dir: Path, run_id: str | None = None, labels: dict[str, Any] | None = None,
            checkpoint: Path | None = None, progress: bool = True, save_model: bool = True,
            file_stem: str | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
            tensorboard: Path | None = None, tensorboard_name: str | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunOutcome:
    """Train and evaluate one config; always writes a result row (status ok or failed) before returning: into
    `out_dir`'s rows/, curves/ and models/ folders (ablate.results.layout.RunFiles), named `file_stem` (default: run_id).
    `on_epoch` receives each epoch's validation point as it happens (a sweep reports it to its Optuna trial),
    `on_progress` where an epoch stands every few minutes (ablate.engine.train.Trainer.report_progress_if_due);
    `tensorboard` is a folder that gets the run's event files (ablate.engine.tensorboard_log) under `tensorboard_name`."""
    labels = labels or {}
    run_id = run_id or f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{config_hash(config)[:8]}"
    stem = file_stem or run_id
    files = RunFiles.in_folder(out_dir, stem)  # out_dir/rows, curves, models (ablate.results.layout)
    result_path, curves_path = files.row, files.curves
    model_path = files.model if save_model else None
    row = base_row(config, run_id, labels)
    curves: list[dict[str, Any]] = []
    device = resolve_device(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    row.update(_provenance(device))  # records the torch threads in use (they change the last digits)
    config = resolve_precision(config, device)  # (the row's config columns keep what was asked: auto)
    row["precision"] = config.train.precision
    line: RunProgress | None = None
    board = TensorBoardLog(tensorboard, tensorboard_name or run_id) if tensorboard is not None else None
    if board is not None:
        on_epoch = _both(on_epoch, board.epoch)
    try:
        prepared = prepare(config)
        row["notes"] = "; ".join(prepared.corpus.notes)
        model = build(config, prepared).to(device)
        sizes = ", ".join(f"{name} {len(split):,}" for name, split in prepared.splits.items())
        LOG.debug(f"corpus {config.data.name}: {sizes} sentences; tokenizer {len(prepared.tokenizer):,} "
                  f"{prepared.tokenizer.unit}s; {config.model.name} model, "
                  f"{sum(p.numel() for p in model.parameters()):,} parameters, nz {model.nz}, on {device}")
        kernels = choose_kernels(model, config, prepared, device)
        use_kernels(kernels)
        row["kernels"] = kernels.describe()
        context = TrainContext(
            nz=model.nz, special_ids=prepared.tokenizer.special_ids, seed=config.seed,
            encoder_special_ids=getattr(prepared.tokenizer, "encoder_special_ids", None),
            steps_per_epoch=config.train.steps_per_epoch(len(prepared.splits["train"])))
        techniques = build_techniques(config.techniques, context)
        LOG.debug("techniques: " + (", ".join(f"{t.name} {t.config.model_dump()}" for t in techniques) or "none"))
        line = RunProgress(progress, 0, eval_sentences=eval_sentences(config, prepared),
                           iw_samples=config.eval.iw_samples,  # one line for training and evaluation
                           label=cell_label(labels, config.seed), eval_tokens=eval_tokens(config, prepared))
        result = train(model, techniques, prepared.splits["train"], prepared.splits["valid"],
                       prepared.tokenizer.framing, config.train, device, config.seed,
                       eval_batch_size=config.eval.batch_size, checkpoint=checkpoint, progress=line,
                       on_epoch=on_epoch, on_progress=on_progress)
        curves = result.curves
        state = result.state
        row.update({"train_seconds": state.train_seconds, "train_steps": state.global_step,
                    "train_inner_steps": state.inner_steps,
                    "train_tokens": state.train_tokens, "best_epoch": state.best_epoch,
                    "params_total": sum(p.numel() for p in model.parameters()),
                    "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                    "train_tokens_per_second": state.train_tokens / state.train_seconds if state.train_seconds
                    else None})
        if model_path is not None:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(model_path) as tmp:  # a reader never sees half a model file
                torch.save({"config": config.model_dump(mode="json"), "model": model.state_dict()}, tmp)
        started = time.perf_counter()
        row.update(evaluate_all(config, prepared, model, device, progress=line))
        row["eval_seconds"] = time.perf_counter() - started
        row["status"] = "ok"
        error = None
    except Exception as exc:  # recorded in the row; the caller decides whether to re-raise
        row.update({"status": "failed", "error_class": type(exc).__name__,
                    "error_message": f"{exc}".splitlines()[0][:500] if str(exc) else type(exc).__name__})
        error = exc
        if progress and not isinstance(exc, EXPECTED_FAILURES):  # a bug deserves its traceback; these one line
            traceback.print_exc(file=sys.stderr)
    finally:
        if line is not None:
            line.close()
    if board is not None:
        board.finish(config, row, curves)
    row["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_row(row, result_path)
    write_curves(curves, run_id, curves_path)
    return RunOutcome(row=row, result_path=result_path, curves_path=curves_path, model_path=model_path, error=error,
                      curves=curves)


def choose_kernels(model: TextVAE, config: RunConfig, prepared: Prepared, device: torch.device) -> Kernels:
    """The fastest kernels for this model's shapes on this machine (ablate.models.kernels; timed once per machine
    and shape, then read from the user cache), and sparse embedding gradients where plain SGD trains them."""
    sample = prepared.splits["train"].tokens[:2000]
    mean_tokens = sum(len(t) + 1 for t in sample) / max(1, len(sample))
    shapes = shapes_of(model, config.train.batch_size, mean_tokens, config.train.precision,
                       eval_pairs=IW_PAIRS_PER_CHUNK)
    allowed = sparse_embeddings_allowed(model, config.train)
    try:
        kernels = choose(shapes, device, embedding_grads="sparse" if allowed else "dense")
    except ValueError as error:  # $ABLATE_KERNELS misspelt
        raise ConfigError(str(error)) from None
    # sparse embedding gradients only where the optimiser allows them (Trainer applies the same rule)
    return kernels if allowed else dataclasses.replace(kernels, embedding_grads="dense")


def cell_label(labels: dict[str, Any] | None, seed: int) -> str:
    """'<arm> seed <n>' for a sweep's cell (its notes and result line name it), '' for a single run."""
    arm = (labels or {}).get("arm")
    return f"{arm} seed {seed}" if arm else ""


def _both(first: Callable[[dict[str, Any]], None] | None, second: Callable[[dict[str, Any]], None]
          ) -> Callable[[dict[str, Any]], None]:
    def call(point: dict[str, Any]) -> None:
        if first is not None:
            first(point)
        second(point)
    return call


def mi_pool_kind(cfg: EvalConfig) -> str:
    """dataset (one pool of the whole split), block (M consecutive in split order), length_block (M consecutive in
    length order) or length_batch (He et al. 2019's batches of at most M sentences of one length)."""
    if cfg.mi_pool == "dataset":
        return "dataset"
    return {"length": "length_block", "length_batches": "length_batch"}.get(cfg.mi_pool_order, "block")


def eval_sentences(config: RunConfig, prepared: Prepared) -> int:
    """How many sentences the final evaluation reads (its splits, each cut to eval.max_sentences)."""
    limit = config.eval.max_sentences or 10**18
    return sum(min(len(prepared.splits[split]), limit) for split in config.eval.splits)


def eval_tokens(config: RunConfig, prepared: Prepared) -> int:
    """How many decoder tokens (+ </s>) the final evaluation scores: its cost, unlike its sentence count."""
    limit = config.eval.max_sentences or 10**18
    return sum(sum(len(t) + 1 for t in prepared.splits[split].tokens[:limit]) for split in config.eval.splits)


def evaluate_all(config: RunConfig, prepared: Prepared, model: TextVAE, device: torch.device,
                 progress: RunProgress | None = None) -> dict[str, Any]:
    """Metrics of every evaluation split (its first eval.max_sentences when set), conventions, and probes of
    ground-truth factors when known."""
    out: dict[str, Any] = {}
    corpus = prepared.corpus
    limit = config.eval.max_sentences
    train_z = None
    if config.eval.probe and corpus.factor_classes:
        train_mu, train_logvar = encode_all(model, prepared.splits["train"], prepared.tokenizer.framing,
                                            config.eval.batch_size, device)
        train_z = probe_features(train_mu, train_logvar, seed=derive(config.seed, "probe_train_features"))
    for i, split in enumerate(config.eval.splits):
        evaluation = evaluate_split(model, prepared.splits[split].head(limit), prepared.tokenizer.framing,
                                    len(prepared.tokenizer), config.eval, device,
                                    seed=derive(config.seed, "split_evaluation", i), token_unit=prepared.tokenizer.unit,
                                    progress=progress, desc=f"eval {split}")
        out.update({f"{split}.{k}": v for k, v in evaluation.metrics.items()})
        conv = evaluation.conventions
        out.update({"eval.iw_samples": conv["iw_samples"], "eval.mi_pool": conv["mi_pool"],
                    "eval.mi_pool_kind": mi_pool_kind(config.eval),
                    "eval.au_delta": conv["au_delta"], "eval.token_unit": conv["token_unit"],
                    "eval.ppl_counts_eos": conv["ppl_counts_eos"], "eval.ppl_counts_bos": conv["ppl_counts_bos"]})
        if train_z is not None:
            eval_z = probe_features(evaluation.mu, evaluation.logvar,
                                    seed=derive(config.seed, "probe_eval_features", -i))
            factors = {name: values[: len(evaluation.mu)] for name, values in corpus.factors[split].items()}
            probes = probe_factors(train_z, corpus.factors["train"], eval_z, factors,
                                   corpus.factor_classes, seed=config.seed)
            out.update({f"{split}.{k}": v for k, v in probes.items()})
    return out
