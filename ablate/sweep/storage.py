"""The ledger's storage: opening it (a journal file, Redis, or an RDB such as PostgreSQL), riding out an outage of
its server, and the journal file's lock, checks and repair.

A journal is used only if it is one, is never appended to through a symbolic link, and is repaired (after a copy
of the original is kept) only by a writing command in its own study folder; read-only commands read a repaired
copy. Every call of an RDB or Redis storage waits out an unreachable server for `$ABLATE_STORAGE_PATIENCE`
seconds, then fails in one line (`StorageUnavailable`, exit 1). See ablate.sweep.ledger for the queue itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import json
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages import BaseStorage

from ablate.core.config import ConfigError
from ablate.core.errors import Fault
from ablate.results.layout import StudyFolder
from ablate.core.log import LOG
from ablate.results.safe_files import STORAGE_ERRNOS

PATIENCE_ENV = "ABLATE_STORAGE_PATIENCE"  # seconds a command waits out a storage outage (default 300)
HEARTBEAT_ENV = "ABLATE_HEARTBEAT_SECONDS"  # the RDB heartbeat interval (default 30 s; the grace period is 3×)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's warnings about features we use on purpose (metric names, heartbeats without Study.optimize)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


STORAGE_ENV = "ABLATE_STORAGE"  # the storage URL by environment: how the sweep hands it to its workers (never argv)


def redact(url: str) -> str:
    """A storage URL fit to print: its password replaced by ***."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def _storage_error(url: str, error: BaseException) -> ConfigError:
    """A one-line error for a storage that cannot be opened: host and database, never the password."""
    first = redact(" ".join(str(error).split("(Background on this error")[0].split()))
    password = re.search(r"://[^:/@\s]*:([^@\s]+)@", url)
    if password:  # a driver may quote it apart from the URL
        first = first.replace(password.group(1), "***")
    if isinstance(error, ImportError):
        return ConfigError(f"--storage {redact(url)}: the database driver for this URL is not installed; install "
                           "it (psycopg for postgresql+psycopg://, psycopg2-binary for postgresql+psycopg2://, pymysql "
                           "for mysql+pymysql://, redis for redis://) or use the default journal file")
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        where = f" (host {parsed.host or 'local'}, database {parsed.database or '?'})"
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL
        where = ""
    return ConfigError(f"--storage {redact(url)}: cannot open the storage{where}: {first[:200]}")


def open_storage(folder: Path, url: str | None, write: bool = True) -> BaseStorage:
    """The default journal file under the study folder, a journal path, a Redis URL or an RDB URL; a storage that
    cannot be opened is a one-line ConfigError (no password in it). `write=False` (status, dry run) opens a journal
    without changing it: a torn one is read through a repaired copy."""
    if url is None:
        if write:
            folder.mkdir(parents=True, exist_ok=True)
        return _journal(StudyFolder(folder).journal, write=write, owned=True)
    try:
        return _open_url(url, write, folder)
    except ConfigError:
        raise
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:  # disk full, read-only: the command line's own one-line message
            raise
        raise _storage_error(url, error) from None
    except Exception as error:  # noqa: BLE001 - drivers raise their own classes (sqlalchemy, redis, psycopg)
        raise _storage_error(url, error) from None


class StorageUnavailable(Fault):
    """The ledger's storage stayed unreachable longer than $ABLATE_STORAGE_PATIENCE (one line; exit status 1)."""


def storage_patience() -> float:
    """Seconds a command waits out a storage outage before giving up ($ABLATE_STORAGE_PATIENCE, default 300)."""
    try:
        return max(0.0, float(os.environ.get(PATIENCE_ENV, "300")))
    except ValueError:
        raise ConfigError(f"${PATIENCE_ENV}: expected seconds, e.g. 300") from None


def is_outage(error: BaseException) -> bool:
    """Whether an exception says the storage server cannot be reached now (as opposed to a bad request). Optuna
    wraps a failed commit in StorageInternalError, so the chain of causes is read too."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if _is_outage_itself(error):
            return True
        seen.add(id(error))
        error = error.__cause__  # type: ignore[assignment]
    return False


def _is_outage_itself(error: BaseException) -> bool:
    try:
        import sqlalchemy.exc as sa
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        sa = None
    if sa is not None:
        if isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
            return True
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return type(error).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError")  # redis


class _OutageState:
    """One process's view of a storage outage: when it began, when the storage answered again."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.recovered_at = -math.inf
        self.lock = threading.Lock()
        self.local = threading.local()


def ride_out_outages(storage: BaseStorage, url: str) -> BaseStorage:
    """Make every call of `storage` wait out an outage of its server: retried with backoff (0.5 s doubling to
    10 s) for up to `storage_patience()` seconds, with one warning when it begins and a note when it ends, then a
    one-line StorageUnavailable. The unwrapped methods stay reachable as `storage._ablate_direct` (for calls that
    must not wait: heartbeats, live curve reports); `storage._ablate_outage` tells when it last recovered."""
    state = _OutageState()
    direct: dict[str, Any] = {}
    for name in dir(type(storage)):
        if name.startswith("__") or not callable(getattr(type(storage), name, None)):
            continue
        method = getattr(storage, name)
        direct[name] = method
        setattr(storage, name, _patient(method, name, state, url))
    storage._ablate_direct = direct  # type: ignore[attr-defined]
    storage._ablate_outage = state  # type: ignore[attr-defined]
    return storage


def _patient(method: Any, name: str, state: _OutageState, url: str) -> Any:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(state.local, "inside", False):  # a storage method calling another: the outer call retries
            return method(*args, **kwargs)
        state.local.inside = True
        try:
            return _with_patience(method, args, kwargs, state, url)
        finally:
            state.local.inside = False

    return call


def _with_patience(method: Any, args: tuple, kwargs: dict, state: _OutageState, url: str) -> Any:
    deadline, pause = None, 0.5
    while True:
        try:
            result = method(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - sorted by is_outage below
            if not is_outage(error):
                raise
            now = time.monotonic()
            patience = storage_patience()
            with state.lock:
                if state.since is None:
                    state.since = now
                    LOG.warning(f"storage {redact(url)}: unreachable ({type(error).__name__}); waiting for it, up "
                                f"to {patience:.0f} s (${PATIENCE_ENV})")
            deadline = deadline if deadline is not None else state.since + patience
            if now >= deadline:
                raise StorageUnavailable(f"storage {redact(url)}: unreachable for {now - state.since:.0f} s "
                                         f"(${PATIENCE_ENV} = {patience:.0f}); what is written stays, run the "
                                         "same command again when the server is back") from None
            time.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(10.0, pause * 2)
            continue
        if state.since is not None:
            with state.lock:
                if state.since is not None:
                    LOG.info(f"storage {redact(url)}: reachable again after {time.monotonic() - state.since:.0f} s")
                    state.since = None
                    state.recovered_at = time.monotonic()
        return result


def heartbeat_seconds() -> int:
    try:
        return max(1, int(os.environ.get(HEARTBEAT_ENV, "30")))
    except ValueError:
        raise ConfigError(f"${HEARTBEAT_ENV}: expected whole seconds, e.g. 30") from None


_STORAGES: dict[tuple[str, bool], BaseStorage] = {}  # one storage object (one connection pool) per URL and process


def _open_url(url: str, write: bool = True, folder: Path | None = None) -> BaseStorage:
    if (url, write) not in _STORAGES:
        _STORAGES[url, write] = _new_storage(url, write, folder)
    return _STORAGES[url, write]


def journal_path(url: str) -> Path | None:
    """The file of a journal storage URL (`*.journal`, `*.log`, `*.jsonl`, `journal:PATH`), else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    if url.endswith((".journal", ".log", ".jsonl")) and "://" not in url:
        return Path(url)
    return None


def _new_storage(url: str, write: bool = True, folder: Path | None = None) -> BaseStorage:
    path = journal_path(url)
    if path is not None:
        own = folder is not None and _same_file(path, StudyFolder(folder).journal)
        return _journal(path, write=write, owned=own)
    if url.startswith("redis://"):
        from optuna.storages.journal import JournalRedisBackend

        return ride_out_outages(optuna.storages.JournalStorage(JournalRedisBackend(url)), url)
    interval = heartbeat_seconds()
    with quiet_optuna():  # Optuna marks heartbeats experimental; we rely on them knowingly
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                             heartbeat_interval=interval, grace_period=3 * interval)
    return ride_out_outages(storage, url)


def _same_file(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def is_sqlite(url: str | None) -> bool:
    return bool(url) and str(url).startswith("sqlite")


class FlockLock:
    """The journal file's lock, by `fcntl.flock` on `<journal>.flock`: the kernel releases it when its holder dies.

    Optuna's own file locks (a symlink or an O_EXCL file) outlive a SIGKILLed holder and are only broken after a
    grace period, and the symlink lock of a relative journal path is never broken at all (its stat follows the
    relative link from the wrong folder): one killed worker would freeze the sweep. flock needs one machine (or a
    file system with working flock), which is what the journal storage is for.
    """

    def __init__(self, journal: Path):
        self.path = str(journal) + ".flock"
        self._local = threading.local()

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._local.fd = fd
        return True

    def release(self) -> None:
        fd = getattr(self._local, "fd", None)
        if fd is None:
            raise RuntimeError("release of a journal lock this thread does not hold")
        self._local.fd = None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _journal(path: Path, write: bool = True, owned: bool = True) -> BaseStorage:
    """An Optuna journal file, checked before use (issue 27: no command damages a file it did not write).

    The file must be a journal (empty, or its first line an Optuna record) and, to be written, not a symbolic link.
    A torn journal (a write cut short) is repaired in place only when `write` and `owned` (the study folder's own
    `ledger.journal`), after a copy of the original is kept beside it; a read-only command reads a repaired copy and
    leaves the file as it is; a torn journal named by --storage is refused with a one-line error."""
    from optuna.storages.journal import JournalFileBackend

    if write and path.is_symlink():
        raise ConfigError(f"{path}: the ledger journal is a symbolic link; ablate appends only to a journal file "
                          "it owns: pass the link's target with --storage, or replace the link by a copy")
    path = Path(os.path.abspath(path))
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = FlockLock(path)
    if path.is_file():
        _check_is_journal(path)
        if write:
            lock.acquire()
            try:
                note = repair_journal(path, backup=True) if owned else _refuse_torn(path)
            finally:
                lock.release()
            if note:
                LOG.warning(note)
        elif torn_records(path.read_bytes()) is not None:
            path = _repaired_copy(path)
            lock = FlockLock(path)
    elif not write:
        path = _repaired_copy(None)  # an empty journal to read from; the named file is not created
        lock = FlockLock(path)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))  # type: ignore[arg-type]


def _check_is_journal(path: Path) -> None:
    with open(path, "rb") as handle:
        first = handle.readline(1 << 20)
    if first and not first.startswith(RECORD_START):
        raise ConfigError(f"{path}: not an Optuna journal (its first line is not a journal record); name a new "
                          "file with --storage, or the journal a sweep wrote")


def _refuse_torn(path: Path) -> None:
    if torn_records(path.read_bytes()) is not None:
        raise ConfigError(f"{path}: this journal is torn (a write was cut short) and is not a study folder's own "
                          "ledger.journal, so ablate does not repair it; keep a copy and run `ablate sweep` on the "
                          "study folder's journal, or cut the partial line by hand")
    return None


_READ_COPIES: list[Path] = []


def _repaired_copy(path: Path | None) -> Path:
    """A private temporary copy of a journal with its torn records mended (or an empty file), for reading."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ablate-journal-"))
    if not _READ_COPIES:
        atexit.register(lambda: [shutil.rmtree(f, ignore_errors=True) for f in _READ_COPIES])
    _READ_COPIES.append(folder)
    copy = folder / "ledger.journal"
    if path is None:
        copy.touch()
        return copy
    kept, dropped_lines, dropped_bytes = torn_records(path.read_bytes()) or ([], 0, 0)
    copy.write_bytes(b"".join(line + b"\n" for line in kept))
    LOG.warning(f"{path}: this journal is torn (a write was cut short): read {len(kept)} intact records, "
                f"{dropped_lines} partial record(s) ({dropped_bytes} bytes) left out; the file is unchanged; "
                "`ablate sweep` repairs it (keeping a copy of the original)")
    return copy


RECORD_START = b'{"op_code"'


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "op_code" in record else None


def torn_records(data: bytes) -> tuple[list[bytes], int, int] | None:
    """A journal's intact records, and the partial lines and bytes a torn write left (None when it is whole).

    Optuna appends whole lines; a write cut short leaves a partial record, and the next append is glued onto it,
    after which Optuna cannot read the file at all. Each line must be one JSON record ending in a newline: a line
    that is not is cut back to the last complete record it contains (the glued-on one), or dropped when it holds
    none."""
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty when the file ends cleanly
    kept: list[bytes] = []
    dropped_bytes = dropped_lines = 0
    for number, line in enumerate(lines + ([tail] if tail else [])):
        complete = number < len(lines)
        if complete and _parse_record(line) is not None:
            kept.append(line)
            continue
        start = line.rfind(RECORD_START)
        if complete and start > 0 and _parse_record(line[start:]) is not None:
            kept.append(line[start:])
            dropped_bytes += start
        else:
            dropped_bytes += len(line)
            dropped_lines += 1
    if not dropped_bytes and not dropped_lines:
        return None
    return kept, dropped_lines, dropped_bytes


def repair_journal(path: Path, backup: bool = True) -> str | None:
    """Mend a journal torn by a failed write (disk full, a crash mid-append); call under the journal's lock.

    The intact records are kept in order (`torn_records`) and the file is replaced atomically, after the original
    is copied to `<journal>.torn-<UTC time>` beside it. Returns what was dropped (None when the journal was whole)."""
    data = path.read_bytes()
    torn = torn_records(data)
    if torn is None:
        return None
    kept, dropped_lines, dropped_bytes = torn
    from ablate.results.safe_files import atomic_target

    copy = path.with_name(f"{path.name}.torn-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}")
    if backup:
        with atomic_target(copy) as tmp:
            tmp.write_bytes(data)
    with atomic_target(path) as tmp:
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
    return (f"{path}: repaired a torn journal (a write was cut short, e.g. disk full): kept {len(kept)} intact "
            f"records, dropped {dropped_lines} partial record(s) ({dropped_bytes} bytes)"
            + (f", the original kept as {copy.name}" if backup else "")
            + "; the attempts they described are re-run if they left no result")
