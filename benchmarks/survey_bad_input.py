"""Feed the malformed-input corpus (tests/malformed_inputs.py) through `validate`, `run` and `sweep`, each case in
a forked child with a 15 s limit, and count the outcomes: one line (exit 2, <= 3 lines of <= 300 characters,
nothing written), passes validate, writes files, traceback, hang/crash, long message.

    python benchmarks/survey_bad_input.py             # this checkout
    CODE=/path/to/other/checkout python benchmarks/survey_bad_input.py   # e.g. an older commit (git worktree)
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, os.environ.get("CODE", str(REPO)))
from malformed_inputs import CASES  # noqa: E402

import ablate.engine.run  # noqa: E402,F401 - loaded once, before the forks
import ablate.sweep.runner  # noqa: E402,F401
from ablate.cli.main import main  # noqa: E402

def listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))

def one(case, cmd):
    tmp = Path(tempfile.mkdtemp())
    (tmp / "a_file.txt").write_text("x\n")
    (tmp / "only_train").mkdir(); (tmp / "only_train/train.txt").write_text("a b\n")
    for nm, content in (("empty_splits", b""), ("latin1_splits", "caf\xe9\n".encode("latin-1"))):
        (tmp / nm).mkdir()
        for sp in ("train", "valid", "test"):
            (tmp / nm / f"{sp}.txt").write_bytes(content if sp == "valid" else b"a b\n")
    f = tmp / "input.yaml"
    raw = case.text.replace("{tmp}", str(tmp))
    f.write_bytes(raw.encode("latin-1") if "\x00" in raw else raw.encode("utf-8"))
    before = listing(tmp)
    argv = [cmd, str(f)] + (["--out", str(tmp / "out"), "--quiet"] if cmd != "validate" else [])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out, err = io.StringIO(), io.StringIO()
        rc, tb = None, ""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException as e:
            tb = f"{type(e).__name__}"
        text = (out.getvalue() + err.getvalue()).strip()
        os.write(w, json.dumps({"rc": rc, "tb": tb, "text": text[:400], "lines": len(text.splitlines()),
                                "maxlen": max(map(len, text.splitlines() or [""]))}).encode())
        os._exit(0)
    os.close(w)
    start = time.time(); status = None
    while time.time() - start < 15:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done: break
        time.sleep(0.05)
    else:
        os.kill(pid, 9); os.waitpid(pid, 0)
        return {"rc": "TIMEOUT(15s)", "tb": "", "lines": 0, "maxlen": 0, "text": "", "written": listing(tmp) != before}
    data = os.read(r, 100000)
    res = json.loads(data) if data else {"rc": f"CRASH({status})", "tb": "", "lines": 0, "maxlen": 0, "text": ""}
    res["written"] = sorted(set(listing(tmp)) - set(before))[:3]
    return res

cats = {}
for case in CASES:
    for cmd in os.environ.get("CMDS", "validate,run,sweep").split(","):
        res = one(case, cmd)
        ok = res["rc"] == 2 and not res["tb"] and 1 <= res["lines"] <= 3 and res["maxlen"] <= 300 and not res["written"]
        if ok: kind = "one line"
        elif res["tb"]: kind = "traceback"
        elif str(res["rc"]).startswith(("TIMEOUT", "CRASH")): kind = "hang/crash"
        elif res["rc"] == 0 and cmd == "validate": kind = "passes validate"
        elif res["written"]: kind = "writes files"
        elif res["lines"] > 3 or res["maxlen"] > 300: kind = "long message"
        else: kind = f"other rc={res['rc']}"
        cats.setdefault(cmd, {}).setdefault(kind, []).append(case.name)
        print(f"{cmd:8} {kind:16} {case.name}", flush=True)
print(json.dumps({cmd: {k: len(v) for k, v in d.items()} for cmd, d in cats.items()}))
