"""The report's inputs: the study folders under a results root, each read defensively into a StudyInput (files we
did not write are data: anything unreadable is left out and named, never fatal)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ablate.results.layout import StudyFolder
from ablate.report import cell_settings
from ablate.results.rows import load_curves, ok_and_failed

MANIFEST_KEYS = {"cell_id", "arm", "dataset", "model", "seed", "settings"}


# ----------------------------------------------------------------------------- finding and loading studies


def is_study_folder(path: Path) -> bool:
    return StudyFolder(path).is_study()


def find_studies(root: str | Path) -> list[Path]:
    """The study folders under a results root: the root itself when it holds rows/ (runs of `ablate run`; or a
    legacy runs/), then every direct subfolder with a manifest.parquet or rows/, by name."""
    root = Path(root)
    layout = StudyFolder(root)
    found = [root] if layout.row_folders() else []
    own = {layout.rows, layout.curves, layout.models, layout.legacy_runs, layout.checkpoints}
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if p.is_dir() and p not in own and is_study_folder(p))
    return found


@dataclass
class StudyInput:
    folder: Path
    name: str
    meta: dict[str, Any]
    study_text: str | None
    manifest: pd.DataFrame | None
    ok: pd.DataFrame
    failed: pd.DataFrame
    curves: pd.DataFrame
    unreadable: list[Path] = field(default_factory=list)  # files of the folder left out (corrupt or not ours)


def _read_meta(path: Path, unreadable: list[Path]) -> dict[str, Any]:
    """study.json as data: a mapping of plain values, or {} (and the file named as unreadable)."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        unreadable.append(path)
        return {}
    out = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
    overrides = meta.get("overrides")  # the --set overrides the study was swept with: a list of strings
    if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
        out["overrides"] = overrides
    return out


def load_study(folder: str | Path) -> StudyInput:
    """A results folder as the report's input. Its files are data we may not have written: anything unreadable is
    left out and named (StudyInput.unreadable), never fatal."""
    folder = Path(folder)
    unreadable: list[Path] = []
    layout = StudyFolder(folder)
    meta = _read_meta(layout.study_json, unreadable)
    text = None
    if layout.study_yaml.is_file():
        try:
            text = layout.study_yaml.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            unreadable.append(layout.study_yaml)
    manifest = None
    if layout.manifest.is_file():
        try:
            manifest = pd.read_parquet(layout.manifest)
        except (OSError, pa.ArrowException):
            unreadable.append(layout.manifest)
        if manifest is not None and not MANIFEST_KEYS <= set(manifest.columns):
            manifest = None
            unreadable.append(layout.manifest)
    rows = layout.row_folders() or [folder]
    ok, failed = ok_and_failed(rows, unreadable)
    ok = cell_settings.attach_settings(ok, manifest)
    failed = cell_settings.attach_settings(failed, manifest)
    curve_folders = [p for p in (layout.curves, layout.legacy_runs) if p.is_dir()] or [folder]
    curves = load_curves(curve_folders, list(ok["run_id"])) if not ok.empty else pd.DataFrame()
    name = str(meta.get("study") or folder.resolve().name)
    return StudyInput(folder, name, meta, text, manifest, ok, failed, curves, unreadable)
