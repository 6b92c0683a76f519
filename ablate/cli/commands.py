"""The subcommands beyond main's own (sweep, worker, status, collect, report, results, sample, export).

Each module of `ablate/cli/` registers the function that adds its parsers (`@COMMANDS.register(name)`);
`ablate.cli.main` builds its parser from its own commands (run, validate, techniques) and these. Discovery imports
every module of the package, so a new subcommand is one new file here.
"""

from __future__ import annotations

import argparse
from typing import Callable

from ablate.core.registry import Registry

AddParsers = Callable[[argparse._SubParsersAction], None]

COMMANDS: Registry[AddParsers] = Registry("command", discover=("ablate.cli",))

# the order `ablate --help` lists them in (a researcher's workflow); a command not named here comes last
HELP_ORDER = ("sweep", "collect", "report", "results", "sample", "export")


def in_help_order() -> list[AddParsers]:
    """The registered commands' parser builders, in HELP_ORDER, then the rest by name."""
    entries = COMMANDS.all()
    return [entries[name] for name in sorted(entries, key=lambda n: (HELP_ORDER.index(n) if n in HELP_ORDER
                                                                       else len(HELP_ORDER), n))]
