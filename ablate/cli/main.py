"""The `ablate` command. Each subcommand is a small function; bad input ends in one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def format_metrics(row: dict) -> str:
    """A plain-text table: one line per metric, one column per evaluation split."""
    splits = [s for s in ("valid", "test") if f"{s}.kl" in row]
    if not splits:
        return "no evaluation splits (eval.splits: []): training only"
    from ablate.metrics.schema import in_table

    names = in_table("summary") + sorted({k.split(".", 1)[1] for k in row if k.startswith(("valid.probe", "test.probe"))
                                   and not k.split(".", 1)[1].startswith("probe_majority")})
    lines = [f"{'metric':<22}" + "".join(f"{s:>12}" for s in splits)]
    words = row.get("eval.token_unit") == "word"
    for name in names:
        if words and name == "ppl_word":  # the same number as ppl for a word-level model
            continue
        values = [row.get(f"{s}.{name}") for s in splits]
        if all(v is None for v in values):
            continue
        cells = "".join(f"{v:>12.0f}" if name == "au" else f"{v:>12.3f}" for v in values)
        label = name
        if name.startswith("probe."):
            chance = row.get(f"{splits[-1]}.probe_majority.{name.split('.', 1)[1]}")
            label = f"{name} (maj {chance:.2f})" if chance is not None else name
        lines.append(f"{label:<22}{cells}")
    conv = (f"PPL: IW K={row.get('eval.iw_samples')} per {row.get('eval.token_unit')} (+</s>); "
            + ("" if words else "ppl_word per word (+</s>); ")
            + f"MI pool M={row.get('eval.mi_pool')}; AU delta={row.get('eval.au_delta')}")
    return "\n".join(lines + [conv])


def cmd_run(args: argparse.Namespace) -> int:
    from ablate.core.config import ConfigError, config_hash
    from ablate.core.config_reading import is_study, load_config, read_yaml, with_quick
    from ablate.results.layout import MAX_NAME, StudyFolder
    from ablate.results.safe_files import check_writable, remove_owned
    from ablate.engine.preflight import check_runnable
    from ablate.engine.run import execute

    if args.config and is_study(read_yaml(args.config)):
        raise ConfigError(f"{args.config}: a study (it has arms), not a run config; run it with "
                          f"`ablate sweep {args.config}`")
    args.set = with_quick(args.set, args.quick)
    config = load_config(args.config, args.set)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
        return 0
    check_runnable(config, args.config or "<defaults>")
    check_writable(args.out, "--out")
    if args.tensorboard:
        from ablate.engine.tensorboard_log import check_available

        check_available()
        check_writable(args.tensorboard, "--tensorboard")
    layout = StudyFolder(args.out)
    if args.name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", args.name):
            raise ConfigError(f"--name {args.name!r}: letters, digits, '_', '.', '+', '-' only (it names files)")
        if len(args.name) > MAX_NAME:
            raise ConfigError(f"--name: {len(args.name)} characters long; at most {MAX_NAME} (it names files)")
        taken = layout.run_files(args.name).row
        if taken.exists() and not args.resume:
            raise ConfigError(f"--name {args.name}: {taken} exists; choose another name")
    # every single run checkpoints each epoch under its config hash; --resume continues from there
    checkpoint = layout.checkpoint(config_hash(config))
    if args.resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint of this config ({checkpoint}); run it without --resume")
    if not args.resume:
        remove_owned(checkpoint, layout.root)
    try:
        outcome = execute(config, layout.root, run_id=args.name, checkpoint=checkpoint, progress=not args.quiet,
                          tensorboard=args.tensorboard)
    except KeyboardInterrupt:
        from ablate.core.log import LOG

        again = ["ablate", "run"] + ([args.config] if args.config else []) + [f"--set={o}" for o in args.set] \
            + ["--out", str(args.out)] + (["--name", args.name] if args.name else []) + ["--resume"]
        kept = f"its state is kept in {checkpoint}; " if checkpoint.exists() else ""
        LOG.warning(f"interrupted; {kept}continue with: {' '.join(shlex.quote(a) for a in again)}")
        return 130
    if outcome.ok:
        remove_owned(checkpoint, layout.root)
    row = outcome.row
    if not outcome.ok:
        print(f"run failed: {row['error_class']}: {row['error_message']} (row written to {outcome.result_path})",
              file=sys.stderr)
        return 1
    print(format_metrics(row))
    tps = row.get("train_tokens_per_second") or 0.0
    print(f"train {row['train_seconds']:.1f}s ({tps:,.0f} tokens/s, {row.get('precision', 'fp32')}), "
          f"eval {row['eval_seconds']:.1f}s, device {row['device']}")
    model = f" and {outcome.model_path}" if outcome.model_path is not None else ""
    print(f"wrote {outcome.result_path}, {outcome.curves_path}{model}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ablate.core.config_reading import is_study, load_config, read_yaml
    from ablate.engine.preflight import check_configs_runnable, check_runnable

    data = read_yaml(args.path)
    if is_study(data):
        from ablate.sweep.study import load_study  # noqa: WPS433 (study support lives in the sweep package)

        study = load_study(args.path, args.set)
        check_configs_runnable(study.labelled_configs())
        print(study.summary())
        return 0
    config = load_config(args.path, args.set)
    check_runnable(config, args.path)
    print(f"{args.path}: valid run config ({config.model.name} on {config.data.name}, "
          f"techniques: {', '.join(config.techniques) or 'none'})")
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    from ablate.core.technique_registry import describe

    for entry in describe():
        print(f"{entry['name']} (v{entry['version']}) — {entry['summary']}")
        if entry["paper"]:
            print(f"  source: {entry['paper']}")
        if entry["replaces_kl_term"]:
            print("  replaces the KL term (cannot be combined with another technique that does)")
        for f in entry["fields"]:
            default = "required" if f["required"] else f"default {f['default']!r}"
            print(f"    {f['name']:<20} {default:<22} {f['help']}")
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate one config, write one result row")
    p.add_argument("config", nargs="?", help="YAML run config (omit for the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key, repeatable")
    p.add_argument("--out", "--results", dest="out", default="results", metavar="DIR",
                   help="results root the run writes into: DIR/rows, curves, models (default results/)")
    p.add_argument("--name", default=None, help="the run's id and file name (default: time-confighash)")
    p.add_argument("--quick", action="store_true",
                   help="a first look: --set data.max_train=2000 --set train.max_steps=200 --set "
                        "eval.max_sentences=200 --set eval.iw_samples=50 (your own --set win; numbers not "
                        "comparable with full runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue this config's interrupted run from where it stopped (OUT/checkpoints/)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults filled, overrides applied) as YAML and stop")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write the run's curves and metrics as TensorBoard event files, DIR/<run id> "
                        "(pip install 'ablate[tensorboard]')")
    p.set_defaults(func=cmd_run)


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a run config or a study without training")
    p.add_argument("path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)


def add_techniques(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("techniques", help="list the registered techniques and their fields")
    p.set_defaults(func=cmd_techniques)


# This module's own subcommands; the others register in ablate.cli.commands.COMMANDS from
# their modules in ablate/cli/.
OWN_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_run, add_validate, add_techniques]


def build_parser() -> argparse.ArgumentParser:
    from ablate.cli.commands import in_help_order

    import ablate

    parser = argparse.ArgumentParser(prog="ablate", description="Benchmark and ablate posterior-collapse remedies")
    parser.add_argument("--version", action="version", version=f"ablate {ablate.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in OWN_COMMANDS + in_help_order():
        add(sub)
    for command in sub.choices.values():  # every command: how much it says (ablate.core.log)
        command.add_argument("-q", "--quiet", action="store_true",
                             help="warnings and errors only (no progress line, no notes)")
        command.add_argument("-v", "--verbose", action="count", default=0, help="details too (-vv: more)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ablate.core.config import ConfigError
    from ablate.core.errors import Fault
    from ablate.core.log import LOG, set_verbosity

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `ablate`: what it can do, not an error
        parser.print_help()
        return 0
    set_verbosity(-1 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except ConfigError as error:
        LOG.error(str(error))
        return 2
    except Fault as error:
        LOG.error(str(error))
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, evaluating): one line, not a traceback
        LOG.warning("interrupted")
        return 130
    except BrokenPipeError:  # `ablate validate X | head -1`: the reader left; stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # a full disk or a read-only folder mid-run: one line, what is written stays
        from ablate.results.safe_files import storage_error_line

        line = storage_error_line(error)
        if line is None:
            raise
        LOG.error(line)
        return 1

