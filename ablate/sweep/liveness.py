"""Whether a cell's attempt is still being worked on, and the lock under which a sweep decides (ablate.sweep.ledger).

A worker's claim is one journal record (`attempts.claim_of`: pid, its start time, host); on this machine a claim is
alive while its process is, on another machine it counts as alive (a journal cannot tell) unless the storage keeps
heartbeats (PostgreSQL, MySQL), where a trial whose last beat is older than three intervals is dead wherever it ran.
Decisions to enqueue or reclaim take a file lock on this machine and, on PostgreSQL or MySQL, a database-wide lock.

Two private Optuna names are used where no public API exists: `FrozenTrial._trial_id` (the storage's id of a trial;
the public route, `get_trial_id_from_study_id_trial_number`, costs a query per trial) and the RDB storage's
`_get_stale_trial_ids` (what Optuna's own heartbeat callback reads).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ablate.results.layout import StudyFolder
from ablate.sweep.attempts import claim_of, process_alive
from ablate.sweep.storage import _with_patience, is_outage

CLAIM_GRACE_SECONDS = 120.0  # a RUNNING trial with neither pid nor claimant counts as dead after this
HOST_ENV = "ABLATE_HOST"  # this machine's name in the ledger (containers that share a hostname set it apart)


class Liveness:
    """The locking and liveness half of a Ledger (its storage, study, folder, host and heartbeat setting)."""

    storage: BaseStorage
    name: str
    folder: Path
    study_id: int
    host: str
    heartbeats: bool
    _stale: tuple[float, set[int]]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock for enqueue/reclaim decisions, so two coordinators never both enqueue: a file lock on
        this machine and, on a PostgreSQL or MySQL storage, a database lock held by every machine's coordinator."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(StudyFolder(self.folder).ledger_lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                with self._database_lock():
                    yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _database_lock(self) -> Iterator[None]:
        engine = getattr(self.storage, "engine", None)
        dialect = engine.dialect.name if engine is not None else ""
        if dialect not in ("postgresql", "mysql"):
            yield
            return
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"ablate:{self.name}".encode()).digest()[:8], "big", signed=True)

        def acquire() -> Any:
            connection = engine.connect()
            try:
                if dialect == "postgresql":
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                else:
                    connection.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": f"ablate:{key}"})
            except BaseException:
                connection.close()
                raise
            return connection

        outage = getattr(self.storage, "_ablate_outage", None)
        connection = acquire() if outage is None else _with_patience(acquire, (), {}, outage, str(engine.url))
        try:
            yield
        finally:
            try:
                if dialect == "postgresql":
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                else:
                    connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"ablate:{key}"})
            except Exception as error:  # noqa: BLE001 - a lost connection took its session's lock with it
                if not is_outage(error):
                    raise
            finally:
                connection.close()

    # -- heartbeats (RDB storages) -------------------------------------------------------------------------

    def stale_trial_ids(self) -> set[int]:
        """RUNNING trials whose last heartbeat is older than the grace period (read at most once a second)."""
        if not self.heartbeats:
            return set()
        outage = getattr(self.storage, "_ablate_outage", None)
        grace = 3 * self.storage.get_heartbeat_interval()  # type: ignore[attr-defined]
        if outage is not None and (outage.since is not None or time.monotonic() - outage.recovered_at < grace):
            return set()  # after an outage every worker's last beat is old: give them a grace to beat again
        read_at, stale = self._stale
        if time.monotonic() - read_at > 1.0:
            stale = set(self.storage._get_stale_trial_ids(self.study_id))  # type: ignore[attr-defined]
            self._stale = (time.monotonic(), stale)
        return stale

    @contextlib.contextmanager
    def beating(self, trial: FrozenTrial) -> Iterator[None]:
        """While a worker runs a trial: a heartbeat every interval from a background thread (RDB storages)."""
        if not self.heartbeats:
            yield
            return
        stop = threading.Event()
        trial_id = trial._trial_id
        interval = self.storage.get_heartbeat_interval()  # type: ignore[attr-defined]

        record = getattr(self.storage, "_ablate_direct", {}).get("record_heartbeat", self.storage.record_heartbeat)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    record(trial_id)  # no waiting: a beat missed in an outage is the next one's job
                except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers a few
                    pass

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def is_live(self, trial: FrozenTrial) -> bool:
        """WAITING, or RUNNING with a worker that may still be at it (see `claim_of`)."""
        if trial.state == TrialState.WAITING:
            return True
        if trial.state != TrialState.RUNNING:
            return False
        if self.heartbeats and trial._trial_id in self.stale_trial_ids():
            return False  # its worker stopped beating, wherever it ran
        claim = claim_of(trial)
        if claim is not None:
            if claim["host"] != self.host:
                return True  # another machine's worker: its heartbeat (RDB) or nothing (journal) tells
            return process_alive(int(claim["pid"]), claim.get("pid_start"))
        # RUNNING without a complete claim: the winner was killed between its writes, or is about to write it.
        # A claimant of this machine tells at once; otherwise the claim gets CLAIM_GRACE_SECONDS to appear.
        claimants = [key.split(":") for key in trial.user_attrs if key.startswith("claimant:")]
        local = [(pid, start) for _, host, pid, start in claimants if host == self.host]
        if any(process_alive(int(pid), None if start == "None" else start) for pid, start in local):
            return True
        if local and len(local) == len(claimants):
            return False  # every claimant ran here and is gone
        started = trial.datetime_start or dt.datetime.now()
        return (dt.datetime.now() - started).total_seconds() < CLAIM_GRACE_SECONDS
