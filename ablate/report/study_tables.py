"""The tables of one study: coverage, cells without a result, main (per dataset × model), best setting per
technique with paired differences, published numbers beside ours, failures. Numbers come from ablate.report.tables
(plain pandas); this module turns them into rendered Tables."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ablate.metrics.schema import Metric, in_table, metric
from ablate.report import cell_settings, equal_rate, significance, tables
from ablate.report.header import conventions, probe_baselines
from ablate.report.inputs import StudyInput
from ablate.report.schema import COLLAPSE_KL, metrics_in
from ablate.report.table_model import Cell, Col, Table, _count, _num, mean_std_n
from ablate.study.protocol import Protocol, card_rows
from ablate.study.references import Reference, convention_mismatches
from ablate.study.selection import Condition, where_text

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


def metric_col(m: Metric, split: str) -> Col:
    direction = {"min": "lower is better", "max": "higher is better", None: "no best (neither direction)"}
    return Col(f"{m.label}", f"{m.definition} Unit: {m.unit}. {direction[m.direction]}. Column {split}.{m.name}; "
                             f"cells: mean ± std (n seeds).", True)


def main_table(rows: pd.DataFrame, panel: tuple[str, str], split: str, arms: Sequence[str], tid: str) -> Table:
    metrics = metrics_in(rows, split)
    names = [m.name for m in metrics]
    agg = tables.aggregate(rows, split, names, arms)
    best = tables.best_mask(agg, names)
    cols = [Col("arm"), Col("setting", "the swept axis values of this row within its arm"),
            Col("n", "runs (seeds) in this row", True)] + [metric_col(m, split) for m in metrics] \
        + [Col("collapse", f"collapsed: mean AU = 0 or mean KL < {COLLAPSE_KL} nats")]
    out_rows, classes = [], []
    for i, r in agg.iterrows():
        cells = [Cell(r["arm"]), _setting_cell(r["setting"]), Cell(str(int(r["n_runs"])), sort=r["n_runs"])]
        for m in metrics:
            cells.append(Cell(mean_std_n(m, r[f"{m.name}.mean"], r[f"{m.name}.std"], r[f"{m.name}.n"]),
                              sort=_num(r[f"{m.name}.mean"]), bold=bool(best.at[i, m.name])))
        cells.append(Cell("collapsed" if r["collapsed"] else "no latent" if r.get("no_latent") else "",
                          cls="flag" if r["collapsed"] else ""))
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
               deltas: Sequence[str], arms: Sequence[str], tid: str, where: Sequence[Condition] = ()
               ) -> tuple[Table, pd.DataFrame]:
    best_names = in_table("best")  # + probes; the main table has every metric
    metrics = [m for m in metrics_in(rows, split) if m.name in best_names or m.name.startswith("probe.")]
    best = tables.best_per_technique(rows, baseline, select, split, [m.name for m in metrics], deltas, arms, where)
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
            cols.append(metric_col(metric(name), split))
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
                 Cell(tables.verdict(k, n, bool(r.get("no_latent"))) + ("" if 0 < k < n or r.get("no_latent")
                                                                        else f" ({k}/{n})"), sort=k / max(n, 1),
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
    if where:
        left_out = sorted(set(rows["arm"]) - set(best["arm"])) if not best.empty else sorted(set(rows["arm"]))
        notes.append(f"The study's selection constraint: only settings with {where_text(where)} (seed means) are "
                     "candidates" + (f"; no setting of {', '.join(left_out)} meets it (left out)." if left_out
                                     else ".") + f" The baseline '{baseline}' is exempt: costs are measured "
                     "against it.")
    notes += ["Conventions: " + "; ".join(conventions(rows, split)) + "."] if conventions(rows, split) else []
    notes += [n for n in [probe_baselines(rows, split)] if n]
    data = best.copy()
    if "seeds" in data:
        data["seeds"] = data["seeds"].map(lambda s: " ".join(map(str, s)))
    return Table(tid, f"Best per technique — {panel[0]} × {panel[1]}", cols, out_rows, data, notes, classes), best


def settings_table(rows: pd.DataFrame, panel: tuple[str, str], arms: Sequence[str], tid: str) -> Table | None:
    """Runs outside a study (`ablate run --name`): each run by its name, one column per setting that differs
    between them (readable keys: `techniques`, `free_bits.lambda_per_dim`, `train.lr`). None when none differs."""
    import json

    settings = [json.loads(s) for s in rows["settings"]]
    keys = sorted(set().union(*settings)) if settings else []
    if not keys:
        return None
    frame = pd.DataFrame(settings, index=rows.index).reindex(columns=keys)
    frame.insert(0, "run", rows["arm"])
    frame = frame.drop_duplicates("run")
    order = {arm: i for i, arm in enumerate(arms)}
    frame = frame.assign(_o=frame["run"].map(order)).sort_values("_o", kind="stable").drop(columns="_o")
    cols = [Col("run", "the run's name (ablate run --name)")] + [Col(k, f"config key {k}") for k in keys]
    out_rows = [[Cell(str(r["run"]))]
                + [Cell("–" if pd.isna(r[k]) else cell_settings._setting_value(r[k])) for k in keys]
                for _, r in frame.iterrows()]
    return Table(tid, f"Settings that differ between the runs — {panel[0]} × {panel[1]}", cols, out_rows,
                 frame.reset_index(drop=True),
                 ["Every other setting is the same in all these runs (their result rows hold the full config)."])


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
                                 Cell(_source_text(ref), title=ref.note, cls="flag" if ref.uncertain else ""),
                                 Cell(conv, cls="flag" if mismatch else "")])
                classes.append("mismatch" if mismatch or ref.uncertain else "")
                records.append({"arm": ref.arm, "setting": r["setting"] if r is not None else "",
                                "metric": f"{split}.{name}", "ours": ours, "published": value, "delta": delta,
                                "source": ref.source, "quoted_in": ref.quoted_in or "",
                                "uncertain": ref.uncertain or "", "conventions_differ": "; ".join(mismatch)})
    notes = ["Published numbers from the study's references. Δ = ours − published. A row whose conventions differ "
             "from ours (K, MI pool, token unit, IW NLL vs −ELBO) is marked: its Δ mixes the method with the "
             "measurement. 'quoted in' names the paper a number was taken from when it is not the source itself; "
             "'uncertain' marks a number the sources disagree on."]
    return Table(tid, f"Published numbers beside ours — {dataset} × {model}", cols, out_rows,
                 pd.DataFrame(records), notes, classes)


def matched_rate_table(rows: pd.DataFrame, panel: tuple[str, str], split: str, arms: Sequence[str],
                       tid: str, rates: Sequence[float] = equal_rate.MATCHED_RATES) -> Table | None:
    """Remedies compared at equal rate (Alemi et al. 2018, "Fixing a Broken ELBO"): each arm's Rec, NLL, MI and AU
    interpolated along its rate–distortion front (every setting, search trial and seed of the arm) at common KL
    values; the lowest Rec at each KL in bold, with every arm within noise of it."""
    mi_name = "mi_paired" if f"{split}.mi_paired" in rows and rows[f"{split}.mi_paired"].notna().any() else "mi"
    names = ["rec", "nll", mi_name, "au"]
    data = equal_rate.matched_rate(rows, split, rates, names=names)
    if data.empty:
        return None
    order = {a: i for i, a in enumerate(arms)}
    data = data.sort_values(["kl", "arm"], key=lambda c: c.map(order) if c.name == "arm" else c, kind="stable")
    cols = [Col("KL", "the rate at which the arms are compared (nats per sentence)", True), Col("arm"),
            Col("front", "settings on the arm's rate–distortion front (not beaten on both KL and Rec)", True)]
    cols += [Col(metric(n).label, f"{metric(n).definition} Interpolated linearly in KL between the two front "
                 f"settings around this KL; ± 2 standard errors (seed spread and measurement), interpolated alike.",
                 True) for n in names]
    out_rows, classes, unreached = [], [], []
    for rate, part in data.groupby("kl", sort=False):
        if (part["status"] == "not reached").all():
            unreached.append(rate)  # a block of 'not reached' alone says one thing: the note below says it once
            continue
        reached = part[part["status"] == "front"]
        best = reached["rec"].idxmin() if not reached.empty else None
        for i, r in part.iterrows():
            ties = best is not None and r["status"] == "front" and (i == best or significance.within_noise(
                r["rec"] - reached.at[best, "rec"], math.hypot(_num(r["rec.se"]), _num(reached.at[best, "rec.se"]))))
            cells = [Cell(f"{rate:g}", sort=rate), Cell(r["arm"], bold=bool(ties)), Cell(str(int(r["points"])),
                                                                                           sort=r["points"])]
            for n in names:
                value, se = _num(r[n]), _num(r[f"{n}.se"])
                if r["status"] == "not reached" or math.isnan(value):
                    cells.append(Cell(r["status"], sort=math.nan, cls="within-noise"))
                    continue
                text = metric(n).fmt(value) + ("" if math.isnan(se) else f" ± {metric(n).fmt(2 * se)}") \
                    + (" †" if r["status"] == "beyond front" else "")
                cells.append(Cell(text, sort=value, bold=bool(ties) and n == "rec"))
            out_rows.append(cells)
            classes.append("best-choice" if ties else "")
    notes = [f"Every {split} row of each arm (all settings, search trials and seeds; seeds averaged per setting) "
             "placed in the rate–distortion plane; an arm's front keeps the settings no other setting of it beats "
             "on both KL and Rec. 'not reached': no setting of the arm got to that KL; †: beyond the front — "
             "settings of the arm reached that KL, but with more distortion than its front's last point (more rate "
             "for no better reconstruction); the values are interpolated between its settings nearest in KL. Bold: "
             "the lowest Rec on a front at that KL and every arm within noise of it (2 combined standard errors)."]
    if unreached:
        kl = rows[f"{split}.kl"].astype(float).reset_index(drop=True) if f"{split}.kl" in rows else pd.Series([])
        top = "" if not kl.notna().any() else \
            f" (the largest {split} KL of any run: {kl.max():.3g} nats, {rows['arm'].iloc[int(kl.idxmax())]})"
        listed = ", ".join(f"{rate:g}" for rate in unreached)
        notes.insert(0, f"No arm reaches KL {listed}{top}, so {'they are' if len(unreached) > 1 else 'it is'} "
                        "left out of the table (kept in its CSV and JSON); `ablate report --rates` compares at other KL "
                        "values.")
    return Table(tid, f"Remedies at equal rate — {panel[0]} × {panel[1]}", cols, out_rows, data, notes, classes)


def _source_text(ref: Reference) -> str:
    text = ref.source + (f" (quoted in {ref.quoted_in})" if ref.quoted_in else "")
    return text + (f" — uncertain: {ref.uncertain}" if ref.uncertain else "")


def protocol_table(card: Protocol | None, tid: str) -> Table | None:
    """The reproduction's protocol card (ablate.study.protocol): each setting the paper or its code fixes, with its
    source, and where this study differs, why (flagged)."""
    if card is None:
        return None
    rows = card_rows(card)
    cols = [Col("topic"), Col("arms", "the arms this entry covers"), Col("paper", "the setting as the paper or its "
            "code fixes it"), Col("ours", "as the paper (every covered cell checked when the study was loaded), or "
            "reduced: why this study differs"), Col("checked", "the resolved-config keys ablate validate checks"),
            Col("source", "the paper's words with section, or the authors' file and line")]
    out = [[Cell(r["topic"]), Cell(r["arms"]), Cell(r["paper"]),
            Cell(r["ours"], cls="flag" if r["ours"].startswith("reduced") else ""),
            Cell(r["checked"], cls="mono"), Cell(r["source"])] for r in rows]
    notes = [f"Paper: {card.paper}." + (f" Code: {card.code}." if card.code else ""),
             "Every 'checked' key was compared with every covered cell's resolved config when the study was "
             "loaded (ablate validate refuses a mismatch that is not marked reduced)."]
    return Table(tid, "Protocol card", cols, out, pd.DataFrame(rows), notes,
                 ["reduced" if r["ours"].startswith("reduced") else "" for r in rows])


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
