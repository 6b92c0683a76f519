"""`ablate collect`: gather a study's results from other machines' copies of its folder (ablate/sweep/collect.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ablate.cli.commands import COMMANDS
from ablate.core.log import LOG
from ablate.sweep.collect import collect


def cmd_collect(args: argparse.Namespace) -> int:
    target = Path(args.study_folder)
    done = collect(target, [Path(s) for s in args.sources])
    print(f"{target}: {done.copied} attempt(s) collected, {done.present} already here"
          + (f", {len(done.conflicts)} conflict(s) left out" if done.conflicts else "")
          + (f", {len(done.refused)} file(s) refused" if done.refused else ""))
    for path in done.conflicts[:10]:
        LOG.warning(f"{path}: an attempt of this name is already here with other contents; kept ours")
    for path, problem in done.refused[:10]:
        LOG.warning(f"{path}: not copied: {problem}")
    return 0


@COMMANDS.register("collect")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="gather a study's results from other machines' copies of its folder")
    p.add_argument("study_folder", help="this machine's results/<study> (written by ablate sweep)")
    p.add_argument("sources", nargs="+", help="copies of other machines' results/<study> folders")
    p.set_defaults(func=cmd_collect)
