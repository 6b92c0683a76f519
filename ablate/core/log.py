"""ablate's messages: one logger ("ablate") writing to stderr, its level set by `-q/-v` on every command.

A command's product (metrics, tables, the paths it wrote) goes to stdout with print; everything said about the work
goes here: warnings and errors ("warning: …", "error: …"), notes (INFO, the default level: each epoch's validation
values, files moved), details (DEBUG, `-v`: what each stage does). `-q` keeps warnings and errors only. Lines are
written with tqdm.write, so a progress line on the terminal is redrawn below them, not torn.
"""

from __future__ import annotations

import logging
import re
import sys

from tqdm import tqdm

LOG = logging.getLogger("ablate")
PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def terminal_safe(text: str) -> str:
    """`text` with control characters (ESC, CR, BEL, ...) written as escapes (\\x1b), tab and newline kept: text
    from files ablate did not write (a result row's arm, a corpus's words, a file name) can neither retitle nor
    clear the terminal it is printed on."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class _StderrLines(logging.Handler):
    """Each record as one line on the current sys.stderr (looked up per record: tests and redirections swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(PREFIX.get(record.levelno, "") + terminal_safe(record.getMessage()), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never end the work
            self.handleError(record)


def set_verbosity(verbosity: int) -> None:
    """-1: warnings and errors only (-q); 0: notes too (default); 1 or more: details (-v)."""
    LOG.setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG)


def verbosity_flag(verbosity: int) -> list[str]:
    """The flag that gives a child process (a sweep's worker) the same verbosity."""
    return ["-q"] if verbosity < 0 else ["-v"] * verbosity


def current_verbosity() -> int:
    level = LOG.getEffectiveLevel()
    return -1 if level >= logging.WARNING else 0 if level == logging.INFO else 1


if not LOG.handlers:
    LOG.addHandler(_StderrLines())
    LOG.propagate = False
    set_verbosity(0)
