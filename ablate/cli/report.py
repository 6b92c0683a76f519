"""`ablate report [STUDY_DIR ...] --out DIR` (registered in ablate.cli.commands.COMMANDS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ablate.cli.commands import COMMANDS
from ablate.core.log import LOG


def cmd_report(args: argparse.Namespace) -> int:
    from ablate.results.safe_files import check_writable
    from ablate.report.build import Options, build_report
    from ablate.report.inputs import find_studies, is_study_folder

    if args.studies:
        folders = []
        for given in args.studies:
            path = Path(given)
            if not path.is_dir():
                LOG.error(f"{given}: no such folder; give a study results folder such as results/full_grid")
                return 2
            # the folder itself when it is a study (or holds single runs), and the studies inside it
            found = ([path] if is_study_folder(path) else []) + [p for p in find_studies(path) if p != path]
            if not found:
                LOG.error(f"{given}: neither a study folder (manifest.parquet or rows/) nor a folder of studies")
                return 2
            folders += found
    else:
        folders = find_studies(args.results)
        if not folders:
            LOG.error(f"{args.results}: no study folders (with manifest.parquet or rows/) found; run "
                      "`ablate sweep STUDY.yaml` first or name a folder")
            return 2
    select = tuple(s.strip() for s in args.select.split(",") if s.strip()) if args.select else None
    try:
        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    except ValueError:
        rates = ()
    if not rates or any(not r >= 0 for r in rates):
        LOG.error(f"--rates {args.rates!r}: give KL values in nats, comma-separated, e.g. --rates 2,5,10")
        return 2
    options = Options(baseline=args.baseline, select=select, split=args.split, rates=rates)
    check_writable(args.out, "--out")
    unreadable: list[Path] = []
    index = build_report(folders, args.out, options, unreadable=unreadable)
    print(f"wrote {index} ({len(folders)} stud{'y' if len(folders) == 1 else 'ies'}: "
          f"{', '.join(str(f) for f in folders)})")
    if unreadable:
        shown = ", ".join(str(p) for p in unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        LOG.warning(f"{len(unreadable)} unreadable file(s) left out (counted in coverage): {shown}")
    return 0


@COMMANDS.register("report")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots of stored results → OUT/index.html (never trains)")
    p.add_argument("studies", nargs="*", metavar="STUDY_DIR",
                   help="study results folders (default: every study under --results)")
    p.add_argument("--out", default="reports", help="output folder (default reports/)")
    p.add_argument("--results", default="results", help="results root searched when no STUDY_DIR is given")
    p.add_argument("--baseline", default=None,
                   help="arm the paired differences are taken against (default: the study's `baseline:`, else "
                        "vanilla, the plain VAE)")
    p.add_argument("--select", default=None, metavar="COLUMN[,COLUMN]",
                   help="validation column choosing each arm's setting; the first present is used (default: the "
                        "study's select: by, else valid.nll, then valid.nelbo); the study's where constraint stays")
    p.add_argument("--split", default="test", choices=["test", "valid"], help="split the tables report")
    p.add_argument("--rates", default="2,5,10", metavar="KL[,KL]",
                   help="KL values (nats) at which the remedies are compared at equal rate (default 2,5,10)")
    p.set_defaults(func=cmd_report)
