"""`ablate results STUDY_OR_FOLDER`: a study's result rows on the terminal or to a file (table, csv, json, parquet).

What it prints is `ablate.load_results(folder)` (one row per attempt), by default the latest successful attempt of
each cell (each run, for `ablate run` rows, whose arm column shows the run's name) with the columns a reader looks
at first; `--all` keeps every attempt, `--columns` chooses (glob
patterns such as 'test.*' work).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from ablate.cli.commands import COMMANDS
from ablate.core.log import LOG

DEFAULT_COLUMNS = ["arm", "dataset", "model", "seed", "attempt", "status", "test.nll", "test.ppl", "test.kl",
                   "test.mi", "test.au", "valid.nll", "cell_id"]
FORMATS = ("table", "csv", "json", "parquet")


def _folder(target: str, out: str) -> Path:
    from ablate.core.config import ConfigError
    from ablate.core.config_reading import is_study, read_yaml
    from ablate.sweep.folder import resolve_target

    path = Path(target)
    if path.is_dir() or path.name.endswith(".parquet"):
        if not path.exists():
            raise ConfigError(f"{target}: no such folder or file")
        return path
    if path.is_file() and is_study(read_yaml(path)):
        return resolve_target(path, out)[1]
    raise ConfigError(f"{target}: give a study file, its results folder (results/<study>) or a results.parquet")


def cmd_results(args: argparse.Namespace) -> int:
    from ablate.core.config import ConfigError
    from ablate.results.rows import name_single_runs, read_results, single_runs

    folder = _folder(args.study, args.results)
    rows = read_results(folder)
    if rows.empty:
        raise ConfigError(f"{folder}: no result rows yet; run `ablate sweep` (or `ablate run --out`) first")
    single = single_runs(rows)
    rows["arm"] = name_single_runs(rows)  # `ablate run` rows by their --name
    if not args.all:  # the latest ok attempt of each cell (of a study) or each run (of `ablate run`)
        key = rows["cell_id"].where(~single, rows["run_id"])
        rows = rows.assign(_key=key)[rows["status"] == "ok"].sort_values(["_key", "attempt"])
        rows = rows.drop_duplicates("_key", keep="last").drop(columns="_key")
    wanted = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else \
        DEFAULT_COLUMNS[:-1] + telling_apart(rows) + DEFAULT_COLUMNS[-1:]
    columns = [c for pattern in wanted for c in rows.columns if fnmatch.fnmatchcase(c, pattern)]
    unknown = [p for p in wanted if not any(fnmatch.fnmatchcase(c, p) for c in rows.columns)]
    if unknown and args.columns:
        from ablate.core.config_reading import suggest

        raise ConfigError(f"--columns: no column '{unknown[0]}'{suggest(unknown[0], list(rows.columns))}")
    rows = rows[list(dict.fromkeys(columns))].reset_index(drop=True)
    if args.format == "parquet":
        if not args.output:
            raise ConfigError("--format parquet writes a file: give --output FILE")
        from ablate.results.safe_files import atomic_target

        with atomic_target(Path(args.output)) as tmp:
            rows.to_parquet(tmp, index=False)
    elif args.format == "table":  # a missing value is "—", never "None" or "NaN"
        text = rows.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="—") if rows.empty else \
            rows.astype(object).where(rows.notna(), "—").to_string(
                index=False, formatters={c: _cell for c in rows.columns})
        _emit(text + "\n", args.output)
    elif args.format == "csv":
        from ablate.results.safe_files import spreadsheet_safe

        _emit(spreadsheet_safe(rows).to_csv(index=False, lineterminator="\n"), args.output)
    else:
        _emit(rows.to_json(orient="records", indent=1) + "\n", args.output)
    if args.output:
        LOG.info(f"wrote {len(rows)} rows × {len(rows.columns)} columns to {args.output}")
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def telling_apart(rows) -> list[str]:
    """The config columns whose values differ between rows of one arm, dataset, model and seed: cells swept with
    different --set overrides into one folder (or a search's trials), shown so the rows can be told apart."""
    keys = [k for k in ("arm", "dataset", "model", "seed") if k in rows]
    if not keys or len(rows) < 2:
        return []
    config = [c for c in rows.columns if c.startswith("config.") and c != "config.seed"]
    varying = rows.groupby(keys, dropna=False)[config].nunique(dropna=False).max() if config else None
    return [] if varying is None else [c for c in config if varying[c] > 1]


def _emit(text: str, output: str | None) -> None:
    if output:
        from ablate.results.safe_files import write_text_atomic

        write_text_atomic(Path(output), text)
    else:
        from ablate.core.log import terminal_safe

        sys.stdout.write(terminal_safe(text))


@COMMANDS.register("results")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="a study's result rows as a table, csv, json or parquet")
    p.add_argument("study", help="study YAML file, its results folder (results/<study>) or a results.parquet")
    p.add_argument("--results", default="results", help="results root of a study given as a file (results/)")
    p.add_argument("--format", default="table", choices=FORMATS)
    p.add_argument("--columns", default=None, metavar="A,B,...",
                   help="columns (glob patterns: 'test.*', 'config.train.*'); default: identity and test metrics")
    p.add_argument("--all", action="store_true", help="every attempt, failed ones included (default: the latest "
                                                       "ok attempt per cell)")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of the terminal")
    p.set_defaults(func=cmd_results)
