"""`ablate sweep`, `ablate worker`, `ablate status` (registered in ablate.cli.commands.COMMANDS)."""

from __future__ import annotations

import argparse
import os
import sys

from ablate.cli.commands import COMMANDS


def _storage(args: argparse.Namespace) -> str | None:
    """--storage, else $ABLATE_STORAGE (how a sweep hands the URL to its workers: never on a command line)."""
    from ablate.sweep.storage import STORAGE_ENV

    return args.storage or os.environ.get(STORAGE_ENV) or None


def cmd_sweep(args: argparse.Namespace) -> int:
    from ablate.sweep.runner import run_sweep

    from ablate.sweep.worker import parse_arms, parse_devices

    from ablate.core.config_reading import with_quick

    return run_sweep(args.study, jobs=args.jobs, storage=_storage(args), dry_run=args.dry_run,
                     overrides=with_quick(args.set, args.quick),
                     fail_fast=args.fail_fast, max_attempts=args.max_attempts, out=args.out,
                     progress=not args.quiet, tensorboard=args.tensorboard, devices=parse_devices(args.devices),
                     no_work=args.no_work, arms=parse_arms(args.arms))


def cmd_worker(args: argparse.Namespace) -> int:
    from ablate.sweep.worker import run_worker

    from ablate.sweep.worker import parse_arms, parse_devices

    return run_worker(args.study, out=args.out, storage=_storage(args), threads=args.threads,
                      fail_fast=args.fail_fast, tensorboard=args.tensorboard, devices=parse_devices(args.devices),
                      progress=not args.quiet and not args.no_progress and sys.stderr.isatty(),
                      arms=parse_arms(args.arms))


def cmd_status(args: argparse.Namespace) -> int:
    from ablate.sweep.runner import status_text

    print(status_text(args.study, out=args.out, storage=_storage(args), overrides=args.set))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML file (or its results folder, results/<study>)")
    p.add_argument("--storage", metavar="URL", default=None,
                   help="Optuna storage: a journal file (*.journal), redis://…, or an RDB URL (sqlite:///x.db); "
                        "also $ABLATE_STORAGE (keeps a password off the command line); "
                        "default: the journal file results/<study>/ledger.journal")
    p.add_argument("--out", "--results", dest="out", default="results", metavar="DIR",
                   help="results root (default results/): the study's folder is DIR/<study>")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write each cell's curves and metrics as TensorBoard event files under DIR "
                        "(pip install 'ablate[tensorboard]')")


def _devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", metavar="LIST", default=None,
                   help="one worker process per device, e.g. cuda:0,cuda:1 or cpu,cpu (recorded in each row)")


def _arms(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--arms", metavar="LIST", default=None, help=what)


@COMMANDS.register("sweep")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train every missing cell of a study, in parallel, resumably")
    _common(p)
    _devices(p)
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: $ABLATE_JOBS, else one per GPU, else one per CPU core and at "
                        "most one per queued cell); torch threads are divided among them")
    _arms(p, "only these arms' cells, e.g. --arms vanilla,free_bits (the others keep their state; a later sweep "
             "without --arms runs them)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the cell counts and the plan; run nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed attempt (no retries)")
    p.add_argument("--no-work", action="store_true",
                   help="queue the cells and stop: `ablate worker` processes (on any machine sharing --storage) run "
                        "them")
    p.add_argument("--max-attempts", type=int, default=2, metavar="N",
                   help="attempts per cell in this sweep, the first included (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every cell (after the arms' own keys; a list sweeps); repeatable")
    p.add_argument("--quick", action="store_true",
                   help="a first look: every cell with --set data.max_train=2000 --set train.max_steps=200 --set "
                        "eval.max_sentences=200 --set eval.iw_samples=50 (recorded like any --set; your own --set win)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("worker", help="pull queued cells of a study until its queue is empty (started by sweep)")
    _common(p)
    _devices(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this worker")
    _arms(p, "take only these arms' queued cells, e.g. --arms ae_fb (which cells this worker's core goes to)")
    p.add_argument("--fail-fast", action="store_true", help="stop after the first failed attempt, queue no retry")
    p.add_argument("--no-progress", action="store_true", help="no progress line (how a sweep starts its workers)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="expected / done / failed / running / waiting cells per arm of a study")
    _common(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the overrides the study was swept with (a study folder remembers its own)")
    p.set_defaults(func=cmd_status)
