"""`ablate report` end to end on a hand-made study: the files it writes, that it is a pure function of the results
(building twice gives identical bytes), and the page in a real headless Chromium: a screenshot that is not blank,
every image loaded, sorting works, and no console messages or errors.

Chromium: the Debian package `chromium` (`apt-get install -y chromium`). Without the binary the browser test is
skipped, unless ABLATE_REQUIRE_CHROMIUM=1 (CI), where it fails.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ablate.cli.main import main
from ablate.report.build import build_report
from report_fixtures import KERNELS_LSTM, KERNELS_T5, write_study

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _row_model(path: Path) -> str:
    import pandas as pd

    return str(pd.read_parquet(path, columns=["model"])["model"].iloc[0])


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    study = write_study(root)
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(study), "--out", str(out)]) == 0
    return study, out


def test_report_files(report):
    study, out = report
    page = (out / "index.html").read_text()
    tables = out / "handmade" / "tables"
    for name in ("coverage", "missing", "failures", "main-synthetic__lstm", "main-synthetic__t5",
                 "best-synthetic__lstm", "best-synthetic__t5"):
        for ext in ("csv", "tex", "json"):
            path = tables / f"handmade-{name}.{ext}"
            assert path.is_file(), path
            assert f'href="handmade/tables/handmade-{name}.{ext}"' in page
        data = json.loads((tables / f"handmade-{name}.json").read_text())
        assert data["rows"] and data["columns"]
    for kind in ("rate_distortion", "kl_vs_ppl", "mi_au", "training_curves"):
        for panel in ("synthetic__lstm", "synthetic__t5"):
            for ext in ("png", "svg"):
                assert (out / "handmade" / "plots" / f"{kind}__{panel}.{ext}").is_file()
    sens = sorted(p.name for p in (out / "handmade" / "plots").glob("sensitivity__*.png"))
    assert len(sens) == 2 and "lambda_per_dim" in sens[0] and "warmup_epochs" in sens[1]
    # header, summary, coverage, failures and conventions are on the page
    meta = json.loads((study / "study.json").read_text())
    for text in (meta["study_hash"], "abc123", "def456", "torch <code>2.13.0</code>", "2026-01-01T10:01:00+00:00",
                 "24 min 09 s", "TrainingDiverged", "loss became nan at step 17", "warmup_epochs=1",
                 "IW samples K = 100", "AU δ = 0.01", "collapsed in every seed:</b> vanilla, kl_annealing",
                 "no collapse:</b> free_bits, li2019", "ΔNLL", "(baseline)",
                 "majority-class baseline (test, mean over rows): sentiment 0.500, topic 0.500",
                 "Test CPU (family 1, model 2)"):
        assert html.escape(text, quote=False) in page or text in page, text
    # the kernels the rows ran, counted without how each was chosen (measured or cached: the same arithmetic), in
    # today's form (these rows predate sparse embedding gradients: they ran dense ones)
    lstm_rows = sum(1 for row in (study / "rows").glob("*.parquet") if "lstm" in _row_model(row))
    assert f"<code>{html.escape(KERNELS_LSTM)}; embedding grads dense</code> ({lstm_rows})" in page
    assert f"<code>{html.escape(KERNELS_T5.removesuffix('; cached'))}; embedding grads dense</code>" in page
    # no generation time stamped anywhere
    assert "generated" not in page.lower()
    # best per column in bold, the collapse flag, definitions as tooltips
    assert "<b>" in page and 'class="flag"' in page and 'title="Importance-weighted negative log-likelihood' in page
    coverage = (tables / "handmade-coverage.csv").read_text().splitlines()
    assert "synthetic,lstm,kl_annealing,6,4,1,1,0" in coverage


def test_published_numbers_stand_beside_ours_with_convention_mismatches_marked(report):
    import pandas as pd

    study, out = report
    page = (out / "index.html").read_text()
    assert "Published numbers beside ours — synthetic × lstm" in page
    assert "Published numbers beside ours — synthetic × t5" not in page  # both references name model lstm
    data = json.loads((out / "handmade" / "tables" / "handmade-published-synthetic__lstm.json").read_text())
    rows = {(r["arm"], r["metric"]): r for r in data["rows"]}
    ok = pd.concat([pd.read_parquet(p) for p in (study / "rows").glob("*.a*.parquet")
                    if not p.name.endswith(".curves.parquet")])
    ok = ok[(ok["status"] == "ok") & (ok["model"] == "lstm")].sort_values("attempt").drop_duplicates("cell_id",
                                                                                                   keep="last")
    vanilla_nll = ok.loc[ok["arm"] == "vanilla", "test.nll"].mean()
    nll = rows[("vanilla", "test.nll")]
    assert nll["published"] == 328.6 and abs(nll["ours"] - vanilla_nll) < 1e-9
    assert abs(nll["delta"] - (vanilla_nll - 328.6)) < 1e-9
    assert nll["conventions_differ"] == ("K 500 vs ours 100; MI pool M 32 vs ours dataset; MI pools formed by "
                                         "length_block vs ours dataset")
    li = rows[("li2019", "test.kl")]
    assert li["conventions_differ"] == "" and abs(li["ours"] - ok.loc[ok["arm"] == "li2019", "test.kl"].mean()) < 1e-9
    assert "differs: K 500 vs ours 100" in page and "same as ours" in page
    assert li["quoted_in"] == "a hand-made survey" and li["uncertain"] == "two hand-made sources disagree"
    assert "(quoted in a hand-made survey) — uncertain: two hand-made sources disagree" in page


def test_the_protocol_card_stands_beside_the_published_numbers(report):
    _, out = report
    page = (out / "index.html").read_text()
    published = page.index("Published numbers beside ours — synthetic × lstm")
    card = page.index("Protocol card")
    assert published < card < page.index("<h4>Plots</h4>", published) and page.count("Protocol card") == 1
    data = json.loads((out / "handmade" / "tables" / "handmade-protocol.json").read_text())
    rows = {r["topic"]: r for r in data["rows"]}
    assert rows["learning_rate"] == {"topic": "learning_rate", "arms": "all", "paper": "1e-3",
                                     "ours": "as the paper", "checked": "train.lr = 0.001", "source": "made.py:12"}
    assert rows["batch"]["ours"] == "reduced: a smaller machine" and rows["batch"]["arms"] == "vanilla"
    assert "Paper: A hand-made paper. Code: hand/made @ 0000000." in page


def test_the_matched_rate_table_interpolates_every_cell_of_each_arm(report):
    import pandas as pd

    from ablate.report import equal_rate
    from ablate.report import cell_settings

    study, out = report
    data = json.loads((out / "handmade" / "tables" / "handmade-matched-synthetic__lstm.json").read_text())
    ok = pd.concat([pd.read_parquet(p) for p in (study / "rows").glob("*.a*.parquet")])
    ok = ok[(ok["status"] == "ok") & (ok["model"] == "lstm")].sort_values("attempt").drop_duplicates("cell_id",
                                                                                                   keep="last")
    ok = cell_settings.attach_settings(ok, pd.read_parquet(study / "manifest.parquet"))
    expected = equal_rate.matched_rate(ok, "test", names=("rec", "nll", "mi", "au")).set_index(["arm", "kl"])
    assert len(data["rows"]) == len(expected) == 4 * len(equal_rate.MATCHED_RATES)
    for row in data["rows"]:
        want = expected.loc[(row["arm"], row["kl"])]
        assert row["status"] == want["status"]
        if row["status"] == "front":
            assert abs(row["rec"] - want["rec"]) < 1e-9 and abs(row["au"] - want["au"]) < 1e-9
    assert {r["status"] for r in data["rows"] if r["arm"] == "vanilla"} == {"not reached"}  # collapsed: KL ≈ 0


def test_report_is_a_pure_function_of_the_results(report):
    study, out = report
    before = _digests(out)
    (out / "handmade" / "plots" / "stale.png").write_bytes(b"old")     # a leftover of an older build ...
    record = out / ".ablate-report-files.json"
    written = json.loads(record.read_text())
    record.write_text(json.dumps(written + ["handmade/plots/stale.png"]))  # ... which it recorded as its own
    build_report([study], out)
    assert _digests(out) == before


def test_report_removes_only_what_it_wrote(report):
    """Stale files of our own go; a file the report did not write stays, and a planted record entry pointing
    outside --out is never followed."""
    study, out = report
    mine = out / "handmade" / "plots" / "notes.png"
    mine.write_bytes(b"the user's own file")
    outside = out.parent / "outside.txt"
    outside.write_text("keep")
    record = out / ".ablate-report-files.json"
    record.write_text(json.dumps(json.loads(record.read_text()) + [str(outside), "../outside.txt",
                                                                     "handmade/../../outside.txt"]))
    build_report([study], out)
    assert mine.read_bytes() == b"the user's own file" and outside.read_text() == "keep"
    mine.unlink()


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no study folders" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in a real browser

CHECK_SCRIPT = """<script>
window.__problems = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__problems.push(t && t !== window && (t.src || t.href) ? "failed to load " + (t.src || t.href)
                                                               : "error: " + e.message);
}, true);
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__problems.push("console." + level + ": " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
});
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var table = document.querySelector("div[id$='-main-synthetic__lstm'] table.sortable");
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var kl = headers.findIndex(function (h) { return h.textContent.trim() === "KL"; });
  var column = function () {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return Number(r.cells[kl].getAttribute("data-sort")); });
  };
  headers[kl].click();
  var ascending = column();
  headers[kl].click();
  var descending = column();
  document.body.setAttribute("data-check", JSON.stringify({
    images: images.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return i.src; }),
    ascending: ascending, descending: descending, sortState: headers[kl].getAttribute("aria-sort"),
    problems: window.__problems
  }));
});
</script>"""


def _browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _require_browser() -> str:
    """The chromium binary, or a skip (a failure under ABLATE_REQUIRE_CHROMIUM=1) when there is none."""
    binary = _browser()
    if binary is None:
        if os.environ.get("ABLATE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("ABLATE_REQUIRE_CHROMIUM=1 but no chromium binary on PATH (apt-get install -y chromium)")
        pytest.skip("no chromium binary on PATH: install the Debian package `chromium` to run this test")
    return binary


def _run_browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


def test_report_in_headless_chromium(report, tmp_path):
    binary = _require_browser()
    _, out = report
    index = out / "index.html"

    # 1. the page as shipped: a screenshot, and not one console message
    shot = tmp_path / "shot.png"
    result = _run_browser(binary, tmp_path / "profile1", "--window-size=1280,2200", "--virtual-time-budget=5000",
                          f"--screenshot={shot}", index.as_uri())
    assert shot.is_file(), f"no screenshot; chromium said:\n{result.stderr[-3000:]}"
    assert _console_lines(result.stderr) == [], "console messages on the report page"

    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    non_white = float((pixels.min(axis=2) < 0.95).mean())
    colours = len(np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0))
    assert non_white > 0.03, f"screenshot is (nearly) blank: {non_white:.1%} non-white pixels"
    assert colours > 64, f"screenshot has only {colours} colours: no plots drawn?"

    # 2. a copy with a probe script (same folder, so relative links resolve): images, sorting, errors
    check = out / "_check.html"
    source = index.read_text()
    check.write_text(source.replace("<head>", "<head>\n" + CHECK_SCRIPT, 1))
    try:
        result = _run_browser(binary, tmp_path / "profile2", "--virtual-time-budget=10000", "--dump-dom",
                              check.as_uri())
    finally:
        check.unlink()
    found = re.search(r'data-check="([^"]*)"', result.stdout)
    assert found, f"the probe script did not run; chromium said:\n{result.stderr[-3000:]}"
    state = json.loads(html.unescape(found.group(1)))
    assert "Remedies at equal rate — synthetic × lstm" in source  # the matched-rate table is on the rendered page
    expected_images = source.count("<img ")
    assert state["images"] == expected_images >= 10
    assert state["loaded"] == state["images"], f"images that did not load: {state['broken']}"
    assert state["problems"] == [], state["problems"]
    assert state["ascending"] == sorted(state["ascending"]) and len(state["ascending"]) == 6
    assert state["descending"] == sorted(state["descending"], reverse=True)
    assert state["sortState"] == "descending"


FOLD_SCRIPT = """<script>
window.addEventListener("load", function () {
  var blocks = Array.prototype.slice.call(document.querySelectorAll("div[id*='-verdict-'] table"));
  document.body.setAttribute("data-fold", JSON.stringify({
    width: window.innerWidth, height: window.innerHeight,
    scrollWidth: document.documentElement.scrollWidth,
    tables: blocks.map(function (t) { var r = t.getBoundingClientRect();
      return {right: r.right, bottom: r.bottom,
              headers: Array.prototype.map.call(t.tHead.rows[0].cells, function (c) { return c.textContent.trim(); })};
    })
  }));
});
</script>"""


def test_the_verdict_cost_and_gain_are_above_the_fold_at_1400px(report, tmp_path):
    """At 1400 × 900 px the summary shows, per model, each arm's verdict, cost (ΔNLL, Δ−ELBO) and gain (KL, MI,
    AU, probe gain) without scrolling sideways, and the first panel's table ends above the fold; the screenshot
    shows the best choice's highlighted row."""
    binary = _require_browser()
    _, out = report
    index = out / "index.html"
    check = out / "_fold.html"
    check.write_text(index.read_text().replace("<head>", "<head>\n" + FOLD_SCRIPT, 1))
    try:
        result = _run_browser(binary, tmp_path / "profile", "--window-size=1400,900", "--virtual-time-budget=5000",
                              "--dump-dom", check.as_uri())
    finally:
        check.unlink()
    found = re.search(r'data-fold="([^"]*)"', result.stdout)
    assert found, f"the probe script did not run; chromium said:\n{result.stderr[-3000:]}"
    fold = json.loads(html.unescape(found.group(1)))
    assert fold["width"] == 1400 and fold["scrollWidth"] <= 1400, fold
    assert len(fold["tables"]) == 2  # one per dataset × model
    for table in fold["tables"]:
        assert table["right"] <= 1400
        assert table["headers"] == ["arm", "collapsed", "ΔNLL (cost)", "Δ−ELBO (cost)", "KL", "MI", "AU",
                                    "probe gain"]
    assert fold["tables"][0]["bottom"] <= 900

    shot = tmp_path / "fold.png"
    _run_browser(binary, tmp_path / "profile2", "--window-size=1400,900", "--virtual-time-budget=5000",
                 f"--screenshot={shot}", index.as_uri())
    import matplotlib.image as mpimg
    import numpy as np

    pixels = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (900, 1400)
    best_row = np.all(np.abs(pixels - [0xEA, 0xF6, 0xEC]) <= 2, axis=2)  # tr.best-choice's background
    assert best_row.sum() > 2000, "the best choice's highlighted row is not in the first screen"
