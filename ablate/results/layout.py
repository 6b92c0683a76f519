"""Where things are in a results folder: the one module that knows the layout (ARCHITECTURE.md).

    results/<study>/            a study (ablate sweep); `ablate run --out DIR` writes DIR/rows, curves, models
        results.parquet         every attempt's row in one table (rows/ consolidated as cells end)
        study.yaml              the study file as run
        study.json              name, file, hash, created/updated, cells
        manifest.parquet        one row per expected cell
        ledger.journal          the Optuna journal (default storage), with ledger.journal.flock and .ledger.lock
        rows/<cell>.a<n>.parquet            attempt n's result row (one row; `pd.read_parquet("rows")` reads them all)
        curves/<cell>.a<n>.curves.parquet   its training curves (one row per logged step and epoch)
        models/<cell>.a<n>.model.pt         its trained model
        checkpoints/<cell>.pt   the last epoch of a cell's unfinished attempt

Folders written before rows, curves and models were separated hold all three in `runs/` (<stem>.parquet,
<stem>.curves.parquet, <stem>.model.pt): they are still read (LEGACY_RUNS), and a sweep resumed on one moves
them into place (`move_legacy_runs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAX_NAME = 100  # characters of a study, arm or run name: they name folders and files (255 bytes with suffixes)
MANIFEST = "manifest.parquet"
RESULTS_TABLE = "results.parquet"  # every attempt's row in one table, rewritten as cells finish
RESULT_NAME = re.compile(r"^(?P<cell>[0-9a-f]{12})\.a(?P<attempt>\d+)\.parquet$")
MODEL_NAME = re.compile(r"^(?P<cell>[0-9a-f]{12})\.a(?P<attempt>\d+)\.model\.pt$")
ROWS, CURVES, MODELS, CHECKPOINTS = "rows", "curves", "models", "checkpoints"
LEGACY_RUNS = "runs"  # rows, curves and models in one folder (folders written before they were separated)
ROW_SUFFIX, CURVES_SUFFIX, MODEL_SUFFIX = ".parquet", ".curves.parquet", ".model.pt"


def result_stem(cell_id: str, attempt: int) -> str:
    return f"{cell_id}.a{attempt}"


@dataclass(frozen=True)
class RunFiles:
    """The three files of one run (one attempt of a cell): its result row, its curves and its model."""

    row: Path
    curves: Path
    model: Path

    @classmethod
    def in_folder(cls, folder: str | Path, stem: str) -> "RunFiles":
        folder = Path(folder)
        return cls(folder / ROWS / f"{stem}{ROW_SUFFIX}", folder / CURVES / f"{stem}{CURVES_SUFFIX}",
                   folder / MODELS / f"{stem}{MODEL_SUFFIX}")

    @classmethod
    def of(cls, path: str | Path) -> "RunFiles":
        """The run a row, curves or model file belongs to, in either layout (rows/curves/models or legacy runs/)."""
        path = Path(path)
        stem = stem_of(path.name)
        if path.parent.name in (ROWS, CURVES, MODELS):
            return cls.in_folder(path.parent.parent, stem)
        folder = path.parent  # legacy: the three side by side
        return cls(folder / f"{stem}{ROW_SUFFIX}", folder / f"{stem}{CURVES_SUFFIX}", folder / f"{stem}{MODEL_SUFFIX}")

    def all(self) -> tuple[Path, Path, Path]:
        return self.row, self.curves, self.model


def stem_of(name: str) -> str:
    """A run's stem from one of its file names."""
    for suffix in (CURVES_SUFFIX, MODEL_SUFFIX, ROW_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_row_file(path: Path) -> bool:
    """Whether a path is a run's result row (not curves, a model, a manifest, a consolidated table or a temporary)."""
    return (path.name.endswith(ROW_SUFFIX) and not path.name.endswith(CURVES_SUFFIX) and not path.name.startswith(".")
            and path.name not in (MANIFEST, RESULTS_TABLE) and path.parent.name not in (CURVES, MODELS))


def move_legacy_runs(root: str | Path) -> int:
    """Move a legacy runs/ folder's files into rows/, curves/ and models/ (renames, so nothing is copied or lost);
    returns how many moved. Files that are not a run's are left where they are."""
    legacy = Path(root) / LEGACY_RUNS
    if not legacy.is_dir():
        return 0
    moved = 0
    for path in sorted(legacy.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        files = RunFiles.in_folder(root, stem_of(path.name))
        target = {CURVES_SUFFIX: files.curves, MODEL_SUFFIX: files.model}.get(
            next((s for s in (CURVES_SUFFIX, MODEL_SUFFIX) if path.name.endswith(s)), ""),
            files.row if is_row_file(path) else None)
        if target is None or target.exists():
            continue
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        moved += 1
    try:
        legacy.rmdir()  # only when empty
    except OSError:
        pass
    return moved


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def rows(self) -> Path:
        return self.root / ROWS

    @property
    def curves(self) -> Path:
        return self.root / CURVES

    @property
    def models(self) -> Path:
        return self.root / MODELS

    @property
    def legacy_runs(self) -> Path:
        return self.root / LEGACY_RUNS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def study_yaml(self) -> Path:
        return self.root / "study.yaml"

    @property
    def study_json(self) -> Path:
        return self.root / "study.json"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def results_table(self) -> Path:
        return self.root / RESULTS_TABLE

    @property
    def journal(self) -> Path:
        return self.root / "ledger.journal"

    @property
    def ledger_lock(self) -> Path:
        return self.root / ".ledger.lock"

    def run_files(self, stem: str) -> RunFiles:
        return RunFiles.in_folder(self.root, stem)

    def result(self, cell_id: str, attempt: int) -> Path:
        return self.run_files(result_stem(cell_id, attempt)).row

    def row_folders(self) -> list[Path]:
        """Where this folder's result rows are: rows/, and a legacy runs/ when there is one."""
        return [p for p in (self.rows, self.legacy_runs) if p.is_dir()]

    def checkpoint(self, cell_id: str) -> Path:
        return self.checkpoints / f"{cell_id}.pt"

    def is_study(self) -> bool:
        """A folder the report can read: a manifest, or at least a rows/ (or legacy runs/) folder."""
        return self.manifest.is_file() or bool(self.row_folders())
