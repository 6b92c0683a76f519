"""A study's results folder as the sweep writes and finds it (the layout itself: ablate.results.layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from ablate.core.config import ConfigError
from ablate.results.layout import StudyFolder, move_legacy_runs
from ablate.core.log import LOG
from ablate.sweep.attempts import now_iso
from ablate.sweep.cells import Study
from ablate.sweep.study import load_study
from ablate.sweep.study_parts import NAME_RE


# ---------------------------------------------------------------- the study folder


def study_folder(out: str | Path, name: str) -> Path:
    return Path(out) / name


def write_study_files(study: Study, folder: Path) -> None:
    """study.yaml (the file as run), study.json (name, file, hash, --set overrides, created) and manifest.parquet."""
    from ablate.results.safe_files import write_text_atomic
    from ablate.results.rows import write_atomic

    layout = StudyFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    moved = move_legacy_runs(folder)
    if moved:
        LOG.info(f"{folder}: moved {moved} files of runs/ into rows/, curves/ and models/ (the current layout)")
    for part in (layout.rows, layout.curves, layout.models, layout.checkpoints):
        part.mkdir(exist_ok=True)
    meta_path = layout.study_json
    created = now_iso()
    if meta_path.exists():
        try:
            created = json.loads(meta_path.read_text()).get("created", created)
        except (OSError, ValueError):
            pass
    meta = {"study": study.name, "study_file": str(study.path), "study_hash": study.hash, "overrides": study.overrides,
            "created": created, "updated": now_iso(), "cells": len(study.cells)}
    write_text_atomic(layout.study_yaml, study.text)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    searched = {s.arm for s in study.searches}  # a search arm's trials asked so far stay in the manifest
    kept = [r for r in read_manifest(folder) if r.get("search") and r["arm"] in searched]
    rows = [{**r, "search": ""} for r in study.manifest_rows()] + kept
    write_atomic(_manifest_table(rows), layout.manifest)


MANIFEST_SCHEMA = pa.schema([("cell_id", pa.string()), ("arm", pa.string()), ("dataset", pa.string()),
                             ("model", pa.string()), ("seed", pa.int64()), ("settings", pa.string()),
                             ("config", pa.string()), ("search", pa.string())])  # search: "" or the search's key


def _manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pydict({f.name: [r.get(f.name, "") if f.name == "search" else r[f.name] for r in rows]
                                 for f in MANIFEST_SCHEMA}, schema=MANIFEST_SCHEMA)


def read_manifest(folder: Path) -> list[dict]:
    """The manifest's rows as dicts ([] when there is none or it cannot be read)."""
    import pyarrow.parquet as pq

    path = StudyFolder(folder).manifest
    try:
        return pq.read_table(path).to_pylist() if path.exists() else []
    except Exception:  # noqa: BLE001 - rewritten from the study next
        return []


def append_manifest(folder: Path, rows: list[dict]) -> None:
    """Add cells a search asked for (one row each, `search` = the search's key)."""
    from ablate.results.rows import write_atomic

    if rows:
        known = read_manifest(folder)
        have = {r["cell_id"] for r in known}
        write_atomic(_manifest_table(known + [r for r in rows if r["cell_id"] not in have]),
                     StudyFolder(folder).manifest)


def cells_outside_the_study(folder: Path) -> list[str]:
    """Cell ids with result files in the folder that the study as last swept does not have (the manifest): rows
    of an earlier definition — another --set, an edited study — kept beside the current ones."""
    from ablate.sweep.attempts import ResultIndex

    known = {r["cell_id"] for r in read_manifest(folder)}
    return sorted(c for c in ResultIndex(folder).files if c not in known) if known else []


def recorded_overrides(folder: Path) -> list[str]:
    """The --set overrides a study folder was last swept with (study.json; [] when none or unreadable)."""
    try:
        overrides = json.loads(StudyFolder(folder).study_json.read_text(encoding="utf-8")).get("overrides", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []


def resolve_target(target: str | Path, out: str | Path, overrides: list[str] | None = None
                   ) -> tuple[str, Path, Study | None]:
    """A study file (→ name, out/name, the Study with `overrides`) or a study folder holding study.json (→ name,
    folder, None)."""
    target = Path(target)
    if target.is_dir():
        meta = StudyFolder(target).study_json
        if not meta.exists():
            raise ConfigError(f"{target}: not a study folder (no study.json); give the study YAML file")
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["study"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{meta}: not a study record ablate wrote (no valid 'study' name); give the study "
                              "YAML file")
        return name, target, None
    study = load_study(target, overrides)
    return study.name, study_folder(out, study.name), study
