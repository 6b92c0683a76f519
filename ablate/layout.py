"""Where things are in a results folder: the one module that knows the layout (.notes/CONTRACTS.md).

    results/<study>/            a study (ablate sweep); `ablate run --out DIR` uses DIR/runs/ alone
        results.parquet         every attempt's row in one table (runs/*.parquet consolidated as cells end)
        study.yaml              the study file as run
        study.json              name, file, hash, created/updated, cells
        manifest.parquet        one row per expected cell
        ledger.journal          the Optuna journal (default storage), with ledger.journal.flock and .ledger.lock
        runs/<cell>.a<n>.parquet, .curves.parquet, .model.pt     attempt n of a cell
        checkpoints/<cell>.pt   the last epoch of a cell's unfinished attempt
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.parquet"
RESULTS_TABLE = "results.parquet"  # every attempt's row in one table, rewritten as cells finish
RESULT_NAME = re.compile(r"^(?P<cell>[0-9a-f]{12})\.a(?P<attempt>\d+)\.parquet$")
MODEL_NAME = re.compile(r"^(?P<cell>[0-9a-f]{12})\.a(?P<attempt>\d+)\.model\.pt$")


def result_stem(cell_id: str, attempt: int) -> str:
    return f"{cell_id}.a{attempt}"


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

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

    def result(self, cell_id: str, attempt: int) -> Path:
        return self.runs / f"{result_stem(cell_id, attempt)}.parquet"

    def checkpoint(self, cell_id: str) -> Path:
        return self.checkpoints / f"{cell_id}.pt"

    def is_study(self) -> bool:
        """A folder the report can read: a manifest, or at least a runs/ folder."""
        return self.manifest.is_file() or self.runs.is_dir()
