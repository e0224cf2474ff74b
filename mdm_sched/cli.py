"""The ``mdm-sched`` command: profile, schedule, generate, eval and demo, each a thin layer over the API."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence

# (module, add-arguments function, command function, help) per subcommand; modules load on use only.
_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "profile": ("mdm_sched.profile", "add_profile_arguments", "profile_command",
                "estimate a model's information profile on held-out data"),
    "schedule": ("mdm_sched.profile", "add_schedule_arguments", "schedule_command",
                 "compute the optimal schedule for a profile and compare it with constant and cosine"),
    "generate": ("mdm_sched.cli", "add_generate_arguments", "generate_command",
                 "sample sequences from a masked LM with a schedule"),
    "eval": ("mdm_sched.harness", "add_eval_arguments", "eval_command",
             "compare schedules on a model: held-out bound, path KL, sample statistics, report"),
    "demo": ("mdm_sched.harness", "add_demo_arguments", "demo_command",
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
    parser.add_argument("--chat", action="store_true",
                        help="instruct models: send each --prompt as one user message through the tokenizer's chat "
                             "template (special tokens as the model family expects) and print only the replies")
    parser.add_argument("--system", default=None, help="with --chat: a system message before each prompt")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="a row is finished at its first EOS (the rest is filled with EOS)")
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


def _chat_messages(args: argparse.Namespace) -> list[list[dict[str, str]]] | None:
    """One conversation per --prompt for --chat (with --system first), else None."""
    if not args.chat:
        if args.system is not None:
            raise SystemExit("--system is only used with --chat")
        return None
    if not args.prompt:
        raise SystemExit("--chat needs at least one --prompt (each becomes one user message)")
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    return [[*system, {"role": "user", "content": p}] for p in args.prompt]


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
    messages = _chat_messages(args)
    generator = torch.Generator().manual_seed(args.seed)
    out = ms.generate(model, prompts=None if messages else args.prompt, messages=messages, gen_length=args.gen_length,
                      schedule=schedule, steps=steps, profile=args.profile,
                      num_samples=None if args.prompt else args.num_samples, order=args.order,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, block_length=args.block_length,
                      stop_at_eos=args.stop_at_eos, generator=generator, progress=True)
    if messages:  # chat needs a tokenizer: print the replies, not the templated prompts
        texts = model.decode(out.generated)
    elif out.texts is not None:
        texts = out.texts
    else:
        texts = [" ".join(map(str, row)) for row in out.generated.tolist()]
    print(f"# {len(texts)} samples, {out.nfe} model calls, schedule {schedule}", file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    for t in texts:
        print(t)
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
