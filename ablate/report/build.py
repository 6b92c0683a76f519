"""`ablate report`: stored results of one or more studies → one index.html with tables and plots.

For each study folder (results/<study>/: study.json, study.yaml, manifest.parquet, runs/; see
.notes/CONTRACTS.md) the report has a header (study, study-file hash, dates, git commits, package versions,
compute time), a plain summary of which arms collapse, coverage (and the cells still missing), a main table
per dataset × model, the best setting per technique with paired differences against the baseline arm, plots,
and the failures. Every table is also written as CSV, LaTeX and JSON under `<out>/<study>/tables/`, plots as
PNG and SVG under `<out>/<study>/plots/`.

The report is a pure function of the stored results: it never trains, stamps no generation time, and writes
plot files deterministically, so building it twice gives identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ablate.references import Reference, convention_mismatches, load_references
from ablate.report import plots, tables
from ablate.report.schema import COLLAPSE_KL, Metric, in_table, main_metrics, metric, metrics_in
from ablate.layout import StudyFolder
from ablate.metric_schema import SELECT
from ablate.outputs import write_text_atomic
from ablate.results import load_curves, load_results

TEMPLATES = Path(__file__).with_name("templates")
MANIFEST_KEYS = {"cell_id", "arm", "dataset", "model", "seed", "settings"}
WRITTEN_LIST = ".ablate-report-files.json"  # what the last build wrote, relative to --out: all a rebuild removes


# ----------------------------------------------------------------------------- finding and loading studies


def is_study_folder(path: Path) -> bool:
    return StudyFolder(path).is_study()


def find_studies(root: str | Path) -> list[Path]:
    """The study folders under a results root: the root itself when it holds runs/ (runs of `ablate run`),
    then every direct subfolder with a manifest.parquet or a runs/ folder, by name."""
    root = Path(root)
    found = [root] if StudyFolder(root).runs.is_dir() else []
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if p.is_dir() and p != StudyFolder(root).runs
                        and is_study_folder(p))
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
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}


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
    runs = layout.runs if layout.runs.is_dir() else folder
    ok, failed = load_results(runs, unreadable)
    ok = tables.attach_settings(ok, manifest)
    failed = tables.attach_settings(failed, manifest)
    curves = load_curves(runs, list(ok["run_id"])) if not ok.empty else pd.DataFrame()
    name = str(meta.get("study") or folder.resolve().name)
    return StudyInput(folder, name, meta, text, manifest, ok, failed, curves, unreadable)


# ----------------------------------------------------------------------------- rendered tables


@dataclass
class Col:
    label: str
    tooltip: str = ""
    numeric: bool = False


@dataclass
class Cell:
    text: str
    sort: Any = None          # the value sorted on (the mean for metric cells); None: the text
    bold: bool = False
    cls: str = ""
    title: str = ""

    @property
    def sort_attr(self) -> str:
        if self.sort is None:
            return self.text
        if isinstance(self.sort, (int, float)):
            value = float(self.sort)
            if math.isnan(value):
                return ""
            return ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else repr(value)
        return str(self.sort)


@dataclass
class Table:
    id: str
    title: str
    columns: list[Col]
    rows: list[list[Cell]]
    data: pd.DataFrame                  # the numbers behind it, written as CSV and JSON
    notes: list[str] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    footer: list[list[Cell]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)   # format → path relative to index.html


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def mean_std_n(m: Metric, mean: Any, std: Any, n: Any) -> str:
    mean, std = _num(mean), _num(std)
    n = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
    if n == 0 or math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{m.fmt(mean)} ({n})"
    return f"{m.fmt(mean)} ± {m.fmt(std)} ({n})"


def _count(value: Any) -> str:
    v = _num(value)
    return "–" if math.isnan(v) else f"{int(v)}"


# ----------------------------------------------------------------------------- header


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    mnt, sec = divmod(rem, 60)
    if h:
        return f"{h} h {mnt:02d} min"
    if mnt:
        return f"{mnt} min {sec:02d} s"
    return f"{sec} s"


def header(study: StudyInput) -> dict[str, Any]:
    rows = pd.concat([f for f in (study.ok, study.failed) if not f.empty], ignore_index=True, sort=False) \
        if not (study.ok.empty and study.failed.empty) else pd.DataFrame()
    recorded = study.meta.get("study_hash")
    actual = hashlib.sha256(study.study_text.encode()).hexdigest() if study.study_text is not None else None
    seconds = math.nan
    if not rows.empty:
        seconds = float(rows.get("train_seconds", pd.Series(dtype=float)).fillna(0).sum()
                        + rows.get("eval_seconds", pd.Series(dtype=float)).fillna(0).sum())
    versions = []
    for col in sorted(c for c in rows.columns if c.startswith("version.")) if not rows.empty else []:
        versions.append((col.split(".", 1)[1], tables.value_counts(rows, col)))

    def first_last(col: str, pick) -> str:
        if rows.empty or col not in rows:
            return "–"
        values = rows[col].dropna().astype(str)
        return pick(values) if not values.empty else "–"

    return {
        "study": study.name,
        "folder": str(study.folder),
        "study_file": study.meta.get("study_file", "–"),
        "study_hash": recorded or actual or "–",
        "hash_mismatch": bool(recorded and actual and recorded != actual),
        "created": study.meta.get("created", "–"),
        "updated": study.meta.get("updated", "–"),
        "first_start": first_last("started_at", min),
        "last_finish": first_last("finished_at", max),
        "commits": tables.value_counts(rows, "git_commit"),
        "versions": versions,
        "devices": tables.value_counts(rows, "device"),
        "hosts": tables.value_counts(rows, "host"),
        "compute": _duration(seconds),
        "compute_seconds": seconds,
        "n_ok": len(study.ok),
        "n_failed_attempts": len(study.failed),
        "study_text": study.study_text,
    }


# ----------------------------------------------------------------------------- conventions


def conventions(rows: pd.DataFrame, split: str) -> list[str]:
    """The evaluation conventions of a table's rows, one phrase each; values that differ are flagged MIXED."""
    def values(column: str) -> list[Any]:
        if rows.empty or column not in rows:
            return []
        return sorted(rows[column].dropna().unique().tolist(), key=str)

    def shown(column: str) -> str:
        found = values(column)
        text = ", ".join(_fmt_convention(v) for v in found)
        return text + (" (MIXED between rows: not comparable)" if len(found) > 1 else "")

    out = []
    if values("eval.iw_samples"):
        out.append(f"IW samples K = {shown('eval.iw_samples')}")
    pool_col = f"{split}.mi_pool" if values(f"{split}.mi_pool") else "eval.mi_pool"
    if values(pool_col):
        bounds = ", ".join(f"{math.log(float(v)):.2f}" for v in values(pool_col) if float(v) > 1)
        kind = f"{shown('eval.mi_pool_kind')}; " if values("eval.mi_pool_kind") else ""
        out.append(f"MI pool M = {shown(pool_col)} ({kind}MI ≤ log M = {bounds or '–'})")
    if values("eval.au_delta"):
        out.append(f"AU δ = {shown('eval.au_delta')}")
    if values("eval.token_unit"):
        eos = {True: "counting </s>", False: "not counting </s>"}
        bos = {True: "counting <s>", False: "not counting <s>"}
        parts = [f"PPL token unit = {shown('eval.token_unit')}"]
        for column, words in (("eval.ppl_counts_eos", eos), ("eval.ppl_counts_bos", bos)):
            found = values(column)
            if found:
                parts.append(" / ".join(words.get(bool(v), str(v)) for v in found)
                             + (" (MIXED)" if len(found) > 1 else ""))
        out.append(", ".join(parts) + "; PPL/word per word + </s>")
    return out


def probe_baselines(rows: pd.DataFrame, split: str) -> str | None:
    """The majority-class accuracy of each probed factor (what a probe reaches from an uninformative z)."""
    prefix = f"{split}.probe_majority."
    cols = sorted(c for c in rows.columns if c.startswith(prefix) and rows[c].notna().any())
    if not cols:
        return None
    parts = [f"{c[len(prefix):]} {rows[c].mean():.3f}" for c in cols]
    return (f"Probe accuracies compare with the majority-class baseline ({split}, mean over rows): "
            + ", ".join(parts) + ".")


def _fmt_convention(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------- the tables of one study


def _setting_cell(setting: str) -> Cell:
    return Cell(setting or "—", sort=setting or "")


def coverage_table(study: StudyInput, tid: str, arms: Sequence[str]) -> Table:
    cov = tables.coverage(study.manifest, study.ok, study.failed, arms)
    cols = [Col("dataset"), Col("model"), Col("arm"),
            Col("expected", "cells in the manifest (settings × seeds)", True),
            Col("succeeded", "cells with a successful result", True),
            Col("failed", "cells whose every attempt so far failed (see Failures)", True),
            Col("missing", "cells not run yet", True),
            Col("extra", "results of cells not in the manifest (the study file changed since)", True)]
    rows, classes = [], []
    for _, r in cov.iterrows():
        incomplete = _num(r["failed"]) > 0 or _num(r["missing"]) > 0
        rows.append([Cell(r["dataset"]), Cell(r["model"]), Cell(r["arm"])]
                    + [Cell(_count(r[c]), sort=_num(r[c])) for c in ("expected", "succeeded", "failed", "missing",
                                                                      "extra")])
        classes.append("incomplete" if incomplete else "")
    total = tables.coverage_total(cov)
    footer = [[Cell("total"), Cell(""), Cell("")] + [Cell(_count(total[c])) for c in
                                                      ("expected", "succeeded", "failed", "missing", "extra")]]
    notes = []
    if study.manifest is None:
        notes.append("No manifest.parquet: what the study expected is unknown, so expected and missing are blank.")
    if study.unreadable:
        names = ", ".join(p.name for p in study.unreadable[:10]) + (" …" if len(study.unreadable) > 10 else "")
        notes.append(f"{len(study.unreadable)} file(s) of the results folder could not be read and are left out "
                     f"(their cells count as missing): {names}.")
    return Table(tid, "Cells per arm", cols, rows, cov, notes, classes, footer)


def missing_table(study: StudyInput, tid: str) -> Table | None:
    miss = tables.missing_cells(study.manifest, study.ok, study.failed)
    if miss.empty:
        return None
    cols = [Col("dataset"), Col("model"), Col("arm"), Col("setting"), Col("seed", numeric=True), Col("cell"),
            Col("status", "failed: every attempt failed; missing: not run yet")]
    rows = [[Cell(r["dataset"]), Cell(r["model"]), Cell(r["arm"]), _setting_cell(r["setting"]),
             Cell(str(r["seed"]), sort=_num(r["seed"])), Cell(r["cell_id"], cls="mono"), Cell(r["status"])]
            for _, r in miss.iterrows()]
    return Table(tid, "Cells without a result", cols, rows, miss,
                 ["The report below covers only the cells that succeeded."],
                 ["failed" if s == "failed" else "missing" for s in miss["status"]])


def _metric_col(m: Metric, split: str) -> Col:
    direction = {"min": "lower is better", "max": "higher is better", None: "no best (neither direction)"}
    return Col(f"{m.label}", f"{m.definition} Unit: {m.unit}. {direction[m.direction]}. Column {split}.{m.name}; "
                             f"cells: mean ± std (n seeds).", True)


def main_table(rows: pd.DataFrame, panel: tuple[str, str], split: str, arms: Sequence[str], tid: str) -> Table:
    metrics = metrics_in(rows.columns, split)
    names = [m.name for m in metrics]
    agg = tables.aggregate(rows, split, names, arms)
    best = tables.best_mask(agg, names)
    cols = [Col("arm"), Col("setting", "the swept axis values of this row within its arm"),
            Col("n", "runs (seeds) in this row", True)] + [_metric_col(m, split) for m in metrics] \
        + [Col("collapse", f"collapsed: mean AU = 0 or mean KL < {COLLAPSE_KL} nats")]
    out_rows, classes = [], []
    for i, r in agg.iterrows():
        cells = [Cell(r["arm"]), _setting_cell(r["setting"]), Cell(str(int(r["n_runs"])), sort=r["n_runs"])]
        for m in metrics:
            cells.append(Cell(mean_std_n(m, r[f"{m.name}.mean"], r[f"{m.name}.std"], r[f"{m.name}.n"]),
                              sort=_num(r[f"{m.name}.mean"]), bold=bool(best.at[i, m.name])))
        cells.append(Cell("collapsed" if r["collapsed"] else "", cls="flag" if r["collapsed"] else ""))
        out_rows.append(cells)
        classes.append("collapsed" if r["collapsed"] else "")
    data = agg.drop(columns=["seeds"]).assign(seeds=agg["seeds"].map(lambda s: " ".join(map(str, s))))
    for name in names:
        data[f"{name}.best"] = best[name].to_numpy()
    notes = [f"Split: {split}. Cells: mean ± std (n) over seeds (std with ddof 1). Bold: best per column by "
             f"the metric's direction; KL has none. Collapse flag: mean AU = 0 or mean KL < {COLLAPSE_KL} nats."]
    notes += ["Conventions: " + "; ".join(conventions(rows, split)) + "."] if conventions(rows, split) else []
    notes += [n for n in [probe_baselines(rows, split)] if n]
    return Table(tid, f"Main table — {panel[0]} × {panel[1]}", cols, out_rows, data, notes, classes)


def best_table(rows: pd.DataFrame, panel: tuple[str, str], split: str, baseline: str, select: Sequence[str],
               deltas: Sequence[str], arms: Sequence[str], tid: str) -> tuple[Table, pd.DataFrame]:
    best_names = in_table("best")  # + probes; the main table has every metric
    metrics = [m for m in metrics_in(rows.columns, split) if m.name in best_names or m.name.startswith("probe.")]
    best = tables.best_per_technique(rows, baseline, select, split, [m.name for m in metrics], deltas, arms)
    select_col = best["select"].iloc[0] if not best.empty else None
    delta_names = [d for d in deltas if f"d.{d}.mean" in best]
    sel_metric = metric(select_col.split(".", 1)[1]) if select_col else None
    # order: arm, setting, collapse verdict, selection value, then each metric followed by its Δ, then the rest
    order: list[tuple[str, str]] = []
    for m in metrics:
        order.append(("value", m.name))
        if m.name in delta_names:
            order.append(("delta", m.name))
    order += [("delta", d) for d in delta_names if d not in [m.name for m in metrics]]
    cols = [Col("arm"), Col("chosen setting", "the setting with the best validation mean over seeds"),
            Col("of", "settings this arm swept", True),
            Col("collapse (seeds)", f"seeds whose {split} AU = 0 or KL < {COLLAPSE_KL} nats, of the seeds run")]
    if sel_metric:
        cols.append(Col(f"{select_col}", f"Selection metric: {sel_metric.definition} Mean over seeds on the "
                                         f"validation split; the best mean picks the setting.", True))
    for kind, name in order:
        if kind == "value":
            cols.append(_metric_col(metric(name), split))
        else:
            cols.append(Col(f"Δ{metric(name).label}",
                            f"Paired difference {split}.{name}: arm − {baseline} (at its own chosen setting), over "
                            f"the seeds both have: mean ± std (n). Markers: * p < 0.05, ** p < 0.01, *** p < 0.001 "
                            f"(two-sided paired t-test across seeds).", True))
    mask = tables.best_mask(best, [m.name for m in metrics]) if not best.empty else pd.DataFrame()
    out_rows, classes = [], []
    for i, r in best.iterrows():
        n = len(r["seeds"])
        k = int(r["collapsed_seeds"])
        cells = [Cell(r["arm"]), _setting_cell(r["setting"]), Cell(str(int(r["n_settings"])), sort=r["n_settings"]),
                 Cell(tables.verdict(k, n) + ("" if 0 < k < n else f" ({k}/{n})"), sort=k / max(n, 1),
                      cls="flag" if k else "")]
        if sel_metric:
            cells.append(Cell(f"{sel_metric.fmt(r['select.mean'])} ({int(r['select.n'])})",
                              sort=_num(r["select.mean"])))
        for kind, name in order:
            m = metric(name)
            if kind == "value":
                cells.append(Cell(mean_std_n(m, r[f"{name}.mean"], r[f"{name}.std"], r[f"{name}.n"]),
                                  sort=_num(r[f"{name}.mean"]), bold=bool(mask.at[i, name])))
                continue
            if r["arm"] == baseline:
                cells.append(Cell("(baseline)", sort=math.nan))
                continue
            text = mean_std_n(m, r[f"d.{name}.mean"], r[f"d.{name}.std"], r[f"d.{name}.n"])
            if text != "–" and _num(r[f"d.{name}.mean"]) > 0:
                text = "+" + text
            p = _num(r[f"d.{name}.p"])
            cells.append(Cell(f"{text} {r[f'd.{name}.marker']}".strip(), sort=_num(r[f"d.{name}.mean"]),
                              title="" if math.isnan(p) else f"t = {_num(r[f'd.{name}.t']):.3g}, p = {p:.3g}"))
        out_rows.append(cells)
        classes.append("collapsed" if k == n and n else "")
    notes = []
    if select_col:
        lowest = "highest" if sel_metric and sel_metric.direction == "max" else "lowest"
        notes.append(f"Each arm's setting is chosen by the {lowest} mean {select_col} over seeds (validation split"
                     f"{', the importance-weighted NLL' if select_col.endswith('.nll') else ''}); the row reports "
                     f"that setting on the {split} split (mean ± std (n)). Bold: best per column.")
    if baseline in set(best["arm"]) if not best.empty else False:
        notes.append(f"Δ: paired difference arm − '{baseline}' (the baseline arm) on the seeds both have "
                     f"(mean ± std (n)); * p < 0.05, ** p < 0.01, *** p < 0.001, two-sided paired t-test across "
                     f"seeds (hover a cell for t and p). With 3 seeds only large effects can reach significance.")
    else:
        notes.append(f"No baseline arm '{baseline}' in this panel: no paired differences (set --baseline).")
    notes += ["Conventions: " + "; ".join(conventions(rows, split)) + "."] if conventions(rows, split) else []
    notes += [n for n in [probe_baselines(rows, split)] if n]
    data = best.copy()
    if "seeds" in data:
        data["seeds"] = data["seeds"].map(lambda s: " ".join(map(str, s)))
    return Table(tid, f"Best per technique — {panel[0]} × {panel[1]}", cols, out_rows, data, notes, classes), best


def _our_conventions(rows: pd.DataFrame, split: str) -> dict[str, object]:
    def one(column: str) -> object:
        values = rows[column].dropna().unique() if column in rows else []
        return values[0] if len(values) == 1 else None

    pool = one(f"{split}.mi_pool")
    return {"iw_samples": one("eval.iw_samples"), "mi_pool": int(pool) if pool is not None else None,
            "mi_pool_kind": one("eval.mi_pool_kind"), "token_unit": one("eval.token_unit")}


def published_table(refs: Sequence[Reference], rows: pd.DataFrame, panel: tuple[str, str], arms: Sequence[str],
                    tid: str) -> Table | None:
    """Published numbers beside ours (study `references:`): ours as mean ± std (n), the published value, Δ, and
    where the conventions differ a mark with how, rather than a silent comparison."""
    dataset, model = panel
    mine = [r for r in refs if (r.dataset in (None, dataset)) and (r.model in (None, model))]
    if not mine:
        return None
    cols = [Col("arm"), Col("setting", "the swept axis values of our row"), Col("metric"),
            Col("ours", "mean ± std (n seeds) of our runs of this arm", True),
            Col("published", "the value the source reports", True),
            Col("Δ", "ours − published", True), Col("source"),
            Col("conventions", "how the published number was measured, against ours (K, MI pool, token unit, "
                               "IW NLL or −ELBO); a difference is marked, not hidden")]
    out_rows, classes, records = [], [], []
    for ref in mine:
        split = ref.split
        arm_rows = rows[rows["arm"] == ref.arm]
        agg = tables.aggregate(arm_rows, split, [n for n in ref.values if f"{split}.{n}" in rows], arms) \
            if not arm_rows.empty else pd.DataFrame()
        mismatch = convention_mismatches(ref.conventions, _our_conventions(arm_rows, split)) if not arm_rows.empty \
            else []
        for name, value in ref.values.items():
            m = metric(name)
            settings = list(agg.iterrows()) if not agg.empty and f"{name}.mean" in agg else [(None, None)]
            for _, r in settings:
                ours = _num(r[f"{name}.mean"]) if r is not None else math.nan
                text = mean_std_n(m, r[f"{name}.mean"], r[f"{name}.std"], r[f"{name}.n"]) if r is not None else \
                    "no runs"
                delta = ours - value if not math.isnan(ours) else math.nan
                conv = "differs: " + "; ".join(mismatch) if mismatch else "same as ours"
                out_rows.append([Cell(ref.arm), _setting_cell(r["setting"] if r is not None else ""),
                                 Cell(f"{m.label} ({split})", title=f"{split}.{name}: {m.definition}"),
                                 Cell(text, sort=ours), Cell(m.fmt(value), sort=value),
                                 Cell(m.fmt(delta) if not math.isnan(delta) else "–", sort=delta),
                                 Cell(ref.source, title=ref.note),
                                 Cell(conv, cls="flag" if mismatch else "")])
                classes.append("mismatch" if mismatch else "")
                records.append({"arm": ref.arm, "setting": r["setting"] if r is not None else "",
                                "metric": f"{split}.{name}", "ours": ours, "published": value, "delta": delta,
                                "source": ref.source, "conventions_differ": "; ".join(mismatch)})
    notes = ["Published numbers from the study's references. Δ = ours − published. A row whose conventions differ "
             "from ours (K, MI pool, token unit, IW NLL vs −ELBO) is marked: its Δ mixes the method with the "
             "measurement."]
    return Table(tid, f"Published numbers beside ours — {dataset} × {model}", cols, out_rows,
                 pd.DataFrame(records), notes, classes)


def failures_table(study: StudyInput, tid: str) -> Table | None:
    fails = tables.failures(study.failed, study.ok)
    if fails.empty:
        return None
    cols = [Col("dataset"), Col("model"), Col("arm"), Col("setting"), Col("seed", numeric=True), Col("cell"),
            Col("attempt", numeric=True), Col("error class"), Col("message"),
            Col("recovered", "a later attempt of the cell succeeded")]
    rows = [[Cell(r["dataset"]), Cell(r["model"]), Cell(r["arm"]), _setting_cell(r["setting"]),
             Cell(_count(r["seed"]), sort=_num(r["seed"])), Cell(r["cell_id"], cls="mono"),
             Cell(_count(r["attempt"]), sort=_num(r["attempt"])), Cell(str(r["error_class"] or "")),
             Cell(str(r["error_message"] or ""), cls="message"), Cell("yes" if r["recovered"] else "no")]
            for _, r in fails.iterrows()]
    return Table(tid, "Failures", cols, rows, fails,
                 ["Every failed attempt, with its error class and message; 'recovered' cells succeeded on a retry "
                  "and are in the tables above."],
                 ["" if rec else "failed" for rec in fails["recovered"]])


# ----------------------------------------------------------------------------- writing tables


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "−": r"$-$", "Δ": r"$\Delta$", "β": r"$\beta$", "δ": r"$\delta$", "–": "--",
                 "—": "---", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "→": r"$\to$", "<": r"$<$",
                 ">": r"$>$", "‖": r"$\|$"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(LATEX_UNICODE.get(ch, ch) for ch in out)


def to_latex(table: Table) -> str:
    align = "".join("r" if c.numeric else "l" for c in table.columns)
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c.label) for c in table.columns) + r" \\", r"\midrule"]
    for row in table.rows:
        lines.append(" & ".join((f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text))
                                for c in row) + r" \\")
    if table.footer:
        lines.append(r"\midrule")
        for row in table.footer:
            lines.append(" & ".join(latex_escape(c.text) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {latex_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_table(table: Table, folder: Path, rel: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / table.id
    table.data.to_csv(stem.with_suffix(".csv"), index=False, lineterminator="\n")
    records = [{k: _jsonable(v) for k, v in rec.items()} for rec in table.data.to_dict(orient="records")]
    payload = {"title": table.title, "columns": [c.label for c in table.columns], "notes": table.notes,
               "rows": records}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    stem.with_suffix(".tex").write_text(to_latex(table))
    table.files = {ext: f"{rel}/{table.id}.{ext}" for ext in ("csv", "tex", "json")}


# ----------------------------------------------------------------------------- one study


@dataclass
class Options:
    baseline: str = tables.DEFAULT_BASELINE
    select: tuple[str, ...] = SELECT
    split: str = "test"
    deltas: tuple[str, ...] = field(default_factory=lambda: tuple(in_table("delta")))


def build_study(study: StudyInput, out: Path, slug: str, options: Options) -> dict[str, Any]:
    """Write the tables and plots of one study under out/<slug>/ and return the template's context."""
    table_dir, plot_dir = out / slug / "tables", out / slug / "plots"
    split = options.split
    arms = tables.arm_order(study.manifest, study.ok, study.failed, baseline=options.baseline)
    palette = plots.arm_palette(arms)
    ok = study.ok
    if study.manifest is not None and not study.manifest.empty and "cell_id" in ok:
        # cells no longer in the study (it changed since they ran) count as "extra" in coverage, not in comparisons
        ok = ok[ok["cell_id"].isin(study.manifest["cell_id"])]
    context: dict[str, Any] = {"slug": slug, "header": header(study), "panels": [], "summary": []}
    references, context["reference_notes"] = load_references(study.study_text)

    cov = coverage_table(study, f"{slug}-coverage", arms)
    write_table(cov, table_dir, f"{slug}/tables")
    context["coverage"] = cov
    missing = missing_table(study, f"{slug}-missing")
    if missing:
        write_table(missing, table_dir, f"{slug}/tables")
    context["missing"] = missing

    panels = [] if ok.empty else list(ok.groupby(["dataset", "model"], sort=True).groups.keys())
    for dataset, model in panels:
        rows = ok[(ok["dataset"] == dataset) & (ok["model"] == model)]
        pslug = plots.slug(dataset, model)
        main = main_table(rows, (dataset, model), split, arms, f"{slug}-main-{pslug}")
        write_table(main, table_dir, f"{slug}/tables")
        best, best_frame = best_table(rows, (dataset, model), split, options.baseline, options.select,
                                      options.deltas, arms, f"{slug}-best-{pslug}")
        write_table(best, table_dir, f"{slug}/tables")
        context["summary"].append(summary(dataset, model, best_frame, arms))
        published = published_table(references, rows, (dataset, model), arms, f"{slug}-published-{pslug}")
        if published:
            write_table(published, table_dir, f"{slug}/tables")

        # rows of each arm's chosen setting (for MI/AU and training curves)
        chosen = best_frame[["arm", "settings"]] if not best_frame.empty else pd.DataFrame(columns=["arm", "settings"])
        picked = rows.merge(chosen, on=["arm", "settings"], how="inner")
        title = f"{study.name}: {dataset} × {model}"
        figures = [
            plots.rate_distortion(rows, arms, palette, plot_dir / f"rate_distortion__{pslug}", title, split),
            plots.kl_vs_ppl(rows, arms, palette, plot_dir / f"kl_vs_ppl__{pslug}", title, split),
            plots.mi_au(picked, arms, palette, plot_dir / f"mi_au__{pslug}", title, split),
            plots.training_curves(picked, study.curves, arms, palette, plot_dir / f"training_curves__{pslug}",
                                  title),
        ]
        settings = tables.settings_frame(rows)
        sens = []
        for arm in arms:
            arm_rows = rows[rows["arm"] == arm]
            keys = [k for k in settings.columns if settings.loc[arm_rows.index, k].notna().any()]
            for key in sorted(keys):
                fig = plots.sensitivity(rows, settings, arm, key, in_table("sensitivity"), palette[arm],
                                        plot_dir / f"sensitivity__{pslug}__{plots.slug(arm, key)}",
                                        f"{title}: {arm}", split)
                if fig:
                    sens.append(fig)
        context["panels"].append({
            "dataset": dataset, "model": model, "id": f"{slug}-{pslug}", "main": main, "best": best,
            "published": published,
            "figures": [_fig(f, out) for f in figures if f],
            "sensitivity": [_fig(f, out) for f in sens],
        })
    fails = failures_table(study, f"{slug}-failures")
    if fails:
        write_table(fails, table_dir, f"{slug}/tables")
    context["failures"] = fails
    return context


def _fig(fig: plots.Figure_, out: Path) -> dict[str, str]:
    return {"title": fig.title, "caption": fig.caption, "png": fig.png.relative_to(out).as_posix(),
            "svg": fig.svg.relative_to(out).as_posix(), "key": fig.key}


def summary(dataset: str, model: str, best: pd.DataFrame, arms: Sequence[str]) -> dict[str, Any]:
    """Which arms collapse (at their chosen setting): lists of arm names by verdict."""
    groups: dict[str, list[str]] = {"collapsed": [], "partial": [], "no collapse": []}
    for _, r in best.iterrows():
        n = len(r["seeds"])
        k = int(r["collapsed_seeds"])
        if n and k == n:
            groups["collapsed"].append(r["arm"])
        elif k:
            groups["partial"].append(f"{r['arm']} ({k}/{n} seeds)")
        elif n:
            groups["no collapse"].append(r["arm"])
    return {"dataset": dataset, "model": model, **groups}


# ----------------------------------------------------------------------------- the whole report


def glossary(studies: Sequence[StudyInput], split: str) -> list[Metric]:
    """The schema entries of every metric shown (main metrics, then the probes found)."""
    seen: dict[str, Metric] = {}
    for s in studies:
        for m in metrics_in(s.ok.columns, split):
            seen.setdefault(m.name, m)
    if not seen:
        seen = {n: metric(n) for n in main_metrics()}
    order = {n: i for i, n in enumerate(main_metrics())}
    return sorted(seen.values(), key=lambda m: (order.get(m.name, len(order)), m.name))


def _unique_slugs(studies: Sequence[StudyInput]) -> list[str]:
    slugs, seen = [], {}
    for s in studies:
        base = plots.slug(s.name) if plots.slug(s.name) != "plot" else "study"
        seen[base] = seen.get(base, 0) + 1
        slugs.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return slugs


def build_report(study_dirs: Sequence[str | Path], out: str | Path, options: Options | None = None,
                 unreadable: list[Path] | None = None) -> Path:
    """Render the studies into out/index.html (+ out/<study>/tables and plots). Returns the index path; the files
    left out as unreadable are appended to `unreadable` when given."""
    options = options or Options()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studies = [load_study(d) for d in study_dirs]
    if unreadable is not None:
        unreadable.extend(p for s in studies for p in s.unreadable)
    contexts = [build_study(s, out, slug, options) for s, slug in zip(studies, _unique_slugs(studies))]
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    page = env.get_template("index.html").render(
        studies=contexts, options=options, collapse_kl=COLLAPSE_KL, glossary=glossary(studies, options.split),
        title="ablate report: " + ", ".join(c["header"]["study"] for c in contexts) if contexts else "ablate report")
    index = out / "index.html"
    write_text_atomic(index, page)
    _remove_stale(out, _files_of(contexts) | {"index.html"})
    return index


def _files_of(contexts: Sequence[dict[str, Any]]) -> set[str]:
    """Every file this build wrote (paths relative to --out), from the rendered contexts."""
    files: set[str] = set()
    for context in contexts:
        found = [context.get("coverage"), context.get("missing"), context.get("failures")]
        for panel in context["panels"]:
            found += [panel["main"], panel["best"], panel["published"]]
            files.update(f[kind] for f in panel["figures"] + panel["sensitivity"] for kind in ("png", "svg"))
        files.update(path for table in found if table is not None for path in table.files.values())
    return files


def _remove_stale(out: Path, written: set[str]) -> None:
    """Remove what the previous build wrote and this one did not (a panel or study gone), then record this build's
    files. Only paths from our own list, inside --out, are ever removed: never a file the report did not write."""
    record = out / WRITTEN_LIST
    root = out.resolve()
    try:
        previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else []
    except (OSError, ValueError):
        previous = []
    for rel in previous if isinstance(previous, list) else []:
        if not isinstance(rel, str) or rel in written:
            continue
        path = (out / rel).resolve()
        if path.is_relative_to(root) and path != root and path.is_file():
            path.unlink()
    write_text_atomic(record, json.dumps(sorted(written), indent=0) + "\n")
