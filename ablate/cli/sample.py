"""`ablate sample RUN`: look at what a trained VAE generates.

RUN is a saved model (`results/<study>/models/<stem>.model.pt`) or its result row (`rows/<stem>.parquet`).
The model is rebuilt from the run config stored in the file (`ablate.engine.run.prepare` + `build`: same corpus, same
tokenizer — a trained subword tokenizer is re-fitted deterministically) and its weights loaded. Then:

- prior:        z ~ N(0, I), decoded;
- reconstruct:  sentences of a split encoded to their posterior mean (or a posterior sample with --sample-z) and
                decoded;
- interpolate:  z_t = (1 − t)·mu_a + t·mu_b for t evenly spaced in [0, 1] between two sentences (split indices or
                texts), each decoded.
Each decoding uses one or more strategies: greedy, top_k (--top-k), nucleus (--top-p; Holtzman et al. 2020).
Works for every model family (the LSTM and the seq2seq Transformer VAE).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import torch

from ablate.cli.commands import COMMANDS
from ablate.core.log import terminal_safe
from ablate.engine.saved_models import examples, is_export, load_run, load_vae, model_file

STRATEGIES = ("greedy", "top_k", "nucleus")


def _batch_of_texts(texts: list[str], tokenizer, max_length: int):
    from ablate.data.batching import encode_split, make_batch

    split = encode_split(texts, tokenizer, max_length)
    return make_batch(split, list(range(len(texts))), tokenizer.framing)


@torch.no_grad()
def decode(model, tokenizer, z: torch.Tensor, strategy: str, max_length: int, top_k: int, top_p: float,
           generator: torch.Generator) -> list[str]:
    framing = tokenizer.framing
    ids = model.generate(z, max_length, strategy=strategy, top_k=top_k, top_p=top_p, generator=generator,
                         start_id=framing.dec_start, eos_id=framing.eos)
    return [tokenizer.decode(row) for row in ids]


@torch.no_grad()
def sample_report(model, tokenizer, texts: list[str], *, n_prior: int, n_reconstruct: int,
                  interpolate: list[str] | None, steps: int, strategies: list[str], max_length: int, top_k: int,
                  top_p: float, seed: int, sample_z: bool, device: torch.device,
                  input_max_length: int = 200) -> dict[str, Any]:
    """Everything `ablate sample` prints, as data."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, Any] = {"prior": {}, "reconstruct": [], "interpolate": None}

    if n_prior:
        z = torch.randn(n_prior, model.nz, generator=generator, device=device)
        out["prior"] = {s: decode(model, tokenizer, z, s, max_length, top_k, top_p, generator) for s in strategies}

    if n_reconstruct:
        chosen = texts[:n_reconstruct]
        batch = _batch_of_texts(chosen, tokenizer, input_max_length).to(device)
        mu, logvar = model.encode(batch)
        z = mu + torch.randn(mu.shape, generator=generator, device=device) * (0.5 * logvar).exp() if sample_z else mu
        decoded = {s: decode(model, tokenizer, z, s, max_length, top_k, top_p, generator) for s in strategies}
        out["reconstruct"] = [{"input": text, **{s: decoded[s][i] for s in strategies}}
                              for i, text in enumerate(chosen)]

    if interpolate:
        ends = [texts[int(x)] if x.lstrip("-").isdigit() else x for x in interpolate]
        batch = _batch_of_texts(ends, tokenizer, input_max_length).to(device)
        mu, _ = model.encode(batch)
        ts = torch.linspace(0.0, 1.0, steps, device=device)
        z = (1 - ts).unsqueeze(1) * mu[0] + ts.unsqueeze(1) * mu[1]
        decoded = {s: decode(model, tokenizer, z, s, max_length, top_k, top_p, generator) for s in strategies}
        out["interpolate"] = {"from": ends[0], "to": ends[1],
                              "path": [{"t": round(float(t), 4), **{s: decoded[s][i] for s in strategies}}
                                       for i, t in enumerate(ts.tolist())]}
    return out


def format_report(report: dict[str, Any], strategies: list[str]) -> str:
    lines: list[str] = []
    width = max(len(s) for s in strategies)
    if report["prior"]:
        lines.append("== samples from the prior z ~ N(0, I)")
        n = len(next(iter(report["prior"].values())))
        for i in range(n):
            for s in strategies:
                lines.append(f"  [{i}] {s:<{width}}  {report['prior'][s][i]}")
    if report["reconstruct"]:
        lines.append("== reconstructions")
        for i, item in enumerate(report["reconstruct"]):
            lines.append(f"  [{i}] {'input':<{width}}  {item['input']}")
            for s in strategies:
                lines.append(f"      {s:<{width}}  {item[s]}")
    if report["interpolate"]:
        inter = report["interpolate"]
        lines.append(f"== interpolation  a: {inter['from']}")
        lines.append(f"                  b: {inter['to']}")
        for item in inter["path"]:
            for s in strategies:
                lines.append(f"  t={item['t']:.2f} {s:<{width}}  {item[s]}")
    return "\n".join(lines)


def warn_unknown_words(tokenizer: Any, sentences: list[str]) -> None:
    """A warning for each given sentence with words the model's vocabulary lacks (they are read as <unk>)."""
    from ablate.core.log import LOG

    known = getattr(tokenizer, "stoi", None)
    if known is None:  # subword tokenizers spell any word
        return
    for sentence in sentences:
        unknown = list(dict.fromkeys(w for w in sentence.split() if w not in known))
        if unknown:
            LOG.warning(f"{sentence!r}: {len(unknown)} word(s) not in the model's vocabulary, read as <unk>: "
                        + ", ".join(unknown[:8]) + (" …" if len(unknown) > 8 else ""))


def check_arguments(args: argparse.Namespace) -> None:
    """The numeric options, before the model is loaded: one line naming the option."""
    from ablate.core.config import ConfigError

    checks = [("--prior", args.prior >= 0, "0 or more"), ("--reconstruct", args.reconstruct >= 0, "0 or more"),
              ("--steps", args.steps >= 2, "at least 2 (the two ends)"), ("--top-k", args.top_k >= 1, "at least 1"),
              ("--top-p", 0.0 < args.top_p <= 1.0, "in (0, 1]"), ("--max-length", args.max_length >= 1, "at least 1")]
    for option, ok, want in checks:
        if not ok:
            raise ConfigError(f"{option} {getattr(args, option[2:].replace('-', '_'))}: must be {want}")
    from ablate.engine.preflight import check_device

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", args.device):
        raise ConfigError(f"--device {args.device}: use cpu, auto, cuda, cuda:N or mps")
    reason = check_device(args.device)
    if reason:
        raise ConfigError(f"--device {reason}")


def cmd_sample(args: argparse.Namespace) -> int:
    from ablate.core.config import ConfigError

    strategies = args.strategy or ["greedy"]
    check_arguments(args)
    if is_export(args.run):  # an export folder: no corpus needed; its examples.txt are test sentences
        config, tokenizer, model = load_vae(args.run, args.device)
        splits, source = {"test": examples(args.run)}, args.run
    else:
        config, prepared, model = load_run(args.run, args.device)
        tokenizer, splits, source = prepared.tokenizer, prepared.corpus.texts, model_file(args.run)
    if args.split not in splits:
        raise ConfigError(f"--split {args.split}: no such split; one of {', '.join(splits)}")
    texts = splits[args.split]
    for end in args.interpolate or []:
        if end.lstrip("-").isdigit() and not -len(texts) <= int(end) < len(texts):
            raise ConfigError(f"--interpolate {end}: the {args.split} split has {len(texts)} sentences "
                              f"(indices 0..{len(texts) - 1}); or give a quoted sentence")
    warn_unknown_words(tokenizer, [end for end in args.interpolate or [] if not end.lstrip("-").isdigit()])
    device = next(model.parameters()).device
    report = sample_report(model, tokenizer, texts, n_prior=args.prior, n_reconstruct=args.reconstruct,
                           interpolate=args.interpolate, steps=args.steps, strategies=strategies,
                           max_length=args.max_length, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           sample_z=args.sample_z, device=device, input_max_length=config.data.max_length)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(terminal_safe(f"# {source}: {config.model.name} on {config.data.name}, nz={model.nz}"))
        print(terminal_safe(format_report(report, strategies)))
    return 0


@COMMANDS.register("sample")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="decode from the prior, reconstruct sentences, interpolate (a saved run)")
    p.add_argument("run", help="results/<study>/models/<stem>.model.pt, its rows/<stem>.parquet, "
                   "or an `ablate export` folder")
    p.add_argument("--prior", type=int, default=5, metavar="N", help="sentences decoded from z ~ N(0, I) (5)")
    p.add_argument("--reconstruct", type=int, default=5, metavar="N",
                   help="first N sentences of --split encoded and decoded (5)")
    p.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                   help="two sentences (indices into --split, or quoted texts) to interpolate between")
    p.add_argument("--steps", type=int, default=5, help="points on the interpolation path, ends included (5)")
    p.add_argument("--split", default="test", help="split the sentences come from (test)")
    p.add_argument("--strategy", action="append", choices=STRATEGIES,
                   help="greedy | top_k | nucleus; repeat for several (greedy)")
    p.add_argument("--top-k", type=int, default=10, help="k of top_k sampling (10)")
    p.add_argument("--top-p", type=float, default=0.9, help="p of nucleus sampling (0.9)")
    p.add_argument("--max-length", type=int, default=40, help="maximum generated tokens (40)")
    p.add_argument("--sample-z", action="store_true", help="reconstruct from z ~ q(z|x) instead of its mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (cpu)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_sample)

