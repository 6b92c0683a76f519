"""`ablate report`: stored results of one or more studies → one index.html with tables and plots.

For each study folder (results/<study>/: study.json, study.yaml, manifest.parquet, rows/, curves/; see
ARCHITECTURE.md) the report has a header (study, study-file hash, dates, git commits, package versions,
compute time), a plain summary of which arms collapse, coverage (and the cells still missing), a main table
per dataset × model, the best setting per technique with paired differences against the baseline arm, plots,
and the failures. Every table is also written as CSV, LaTeX and JSON under `<out>/<study>/tables/`, plots as
PNG and SVG under `<out>/<study>/plots/`.

The report is a pure function of the stored results: it never trains, stamps no generation time, and writes
plot files deterministically, so building it twice gives identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ablate.metrics.schema import SELECT, is_metric_column
from ablate.core.config import ConfigError
from ablate.results.safe_files import through_link, write_text_atomic
from ablate.study.protocol import load_protocol
from ablate.study.selection import Condition, parse_where
from ablate.study.references import load_references
from ablate.report import cell_settings, equal_rate, plot_style, plots, tables
from ablate.report.header import header
from ablate.report.inputs import StudyInput, load_study
from ablate.report.schema import COLLAPSE_KL, main_metrics, metrics_in
from ablate.metrics.schema import Metric, in_table, metric
from ablate.report.study_tables import (best_table, coverage_table, failures_table, main_table, matched_rate_table,
                                        missing_table, protocol_table, published_table, settings_table)
from ablate.report.verdict_table import verdict_table
from ablate.report.table_model import write_table

TEMPLATES = Path(__file__).with_name("templates")
WRITTEN_LIST = ".ablate-report-files.json"  # what the last build wrote, relative to --out: all a rebuild removes


# ----------------------------------------------------------------------------- one study


@dataclass
class Options:
    baseline: str | None = None  # None: the study's `baseline:`, else cell_settings.DEFAULT_BASELINE
    rates: tuple[float, ...] = equal_rate.MATCHED_RATES  # KL values of the matched-rate table
    select: tuple[str, ...] | None = None  # None: the study's `select: {by}`, else ablate.metrics.schema.SELECT
    split: str = "test"
    deltas: tuple[str, ...] = field(default_factory=lambda: tuple(in_table("delta")))


def build_study(study: StudyInput, out: Path, slug: str, options: Options) -> dict[str, Any]:
    """Write the tables and plots of one study under out/<slug>/ and return the template's context."""
    table_dir, plot_dir = out / slug / "tables", out / slug / "plots"
    split = options.split
    baseline = options.baseline or study_baseline(study.study_text) or cell_settings.DEFAULT_BASELINE
    study_by, where = study_selection(study.study_text)
    select = options.select or study_by or SELECT
    arms = cell_settings.arm_order(study.manifest, study.ok, study.failed, baseline=baseline)
    palette = plot_style.arm_palette(arms)
    ok = study.ok
    if study.manifest is not None and not study.manifest.empty and "cell_id" in ok:
        # cells no longer in the study (it changed since they ran) count as "extra" in coverage, not in comparisons
        ok = ok[ok["cell_id"].isin(study.manifest["cell_id"])]
    ok, searched = tables.best_search_trials(ok, select, where)  # a search arm: its best trial per seed
    context: dict[str, Any] = {"slug": slug, "header": header(study), "panels": [], "summary": []}
    references, context["reference_notes"] = load_references(study.study_text)
    card, card_notes = load_protocol(study.study_text)
    context["reference_notes"] += card_notes
    protocol = protocol_table(card, f"{slug}-protocol")
    if protocol:
        write_table(protocol, table_dir, f"{slug}/tables")
    context["protocol"] = protocol  # shown beside the first published-vs-ours table, else after the coverage

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
        pslug = plot_style.slug(dataset, model)
        runs = None
        if study.manifest is None:  # single runs, or a study folder without its manifest: what differs
            runs = settings_table(rows, (dataset, model), arms, f"{slug}-settings-{pslug}")
            if runs:
                write_table(runs, table_dir, f"{slug}/tables")
        main = main_table(rows, (dataset, model), split, arms, f"{slug}-main-{pslug}")
        write_table(main, table_dir, f"{slug}/tables")
        best, best_frame = best_table(rows, (dataset, model), split, baseline, select,
                                      options.deltas, arms, f"{slug}-best-{pslug}", where)
        write_table(best, table_dir, f"{slug}/tables")
        verdicts = verdict_table(rows, (dataset, model), split, baseline, select, arms,
                                 f"{slug}-verdict-{pslug}", where)
        write_table(verdicts, table_dir, f"{slug}/tables")
        context["summary"].append({**summary(dataset, model, best_frame, arms), "verdict": verdicts,
                                   "id": f"{slug}-{pslug}"})
        every_cell = rows  # for the rate–distortion plane: a search arm's every trial, not only its best
        if not searched.empty:
            is_trial = rows["search"].fillna("").astype(bool)
            every_cell = pd.concat([rows[~is_trial], searched[(searched["dataset"] == dataset)
                                                              & (searched["model"] == model)]])
        matched = matched_rate_table(every_cell, (dataset, model), split, arms, f"{slug}-matched-{pslug}",
                                     options.rates)
        if matched:
            write_table(matched, table_dir, f"{slug}/tables")
        published = published_table(references, rows, (dataset, model), arms, f"{slug}-published-{pslug}")
        if published:
            write_table(published, table_dir, f"{slug}/tables")
        card_here = published is not None and context["protocol"] is not None and \
            not any(p["protocol"] for p in context["panels"])

        # rows of each arm's chosen setting (for MI/AU and training curves)
        chosen = best_frame[["arm", "settings"]] if not best_frame.empty else pd.DataFrame(columns=["arm", "settings"])
        picked = rows.merge(chosen, on=["arm", "settings"], how="inner")
        title = f"{study.name}: {dataset} × {model}"
        figures = [
            plots.rate_distortion(every_cell, arms, palette, plot_dir / f"rate_distortion__{pslug}", title, split),
            plots.kl_vs_ppl(rows, arms, palette, plot_dir / f"kl_vs_ppl__{pslug}", title, split),
            plots.mi_au(picked, arms, palette, plot_dir / f"mi_au__{pslug}", title, split),
            plots.training_curves(picked, study.curves, arms, palette, plot_dir / f"training_curves__{pslug}",
                                  title),
            plots.search_trials(searched[(searched["dataset"] == dataset) & (searched["model"] == model)]
                                if not searched.empty else searched, arms, palette,
                                plot_dir / f"search__{pslug}", title),
        ]
        settings = cell_settings.settings_frame(rows)
        sens = []
        for arm in arms:
            arm_rows = rows[rows["arm"] == arm]
            keys = [k for k in settings.columns if settings.loc[arm_rows.index, k].notna().any()]
            for key in sorted(keys):
                fig = plots.sensitivity(rows, settings, arm, key, in_table("sensitivity"), palette[arm],
                                        plot_dir / f"sensitivity__{pslug}__{plot_style.slug(arm, key)}",
                                        f"{title}: {arm}", split)
                if fig:
                    sens.append(fig)
        context["panels"].append({
            "dataset": dataset, "model": model, "id": f"{slug}-{pslug}", "main": main, "best": best, "runs": runs,
            "published": published, "protocol": context["protocol"] if card_here else None, "matched": matched,
            "figures": [_fig(f, out) for f in figures if f],
            "sensitivity": [_fig(f, out) for f in sens],
        })
    fails = failures_table(study, f"{slug}-failures")
    if fails:
        write_table(fails, table_dir, f"{slug}/tables")
    context["failures"] = fails
    return context


def study_selection(study_text: str | None) -> tuple[tuple[str, ...] | None, tuple[Condition, ...]]:
    """The study file's `select:` rule (ablate.study.selection): its `by` columns (None when unset) and its `where`
    constraint (() when unset or no longer readable: the sweep validated it)."""
    from ablate.core import safe_yaml

    try:
        data, _ = safe_yaml.parse(study_text or "")
    except safe_yaml.YAMLRefused:
        return None, ()
    raw = data.get("select") if isinstance(data, dict) else None
    raw = {"by": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict):
        return None, ()
    by = raw.get("by")
    by = (by,) if isinstance(by, str) else tuple(b for b in by if isinstance(b, str)) if isinstance(by, list) else None
    try:
        where = parse_where(raw["where"], lambda c: is_metric_column(c)) if "where" in raw else ()
    except ValueError:
        where = ()
    return by or None, where


def study_baseline(study_text: str | None) -> str | None:
    """The arm a study file names as its `baseline:` (None when it names none or cannot be read)."""
    from ablate.core import safe_yaml

    try:
        data, _ = safe_yaml.parse(study_text or "")
    except safe_yaml.YAMLRefused:
        return None
    value = data.get("baseline") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _fig(fig: plot_style.Figure_, out: Path) -> dict[str, str]:
    return {"title": fig.title, "caption": fig.caption, "png": fig.png.relative_to(out).as_posix(),
            "svg": fig.svg.relative_to(out).as_posix(), "key": fig.key}


def summary(dataset: str, model: str, best: pd.DataFrame, arms: Sequence[str]) -> dict[str, Any]:
    """Which arms collapse (at their chosen setting): lists of arm names by verdict."""
    groups: dict[str, list[str]] = {"collapsed": [], "partial": [], "no collapse": []}
    for _, r in best.iterrows():
        n = len(r["seeds"])
        k = int(r["collapsed_seeds"])
        if r.get("no_latent"):
            continue  # a language model: neither collapsed nor escaping
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
        for m in metrics_in(s.ok, split):
            seen.setdefault(m.name, m)
    if not seen:
        seen = {n: metric(n) for n in main_metrics()}
    order = {n: i for i, n in enumerate(main_metrics())}
    return sorted(seen.values(), key=lambda m: (order.get(m.name, len(order)), m.name))


def _unique_slugs(studies: Sequence[StudyInput]) -> list[str]:
    slugs, seen = [], {}
    for s in studies:
        base = plot_style.slug(s.name) if plot_style.slug(s.name) != "plot" else "study"
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
    slugs = _unique_slugs(studies)
    for slug in slugs + [WRITTEN_LIST, "index.html"]:
        link = through_link(out / slug, out)
        if link is not None:  # writing there would put (and later remove) files outside --out
            raise ConfigError(f"--out {out}: {link} is a symbolic link; the report writes only into files and "
                              "folders it creates: remove the link or choose another --out")
    contexts = [build_study(s, out, slug, options) for s, slug in zip(studies, slugs)]
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
