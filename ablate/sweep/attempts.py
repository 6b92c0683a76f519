"""An attempt's traces outside the ledger: the worker process that runs it (alive? the same process, not a
reused pid?) and the result files it leaves (ResultIndex: which attempts have an ok or failed row). The ledger
(ablate.sweep.ledger) decides with these; they never decide alone."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ablate.core.config import ConfigError, config_hash
from ablate.core.config_reading import build_config
from ablate.results.layout import RESULT_NAME, StudyFolder, result_stem
from ablate.results.rows import ROW_KEYS, read_tables


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def claim_of(trial: Any) -> dict[str, Any] | None:
    """The trial's complete claim {pid, pid_start, host, claimed_at}: the one-record `claim` attribute, or, in a
    ledger written before it existed, `pid` and `host` both present; None when the claim is incomplete."""
    attrs = trial.user_attrs
    claim = attrs.get("claim")
    if isinstance(claim, dict) and "pid" in claim and "host" in claim:
        return claim
    if "claim" not in attrs and "pid" in attrs and "host" in attrs:
        return {"pid": attrs["pid"], "pid_start": attrs.get("pid_start"), "host": attrs["host"],
                "claimed_at": attrs.get("claimed_at")}
    return None


# ---------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # fields from 3 (state) on; the command may contain spaces


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc (not Linux): trust kill(0)
    if stat[0] in ("Z", "X"):  # a zombie is dead: killed, not yet reaped by its parent
        return False
    return start is None or stat[19] == start


# ---------------------------------------------------------------- result files


class ResultIndex:
    """The result rows of a study folder (rows/, and a legacy runs/): which attempts exist and their status."""

    def __init__(self, folder: Path, cell_id: str | None = None):
        self.files: dict[str, dict[int, Path]] = {}
        pattern = f"{cell_id}.a*.parquet" if cell_id else "*.parquet"
        for rows in StudyFolder(folder).row_folders():
            for path in sorted(rows.glob(pattern)):
                match = RESULT_NAME.match(path.name)
                if match:
                    self.files.setdefault(match["cell"], {}).setdefault(int(match["attempt"]), path)
        self._status: dict[Path, str] = {}

    def status(self, cell_id: str, attempt: int) -> str | None:
        path = self.files.get(cell_id, {}).get(attempt)
        if path is None:
            return None
        if path not in self._status:
            row = read_row(path)  # {} when unreadable or not of the declared schema: not a result
            self._status[path] = str(row.get("status") or "unreadable")
        return self._status[path]

    def ok(self, cell_id: str) -> bool:
        return any(self.status(cell_id, a) == "ok" for a in self.files.get(cell_id, {}))

    def max_attempt(self, cell_id: str) -> int:
        return max(self.files.get(cell_id, {}), default=0)

    def failed_attempts(self, cell_id: str) -> int:
        return sum(self.status(cell_id, a) == "failed" for a in self.files.get(cell_id, {}))


def has_ok_result(folder: Path, cell_id: str) -> bool:
    return ResultIndex(folder, cell_id).ok(cell_id)


def record_lost_attempt(folder: Path, trial: Any, message: str) -> None:
    """A failed result row for an attempt whose worker died (so the failure shows in the results, too)."""
    from ablate.results.rows import write_row
    from ablate.engine.run import base_row

    attrs = trial.user_attrs
    claim = claim_of(trial) or {}
    try:
        config = build_config(json.loads(attrs["run_config"]), "<ledger>")
    except (ConfigError, KeyError, ValueError):
        return
    if config_hash(config) != attrs.get("cell_id"):  # a cell id becomes a file name: only ever our own hash
        return
    attempt = int(attrs.get("attempt", 1))
    stem = result_stem(attrs["cell_id"], attempt)
    path = StudyFolder(folder).result(attrs["cell_id"], attempt)
    if path.exists():
        return
    labels = {"study": folder.name, "cell_id": attrs["cell_id"], "arm": attrs.get("arm", ""), "attempt": attempt,
              "dataset": attrs.get("dataset"), "model": attrs.get("model")}
    row = base_row(config, f"{folder.name}.{stem}", labels)
    row.update({"status": "failed", "error_class": "WorkerDied", "error_message": message,
                "host": claim.get("host"), "started_at": claim.get("claimed_at"), "finished_at": now_iso()})
    write_row(row, path)


def read_row(path: Path) -> dict[str, Any]:
    """A result file's row, {} when it is unreadable or not of the declared schema (`results.check_row_file`)."""
    tables = read_tables([path], [], ROW_KEYS, curves=False)
    return tables[0].to_pylist()[0] if tables and tables[0].num_rows else {}
