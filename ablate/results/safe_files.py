"""Files ablate writes and reads back: atomic replacement, output folders checked before work, safe loading.

Every file ablate writes goes through `atomic_target`: the bytes go to a hidden temporary name in the same folder,
which is renamed over the target only when complete (readers never see half a file) and removed when writing
fails (a full disk leaves no `.tmp` behind). `check_writable` runs before any training, so an unwritable `--out`
costs a line, not a run. Saved models and checkpoints are read back with `load_tensors`, which unpickles tensors
and plain containers only (`torch.load(weights_only=True)`): a planted file cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ablate.core.config import ConfigError

# OSErrors that say "this place cannot take the files", as opposed to a bug
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EFBIG}


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(folder: str | Path, what: str) -> None:
    """A one-line ConfigError unless files can be created in `folder` (made later, when it does not exist yet).

    Probes by creating and removing a file in the folder or its nearest existing parent (permission bits alone
    do not tell: root ignores them, and a read-only mount or a full quota shows only on writing).
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {folder}: {existing} is a file, not a folder; choose another folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".ablate-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{what} {folder}: cannot write in {existing} ({error.strerror}); "
                          "choose a writable folder") from None


def load_tensors(path: Path, what: str, map_location: Any = "cpu") -> dict[str, Any]:
    """A model file or checkpoint as data (tensors, numbers, strings, lists, dicts); a one-line ConfigError for
    anything else, including a pickle that would build other objects or call functions."""
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as error:
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"{path}: not a {what} ablate can load safely (it holds more than tensors and plain "
                          f"data, or is damaged: {reason})") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path}: not a {what} (expected a mapping of tensors, got {type(payload).__name__})")
    return payload


def storage_error_line(error: OSError) -> str | None:
    """One line for an OSError that means the output place cannot take the files (None for other errors)."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    where = f" writing {error.filename}" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full{where}: free space (or choose another folder) and run the same command again"
    if error.errno == errno.EFBIG:
        return f"file too large{where} (a file-size limit was reached); raise the limit and run the same command again"
    return f"cannot write{where} ({error.strerror}); choose a writable folder and run the same command again"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def spreadsheet_safe(frame: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells cannot run as spreadsheet formulas (CSV injection, OWASP):
    a text starting with =, +, -, @, tab or CR — other than a plain number such as "-1.5" — gets a leading "'"."""

    def safe(value: Any) -> Any:
        if not isinstance(value, str) or not value.startswith(FORMULA_START):
            return value
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value

    from pandas.api.types import is_object_dtype, is_string_dtype

    out = frame.copy()
    for column in out.columns:
        if is_object_dtype(out[column]) or is_string_dtype(out[column]):
            out[column] = out[column].map(safe)
    return out


def through_link(path: Path, root: Path) -> Path | None:
    """The first symbolic link on the way from `root` down to `path` (`path` included; `root` itself, chosen by
    the user, may be one), or None."""
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path if path.is_symlink() else None
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def remove_owned(path: Path, root: Path) -> bool:
    """Delete a file ablate wrote under `root` — never through a symbolic link (the file itself or a folder on
    the way: it would delete what the link points at). Returns whether it was removed."""
    if through_link(path, root) is not None:
        return False
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True
