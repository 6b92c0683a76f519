"""The subcommands other packages add to `ablate` (sweep, worker, status, collect, report, results, sample, export).

Each module registers the function that adds its parsers (`COMMANDS.register(name, add)`); `ablate.cli` builds its
parser from its own commands (run, validate, techniques) and these, so the command line imports downward only and a
new subcommand is one registration in its own module (plus its name in `discover` below).
"""

from __future__ import annotations

import argparse
from typing import Callable

from ablate.registry import Registry

AddParsers = Callable[[argparse._SubParsersAction], None]

COMMANDS: Registry[AddParsers] = Registry("command", discover=("ablate.sweep.cli", "ablate.report.cli",
                                                              "ablate.report.results_cli", "ablate.sample",
                                                              "ablate.export", "ablate.sweep.collect"))
