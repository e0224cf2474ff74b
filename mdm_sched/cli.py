"""The ``mdm-sched`` command: profile, schedule, generate, eval and demo, each a thin layer over the API."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdm_sched.results import EvalConfig

# (module, add-arguments function, command function, help) per subcommand; modules load on use only.
_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "profile": ("mdm_sched.profile", "add_profile_arguments", "profile_command",
                "estimate a model's information profile on held-out data"),
    "schedule": ("mdm_sched.profile", "add_schedule_arguments", "schedule_command",
                 "compute the optimal schedule for a profile and compare it with constant and cosine"),
    "generate": ("mdm_sched.cli", "add_generate_arguments", "generate_command",
                 "sample sequences from a masked LM with a schedule"),
    "eval": ("mdm_sched.cli", "add_eval_arguments", "eval_command",
             "compare schedules on a model: held-out bound, path KL, sample statistics, report"),
    "demo": ("mdm_sched.cli", "add_demo_arguments", "demo_command",
             "the default job: AntiBERTy on human VH germlines, end to end, with a report"),
}


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="path, hub id or built-in name (antiberty, sapiens-vh, sapiens-vl)")
    parser.add_argument("--gen-length", type=int, required=True, help="number of tokens to generate")
    parser.add_argument("--steps", type=int, default=None, help="model calls (per block); default: gen-length")
    parser.add_argument("--schedule", default="constant",
                        help="builder name (constant, cosine, geometric, optimal, sqrt) or a schedule JSON file")
    parser.add_argument("--profile", default=None, help="profile JSON for --schedule optimal/sqrt")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    parser.add_argument("--order", default="random", choices=["random", "confidence", "margin", "entropy"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--out", default=None, help="write the samples as JSON lines here (atomically)")


def generate_command(args: argparse.Namespace) -> int:
    import torch

    import mdm_sched as ms
    from mdm_sched import schedules
    from mdm_sched._io import atomic_write_text

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = ms.load_masked_lm(args.model, device=args.device, dtype=dtype, trust_remote_code=args.trust_remote_code)
    steps = args.steps or args.block_length or args.gen_length
    schedule = ms.Schedule.load(args.schedule) if os.path.isfile(args.schedule) else args.schedule
    if schedule in schedules.NEED_PROFILE and not args.profile:
        raise SystemExit(f"--schedule {schedule} needs --profile PROFILE.json (make one with `mdm-sched profile`)")
    generator = torch.Generator().manual_seed(args.seed)
    out = ms.generate(model, prompts=args.prompt, gen_length=args.gen_length, schedule=schedule, steps=steps,
                      profile=args.profile, num_samples=None if args.prompt else args.num_samples, order=args.order,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      block_length=args.block_length, generator=generator, progress=True)
    texts = out.texts if out.texts is not None else [" ".join(map(str, row)) for row in out.generated.tolist()]
    print(f"# {len(texts)} samples, {out.nfe} model calls, schedule {schedule}", file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    for t in texts:
        print(t)
    return 0


# -- eval and demo: one flag per EvalConfig field, so a flag cannot drift from the config -----------------

def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(text: str) -> tuple[str, ...]:
    vals = tuple(v for v in text.replace(",", " ").split() if v)
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return vals


def _or_none(convert: Callable[[str], object]) -> Callable[[str], object]:
    """``convert``, with ``none`` meaning None (the field's "not set" value)."""
    def parse(text: str) -> object:
        return None if text.strip().lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its error message
    return parse


def _field_flag(parser: argparse.ArgumentParser, field: dataclasses.Field, hint: object, default: object) -> None:
    """One ``--field-name`` flag: its type from the annotation, its help from the field's metadata."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else "none" if default is None else default
    help_text = f"{field.metadata.get('help', field.name)} (default: {shown})"
    flag = "--" + field.name.replace("_", "-")
    if base is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        return
    convert: Callable[[str], object] | None = {int: int, float: float, str: str}.get(base)  # type: ignore[arg-type]
    if convert is None:
        convert = _positive_ints if typing.get_args(base)[0] is int else _names
    parser.add_argument(flag, type=_or_none(convert) if optional else convert, default=argparse.SUPPRESS,
                        metavar=field.name.upper(), help=help_text)


def _add_run_arguments(parser: argparse.ArgumentParser, base: EvalConfig, out: str, threads: int | None) -> None:
    from mdm_sched.results import EvalConfig

    hints = typing.get_type_hints(EvalConfig)
    for field in dataclasses.fields(EvalConfig):
        _field_flag(parser, field, hints[field.name], getattr(base, field.name))
    parser.add_argument("--no-judge", dest="judge", action="store_const", const=None, default=argparse.SUPPRESS,
                        help="no judge model (same as --judge none)")
    parser.add_argument("--out", default=None, help=f"output folder: report, plots, numbers, caches for resuming "
                                                    f"(default: {out})")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch CPU threads for this command (1 is fastest on a busy machine; default: {threads})")


def _config_from(args: argparse.Namespace, base: EvalConfig) -> EvalConfig:
    """``base`` with every flag the user gave; ``confidence_budgets`` follows ``--budgets`` unless given too."""
    from mdm_sched.results import EvalConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if hasattr(args, f.name)}
    cfg = dataclasses.replace(base, **given)
    if cfg.confidence_budgets is not None and "budgets" in given and "confidence_budgets" not in given:
        kept = tuple(t for t in cfg.confidence_budgets if t in cfg.budgets)
        cfg = dataclasses.replace(cfg, confidence_budgets=kept or (cfg.budgets[len(cfg.budgets) // 2],))
    return cfg


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mdm-sched eval``: every :class:`~mdm_sched.results.EvalConfig` field, ``--out``, ``--threads``."""
    from mdm_sched.results import EvalConfig

    _add_run_arguments(parser, EvalConfig(), "mdm_sched_eval", None)


def eval_command(args: argparse.Namespace) -> int:
    """``mdm-sched eval``: run the harness with the given settings; prints the summary table."""
    from mdm_sched.results import EvalConfig

    return _run_and_print(_config_from(args, EvalConfig()), args.out or "mdm_sched_eval", args.threads)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mdm-sched demo``: ``--quick`` plus the eval flags, defaulting to the demo's settings."""
    from mdm_sched.harness import DEMO_FULL

    parser.add_argument("--quick", action="store_true",
                        help="Sapiens VH judged by AntiBERTy, smaller sizes (about 2 minutes; defaults of "
                             "mdm_sched.harness.DEMO_QUICK instead of those shown below)")
    _add_run_arguments(parser, DEMO_FULL, "mdm_sched_demo (--quick: mdm_sched_demo_quick)", 1)


def demo_command(args: argparse.Namespace) -> int:
    """``mdm-sched demo``: AntiBERTy (``--quick``: Sapiens) on human VH germlines, end to end."""
    from mdm_sched.harness import DEMO_FULL, DEMO_QUICK

    out = args.out or ("mdm_sched_demo_quick" if args.quick else "mdm_sched_demo")
    return _run_and_print(_config_from(args, DEMO_QUICK if args.quick else DEMO_FULL), out, args.threads)


def _run_and_print(cfg: EvalConfig, out: str, threads: int | None) -> int:
    import time

    import torch

    from mdm_sched import report
    from mdm_sched.harness import run_eval

    if threads:
        torch.set_num_threads(threads)  # the command's choice; library code never sets it
    t0 = time.time()
    results = run_eval(cfg, out, progress=False)
    print(report.summary_table(results))
    print()
    for f in results.findings:
        print(f"- {f}")
    print(f"\nreport: {os.path.join(out, 'report.md')}  (wall time {time.time() - t0:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mdm_sched import __version__

    parser = argparse.ArgumentParser(prog="mdm-sched", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mdm_sched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add_fn, _, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _load(module, add_fn)(p)
    return parser


def _load(module: str, attr: str) -> Callable:
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module, _, cmd_fn, _ = _COMMANDS[args.command]
    try:
        return int(_load(module, cmd_fn)(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, not a traceback
        print(f"mdm-sched {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
