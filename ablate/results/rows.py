"""The result row: one explicit pyarrow schema, atomic parquet writes, and the loader.

A row holds identity (run id, study, cell id, arm, attempt, seed), status and error, provenance (versions,
commit, host, device, times), the metric conventions (`eval.*`), the metrics (`{split}.{metric}`, float64) and
the flattened resolved config (`config.*`). Curves are a second table: step, epoch, phase, split, beta, kl,
rec, loss.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Sequence, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ablate.core.config_columns import config_column_type
from ablate.results.layout import CURVES_SUFFIX, StudyFolder, is_row_file
from ablate.metrics.schema import is_metric_column
from ablate.results.safe_files import atomic_target

IDENTITY_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("study", pa.string()), ("cell_id", pa.string()), ("config_hash", pa.string()),
    ("arm", pa.string()), ("attempt", pa.int64()), ("seed", pa.int64()), ("search", pa.string()),
    ("search_objectives", pa.string()),
    ("status", pa.string()), ("error_class", pa.string()), ("error_message", pa.string()),
    ("dataset", pa.string()), ("model", pa.string()), ("techniques", pa.string()), ("notes", pa.string()),
    ("started_at", pa.string()), ("finished_at", pa.string()),
    ("train_seconds", pa.float64()), ("eval_seconds", pa.float64()), ("train_steps", pa.int64()),
    ("train_inner_steps", pa.int64()),
    ("params_total", pa.int64()), ("params_trainable", pa.int64()),
    ("train_tokens", pa.int64()), ("train_tokens_per_second", pa.float64()), ("best_epoch", pa.int64()),
    ("device", pa.string()), ("worker_device", pa.string()), ("threads", pa.int64()), ("kernels", pa.string()),
    ("precision", pa.string()),
    ("cpu", pa.string()), ("host", pa.string()), ("git_commit", pa.string()),
    ("version.ablate", pa.string()), ("version.torch", pa.string()), ("version.transformers", pa.string()),
    ("version.python", pa.string()),
    ("eval.iw_samples", pa.int64()), ("eval.mi_pool", pa.int64()), ("eval.mi_pool_kind", pa.string()),
    ("eval.au_delta", pa.float64()), ("eval.token_unit", pa.string()), ("eval.ppl_counts_eos", pa.bool_()),
    ("eval.ppl_counts_bos", pa.bool_()),
])

CURVES_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("epoch", pa.int64()), ("phase", pa.string()),
    ("split", pa.string()), ("beta", pa.float64()), ("kl", pa.float64()), ("rec", pa.float64()),
    ("loss", pa.float64()), ("mu_var", pa.float64()), ("au", pa.float64()),  # mu_var, au: validation points only
])


def _arrow_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def row_schema(row: dict[str, Any]) -> pa.Schema:
    """The fixed identity/provenance fields, float64 for every declared metric (ablate.metrics.schema), and typed
    config columns. Any other key is an error: a column nobody declared would be typed by guess."""
    fields = list(IDENTITY_SCHEMA)
    known = set(IDENTITY_SCHEMA.names)
    for name in sorted(k for k in row if k not in known):
        if name.startswith("config."):
            value = row[name]
            kind = config_column_type(name, row)  # the declared type: one type per column in every row
            if kind is None:
                kind = pa.string() if value is None or isinstance(value, (list, dict)) else _arrow_type(value)
            fields.append(pa.field(name, kind))
        elif is_metric_column(name):
            fields.append(pa.field(name, pa.float64()))
        else:
            raise ValueError(f"result row column '{name}' is neither an identity field, a declared metric "
                             "(ablate.metrics.schema) nor config.*: declare it")
    return pa.schema(fields)


def _coerce(value: Any, kind: pa.DataType) -> Any:
    """A value in its column's type (an int in a float column, 32 in eval.mi_pool's string column, ...)."""
    if value is None:
        return None
    if kind == pa.string() and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    if kind == pa.float64() and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def write_atomic(table: pa.Table, path: Path, **options: Any) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file. `options` go to
    pyarrow.parquet.write_table."""
    with atomic_target(path) as tmp:
        pq.write_table(table, tmp, **options)


def write_row(row: dict[str, Any], path: Path) -> None:
    schema = row_schema(row)
    columns = {f.name: [_coerce(row.get(f.name), f.type)] for f in schema}
    write_atomic(pa.Table.from_pydict(columns, schema=schema), path)


# A curve has a point per training step (131,500 for 100 PTB epochs). Stored losslessly ≈ 3× smaller than parquet's
# defaults: the floats come from float32 tensors, so their float64 low bytes are zeros, and split into byte streams
# zstd packs them; steps and epochs count up, delta-encoded; the strings repeat, dictionary-encoded.
_CURVE_FLOATS = [f.name for f in CURVES_SCHEMA if pa.types.is_floating(f.type)]
_CURVE_COUNTERS = [f.name for f in CURVES_SCHEMA if pa.types.is_integer(f.type)]
CURVES_WRITE_OPTIONS = {
    "compression": "zstd", "compression_level": 19,
    "use_dictionary": [n for n in CURVES_SCHEMA.names if n not in _CURVE_FLOATS + _CURVE_COUNTERS],
    "column_encoding": {**{n: "BYTE_STREAM_SPLIT" for n in _CURVE_FLOATS},
                        **{n: "DELTA_BINARY_PACKED" for n in _CURVE_COUNTERS}}}


def write_curves(curves: list[dict[str, Any]], run_id: str, path: Path) -> None:
    columns = {f.name: [run_id if f.name == "run_id" else c.get(f.name) for c in curves] for f in CURVES_SCHEMA}
    write_atomic(pa.Table.from_pydict(columns, schema=CURVES_SCHEMA), path, **CURVES_WRITE_OPTIONS)


ROW_KEYS = {"run_id", "cell_id", "status", "arm", "attempt", "seed", "dataset", "model", "finished_at"}
CURVE_KEYS = set(CURVES_SCHEMA.names) - {"mu_var", "au"}  # added later: a curves file of an older ablate has none


def schema_problem(table: pa.Table, curves: bool = False) -> str | None:
    """Why a result (or curves) file's columns do not have their declared types, or None when they do.

    Identity and provenance columns against IDENTITY_SCHEMA, metric columns float64, config columns their declared
    field's type, curves against CURVES_SCHEMA; a column of nulls, and whole numbers in a float column, pass. A
    file that fails is not one ablate wrote (or was changed since): issue 27 reads result files as data."""
    declared = CURVES_SCHEMA if curves else IDENTITY_SCHEMA
    first = table.slice(0, 1).to_pylist()[0] if table.num_rows else {}
    for field in table.schema:
        kind = declared.field(field.name).type if field.name in declared.names else None
        if kind is None and not curves:
            if is_metric_column(field.name):
                kind = pa.float64()
            elif field.name.startswith("config."):
                kind = config_column_type(field.name, first)
        if kind is None or field.type == kind or pa.types.is_null(field.type):
            continue
        if pa.types.is_floating(kind) and pa.types.is_integer(field.type):
            continue
        return f"column {field.name} is {field.type}, declared {kind}"
    return None


def read_tables(paths: list[Path], unreadable: list[Path] | None = None, required: set[str] = frozenset(),
                curves: bool | None = None) -> list[pa.Table]:
    """The parquet tables of files we wrote. A file that is not a readable parquet table (truncated, corrupt),
    lacks a `required` column, or has a column of another type than declared (`schema_problem`; rows, or curves
    when `curves`) is left out and, when `unreadable` is given, appended to it; without `unreadable` it raises."""
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
            missing = required - set(table.column_names)
            if missing:
                raise pa.ArrowInvalid(f"{path}: not a result file (no column {sorted(missing)[0]})")
            problem = schema_problem(table, curves) if curves is not None else None
            if problem:
                raise pa.ArrowInvalid(f"{path}: not a result file ablate wrote ({problem})")
            tables.append(table)
        except (OSError, pa.ArrowException):
            if unreadable is None:
                raise
            unreadable.append(path)
    return tables


def check_row_file(path: Path) -> str | None:
    """Why `path` is not a readable result row of the declared schema (None when it is)."""
    try:
        read_tables([path], None, ROW_KEYS, curves=False)
    except (OSError, pa.ArrowException) as error:
        return str(error).removeprefix(f"{path}: ")[:200]
    return None


def read_rows(paths: list[Path], unreadable: list[Path] | None = None, required: set[str] = frozenset(),
              curves: bool | None = None) -> pd.DataFrame:
    """Concatenate result files as pandas (columns may differ between techniques' configs); see read_tables."""
    frames = [table.to_pandas() for table in read_tables(paths, unreadable, required, curves)]
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()


def git_commit(directory: Path | None = None) -> str:
    """The current commit of the source checkout (with '+dirty' when modified), or '' outside git."""
    where = directory or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}+dirty" if commit and dirty else commit


def ok_and_failed(directory: Folders, unreadable: list[Path] | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All result rows under a folder (recursively), split as the report reads them: (successful, failed).

    Successful rows are deduplicated by cell id, keeping the latest attempt (then the latest finish time);
    failed rows are every failed attempt, kept apart so that a retried cell does not count twice. Files that
    cannot be read are skipped into `unreadable` when it is given (else the error is raised).
    """
    rows = read_rows(row_files(directory), unreadable, ROW_KEYS, curves=False)
    if rows.empty:
        return rows, rows
    ok = rows[rows["status"] == "ok"].sort_values(["cell_id", "attempt", "finished_at"])
    ok = ok.drop_duplicates("cell_id", keep="last").reset_index(drop=True)
    failed = rows[rows["status"] != "ok"].reset_index(drop=True)
    return ok, failed


Folders = Union[str, Path, Sequence[Path]]


def _folders(directory: Folders) -> list[Path]:
    return [Path(directory)] if isinstance(directory, (str, Path)) else [Path(d) for d in directory]


def row_files(directory: Folders) -> list[Path]:
    """The result-row files under a folder or folders, recursively (each attempt's own file; not curves, models,
    manifests or consolidated tables)."""
    return sorted({p for d in _folders(directory) for p in d.rglob("*.parquet") if is_row_file(p)})


def rows_table(directory: Folders, unreadable: list[Path] | None = None) -> pa.Table:
    """Every attempt's row under a folder as one arrow table (columns unified: a column absent from a row's
    file is null there; each column keeps its one declared type)."""
    tables = read_tables(row_files(directory), unreadable, ROW_KEYS, curves=False)
    if not tables:
        return IDENTITY_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def write_results_table(study_folder: str | Path) -> Path:
    """Rewrite a study's results.parquet from its rows/ (atomically); returns its path."""
    layout = StudyFolder(study_folder)
    unreadable: list[Path] = []
    table = rows_table(layout.row_folders(), unreadable)
    warn_left_out(unreadable)
    write_atomic(table.sort_by([("cell_id", "ascending"), ("attempt", "ascending")]), layout.results_table)
    return layout.results_table


def single_runs(rows: pd.DataFrame) -> pd.Series:
    """Which rows come from `ablate run` (no study): their `study` is empty."""
    if "study" not in rows:
        return pd.Series(True, index=rows.index)
    return rows["study"].fillna("").astype(str) == ""


def name_single_runs(rows: pd.DataFrame) -> pd.Series:
    """Each row's arm, where an `ablate run` row (which has none) is named by its run id (`--name`)."""
    arm = rows["arm"] if "arm" in rows else pd.Series("", index=rows.index, dtype=object)
    if "run_id" not in rows:
        return arm
    return arm.where(~(single_runs(rows) & (arm.fillna("") == "")), rows["run_id"].astype(str))


def read_results(path: str | Path) -> pd.DataFrame:
    """Every result row under `path` (a study folder, a results root, a rows/ folder, or a results.parquet) as
    one pandas DataFrame: one row per attempt (`status` ok or failed), stable column types. The notebook entry
    point, also `ablate.load_results`."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path).to_pandas()
    unreadable: list[Path] = []
    table = rows_table(path, unreadable)
    warn_left_out(unreadable)
    return table.to_pandas()


def warn_left_out(unreadable: list[Path], kind: str = "result", what: str = "a result row") -> None:
    """One warning naming the result (or curves) files left out as unreadable or not of the declared schema."""
    if unreadable:
        from ablate.core.log import LOG

        names = ", ".join(str(p) for p in unreadable[:5]) + (f" and {len(unreadable) - 5} more"
                                                             if len(unreadable) > 5 else "")
        LOG.warning(f"{len(unreadable)} unreadable {kind} file(s) left out (not {what} of the declared "
                    f"schema): {names}")


def load_curves(directory: Folders, run_ids: list[str] | None = None) -> pd.DataFrame:
    """Curves of the runs under a folder or folders (optionally only some run ids)."""
    paths = sorted({p for d in _folders(directory) for p in d.rglob(f"*{CURVES_SUFFIX}")})
    unreadable: list[Path] = []
    curves = read_rows(paths, unreadable, CURVE_KEYS, curves=True)  # an unreadable file leaves its run's line out
    warn_left_out(unreadable, "curves", "a curves table")
    if run_ids is not None and not curves.empty:
        curves = curves[curves["run_id"].isin(run_ids)]
    return curves
