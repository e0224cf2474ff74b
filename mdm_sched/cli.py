"""The ``mdm-sched`` command: profile, schedule, generate, eval and demo, each a thin layer over the API."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from mdm_sched.config import CliSpec, MaskedGenerationConfig
    from mdm_sched.models import MaskedLM
    from mdm_sched.profile import InformationProfile
    from mdm_sched.results import EvalConfig
    from mdm_sched.schedules import Schedule

# (module, add-arguments function, command function, help) per subcommand; modules load on use only.
_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "profile": ("mdm_sched.cli", "add_profile_arguments", "profile_command",
                "estimate a model's information profile on held-out data"),
    "schedule": ("mdm_sched.cli", "add_schedule_arguments", "schedule_command",
                 "compute the optimal schedule for a profile and compare it with constant and cosine"),
    "generate": ("mdm_sched.cli", "add_generate_arguments", "generate_command",
                 "sample sequences from a masked LM with a schedule"),
    "eval": ("mdm_sched.cli", "add_eval_arguments", "eval_command",
             "compare schedules on a model: held-out bound, path KL, sample statistics, report"),
    "demo": ("mdm_sched.cli", "add_demo_arguments", "demo_command",
             "the default job: AntiBERTy on human VH germlines, end to end, with a report"),
}


# ------------------------------------------------------------------------------------------------
# mdm-sched generate: one flag per MaskedGenerationConfig field (same name, help and parsing as the API)
# ------------------------------------------------------------------------------------------------

#: What the command uses when neither a flag nor --config sets it (the API has no default for these).
_GENERATE_DEFAULTS = {"gen_length": "required unless --config sets it", "schedule": "constant",
                      "steps": "the block length (one token per call)", "num_samples": "1"}


def _config_flag(parser: argparse.ArgumentParser, field: dataclasses.Field, spec: CliSpec) -> None:
    """One ``--field-name`` flag from a config field's metadata; unset flags stay out of the namespace."""
    flag = "--" + field.name.replace("_", "-")
    default = _GENERATE_DEFAULTS.get(field.name, field.default)
    shown = "off" if default is False else "none" if default is None else default
    help_text = f"{field.metadata['help']} (default: {shown})"
    kw: dict[str, object] = {"default": argparse.SUPPRESS, "help": help_text}
    if spec.flag:
        parser.add_argument(flag, action="store_true", **kw)
    elif spec.optional_list:
        parser.add_argument(flag, nargs="*", type=int, metavar=spec.metavar, **kw)
    else:
        parser.add_argument(flag, type=spec.parse or str, nargs=spec.nargs, choices=spec.choices,
                            metavar=spec.metavar, **kw)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mdm-sched generate``: the model and run, then every :class:`MaskedGenerationConfig` field."""
    from mdm_sched.config import cli_fields

    run = parser.add_argument_group("model and run")
    run.add_argument("--model", required=True, help="path, Hub id or built-in name (antiberty, sapiens-vh, sapiens-vl)")
    run.add_argument("--prompt", action="append", default=None,
                     help="prompt text (repeatable; --num-samples then means samples per prompt)")
    run.add_argument("--chat", action="store_true",
                     help="instruct models: send each --prompt as one user message through the tokenizer's chat "
                          "template (special tokens as the model family expects) and print only the replies")
    run.add_argument("--system", default=None, help="with --chat: a system message before each prompt")
    run.add_argument("--config", default=None, metavar="PATH_OR_HUB_ID",
                     help="a saved generation config (mdm_generation_config.json, its folder or a Hub id); "
                          "the flags below override its fields")
    run.add_argument("--seed", type=_at_least(0), default=0,
                     help="seed of the torch.Generator all randomness comes from (default: 0)")
    run.add_argument("--device", default=None, help="e.g. cuda, cpu (default: the model's default)")
    run.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                     help="model weights' dtype (default: as saved; sampling is float32 either way)")
    run.add_argument("--trust-remote-code", action="store_true", help="needed for LLaDA / Dream checkpoints")
    run.add_argument("--allow-unk", action="store_true",
                     help="accept --prompt text the tokenizer cannot fully encode (those characters become its unknown "
                          "token); without it such a prompt is refused")
    run.add_argument("--out", default=None, metavar="FILE.jsonl",
                     help="write the samples as JSON lines here and the settings, schedule and calls made next to them "
                          "(FILE.record.json); both atomically. Its folder must exist and be writable (checked first)")
    gen = parser.add_argument_group("generation settings (the fields of mdm_sched.MaskedGenerationConfig)")
    for field, spec in cli_fields():
        _config_flag(gen, field, spec)


def _generation_config(args: argparse.Namespace) -> MaskedGenerationConfig:
    """``--config`` (or the defaults) with every flag the user gave; the command's default schedule if none."""
    from mdm_sched.config import MaskedGenerationConfig, cli_fields
    from mdm_sched.validation import is_int

    base = _read_flag_file(MaskedGenerationConfig.from_pretrained, args.config, "--config") if args.config \
        else MaskedGenerationConfig()
    given = {f.name: getattr(args, f.name) for f, _ in cli_fields() if hasattr(args, f.name)}
    if "stop_at_eos" in given:  # --stop-at-eos alone: the model's EOS; one id: that id; several: the list
        ids = given["stop_at_eos"]
        given["stop_at_eos"] = True if not ids else ids[0] if len(ids) == 1 else ids
    cfg = base.replace(**given)
    if cfg.schedule is None:
        cfg = cfg.replace(schedule="constant")
    if cfg.gen_length is None:
        raise ValueError("--gen-length is required (or a --config that sets it)")
    if cfg.gen_length == 0 and not args.prompt:
        raise ValueError("--gen-length 0 only infills the mask tokens of --prompt texts: give --gen-length >= 1, or "
                         "prompts holding mask tokens")
    per_call = cfg.block_length or cfg.gen_length
    if isinstance(cfg.schedule, str) and cfg.steps is None and cfg.schedule in _schedule_names() and is_int(per_call) \
            and per_call >= 1:
        cfg = cfg.replace(steps=per_call)  # one token per call
    if cfg.schedule in ("optimal", "sqrt") and cfg.profile is None:
        raise ValueError(f"--schedule {cfg.schedule} needs --profile (a profile JSON file, its folder or a Hub id; "
                         "make one with `mdm-sched profile`)")
    return cfg


def _read_flag_file(read: Callable[[str], object], path: str, flag: str) -> typing.Any:
    """``read(path)``, with errors (missing, corrupted) prefixed by the flag that named the file."""
    try:
        return read(path)
    except (FileNotFoundError, ValueError) as exc:
        text = str(exc)
        text = text[len(path) + 2:] if text.startswith(f"{path}: ") else text
        raise type(exc)(f"{flag} {path}: {text}") from exc


def _schedule_names() -> tuple[str, ...]:
    from mdm_sched.schedules import BUILDERS

    return BUILDERS


def _chat_messages(args: argparse.Namespace) -> list[list[dict[str, str]]] | None:
    """One conversation per --prompt for --chat (with --system first), else None."""
    if not args.chat:
        if args.system is not None:
            raise ValueError("--system is only used with --chat")
        return None
    if not args.prompt:
        raise ValueError("--chat needs at least one --prompt (each becomes one user message)")
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    return [[*system, {"role": "user", "content": p}] for p in args.prompt]


def generate_command(args: argparse.Namespace) -> int:
    """``mdm-sched generate``: samples to stdout (and ``--out``), with a record of how they were made."""
    import torch

    import mdm_sched as ms
    from mdm_sched._io import atomic_write_json, atomic_write_text

    messages = _chat_messages(args)
    cfg = _generation_config(args)
    _check_generate_paths(args, cfg)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = _load_model(args, device=args.device, dtype=dtype)
    if args.prompt and not messages:
        _check_prompts_encode(model, args.prompt, args.allow_unk)
    out = ms.generate(model, prompts=None if messages else args.prompt, messages=messages, generation_config=cfg,
                      generator=torch.Generator().manual_seed(args.seed), progress=True)
    if messages:  # chat needs a tokenizer: print the replies, not the templated prompts
        texts = model.decode(out.generated)
    elif out.texts is not None:
        texts = out.texts
    else:
        texts = [" ".join(map(str, row)) for row in out.generated.tolist()]
    print(f"# {len(texts)} samples, {out.nfe} model calls, schedule {cfg.schedule}", file=sys.stderr)
    if args.out:
        calls = out.calls_per_row.tolist()
        atomic_write_text(args.out, "".join(json.dumps({"text": t, "calls": c}) + "\n" for t, c in zip(texts, calls)))
        record = {"model": args.model, "prompts": args.prompt, "chat": args.chat, "system": args.system,
                  "seed": args.seed, "samples": os.path.basename(args.out), **out.record()}
        atomic_write_json(_record_path(args.out), record)
    for t in texts:
        print(t)
    return 0


def _check_generate_paths(args: argparse.Namespace, cfg: MaskedGenerationConfig) -> None:
    """Everything ``generate`` reads or writes, before the model loads: the settings (validated), the schedule
    and profile files, ``--out`` and its record, ``--device`` and a ``--model`` path."""
    from mdm_sched.hub import _is_repo_id
    from mdm_sched.validation import check_device, check_output_path

    cfg.validated()
    if cfg.gen_length is None:
        raise ValueError("--gen-length is required (or a --config that sets it)")
    sched = cfg.schedule
    if isinstance(sched, str) and sched not in _schedule_names() and ":" not in sched and _looks_like_path(sched) \
            and not os.path.exists(sched):
        raise FileNotFoundError(f"--schedule {sched} does not exist (expected a saved schedule file or folder, a "
                                f"builder name ({', '.join(_schedule_names())}), sizes or a rule such as threshold:0.9)")
    prof = cfg.profile
    if isinstance(prof, str) and not os.path.exists(prof) and (not _is_repo_id(prof) or prof.endswith(".json")):
        raise FileNotFoundError(f"--profile {prof} does not exist (expected a profile JSON file, its folder or a Hub id)")
    if args.out:
        check_output_path(args.out, "--out")
        check_output_path(_record_path(args.out), "--out (its record file)")
    check_device(args.device, "--device")
    _check_model_arg(args.model)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith(".json") or text.startswith((".", "~"))


def _check_model_arg(name: str) -> None:
    """A ``--model`` that is a path must exist (a Hub id or built-in name is checked when it loads)."""
    from mdm_sched import assets
    from mdm_sched.hub import _is_repo_id

    if name not in assets.BUILTIN_MODELS and not os.path.exists(os.path.expanduser(name)) and not _is_repo_id(name):
        raise FileNotFoundError(f"--model {name} does not exist: give a built-in name "
                                f"({', '.join(assets.BUILTIN_MODELS)}), an existing model folder or a Hub id (owner/name)")


def _load_model(args: argparse.Namespace, **kwargs: object) -> MaskedLM:
    """``load_masked_lm(--model)``; a name that cannot be loaded is an error naming ``--model``."""
    from mdm_sched.models import load_masked_lm

    try:
        return load_masked_lm(args.model, trust_remote_code=args.trust_remote_code, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        text = str(exc)
        if text.startswith(f"model {args.model}"):
            text = text[len(f"model {args.model}"):].lstrip(": ")
        raise type(exc)(f"--model {args.model}: {text}") from exc


def _check_prompts_encode(model: MaskedLM, prompts: list[str], allow_unk: bool) -> None:
    """Refuse ``--prompt`` text with characters the tokenizer cannot encode (unless ``--allow-unk``)."""
    from mdm_sched.canvas import unknown_tokens

    if allow_unk or model.tokenizer is None:
        return
    bad = unknown_tokens(model, prompts)
    if bad:
        raise ValueError(f"--prompt {prompts[bad[0]]!r}: the model's tokenizer cannot encode some of its characters "
                         "(they would become its unknown token); remove them, or pass --allow-unk to accept that")


def _record_path(out: str) -> str:
    """Where the record of ``--out FILE.jsonl`` goes: ``FILE.record.json``."""
    root, ext = os.path.splitext(out)
    return (root if ext in (".jsonl", ".json", ".txt") else out) + ".record.json"


# ------------------------------------------------------------------------------------------------
# mdm-sched profile / mdm-sched schedule
# ------------------------------------------------------------------------------------------------

def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched profile``."""
    from mdm_sched.estimate import DEFAULT_N_LEVELS, DEFAULT_TOKENS_PER_LEVEL

    parser.add_argument("--model", required=True, help="built-in name (antiberty, sapiens-vh, sapiens-vl), "
                        "local directory or hub id")
    parser.add_argument("--data", required=True, help="held-out data: antibody-germlines:SPECIES:CHAIN[:train|test], "
                        "kjv[:train|test], a .txt/.json/.jsonl/.csv/.parquet/.fasta file, or a saved dataset dir")
    parser.add_argument("--text-column", default=None, help="column holding the text (default: input_ids, else text)")
    parser.add_argument("--n-tokens", type=_at_least(1), default=None,
                        help="generated length N (default: the most common sequence length; longer ones are "
                             "cropped to N, shorter dropped)")
    parser.add_argument("--prompt-length", type=_at_least(0), default=0,
                        help="leading tokens of each sequence that are a prompt: always visible, never scored")
    cond = parser.add_argument_group("conditioning (what is always visible) and order")
    cond.add_argument("--prompt-column", default=None,
                      help="prompt/response pairs: the dataset column of prompts (always visible, never scored)")
    cond.add_argument("--response-column", default=None,
                      help="the column of responses (generated and scored; any lengths, taken at equal visible "
                           "fractions)")
    cond.add_argument("--chat", action="store_true",
                      help="render prompts with the tokenizer's chat template (one user message each); without "
                           "--prompt-column: a 'messages' column of conversations, the last (assistant) one scored")
    cond.add_argument("--pad-with-eos", action="store_true",
                      help="pad responses with EOS up to --n-tokens (LLaDA/Dream generate a fixed length)")
    cond.add_argument("--region", default=None, metavar="START:STOP",
                      help="infill content positions START..STOP-1 of every sequence, the rest always visible")
    cond.add_argument("--order", default="random", choices=["random", "confidence", "margin", "entropy"],
                      help="random: the ordinary profile; confidence/margin/entropy: the ordering-aware policy "
                           "profile (teacher forcing along the model's own order)")
    cond.add_argument("--self-samples", type=_at_least(1), default=None, metavar="M",
                      help="self profile (data-free): measure on M samples of the model's own N-call sampler for "
                           "--order instead of the data (--data then only supplies contexts for --region/--prompt-column)")
    parser.add_argument("--levels", type=_at_least(1), default=None, help=f"number of levels (default {DEFAULT_N_LEVELS})")
    parser.add_argument("--batch-size", type=_at_least(1), default=16, help="rows per forward pass (default: 16)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--tokens-per-level", type=_at_least(1), default=None,
                      help=f"scored tokens per level (default {DEFAULT_TOKENS_PER_LEVEL})")
    stop.add_argument("--target-se", type=_positive_float, default=None,
                      help="stop a level once its standard error <= this")
    parser.add_argument("--max-batches", type=_at_least(1), default=None, help="cap on data batches")
    parser.add_argument("--block-length", type=_at_least(1), default=None, help="profile within semi-autoregressive blocks")
    parser.add_argument("--checkpoint", default=None, metavar="FILE.npz",
                        help="resumable partial sums: a binary .npz file, written atomically after every "
                             "round; its folder must exist and be writable (checked first); rerun with the same model "
                             "and arguments to resume")
    parser.add_argument("--seed", type=_at_least(0), default=0)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: this process's GPU if any, else cpu)")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default float32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="needed for LLaDA / Dream checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="where to write the profile: a .json file, or a folder (e.g. the "
                        "model's own; created if its parent exists) that gets mdm_profile.json, loadable with "
                        "InformationProfile.from_pretrained; checked before any work")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also write a PNG plot here")
    parser.add_argument("--gain-steps", default="8,16,32", help="comma-separated budgets for the printed gains")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _check_data_arg(data: str) -> None:
    """A ``--data`` that names a file (a path, or a known file extension) must exist; source specs pass."""
    ext = os.path.splitext(data)[1].lower()
    looks_like_file = _looks_like_path(data) or ext in (".txt", ".json", ".jsonl", ".csv", ".parquet", ".fasta", ".fa")
    if looks_like_file and not os.path.exists(os.path.expanduser(data)):
        raise FileNotFoundError(f"--data {data} does not exist")


def _check_profile_paths(args: argparse.Namespace) -> list[int]:
    """What ``profile`` reads and writes, before the model loads; returns the parsed ``--gain-steps``."""
    from mdm_sched.validation import check_device, check_output_path

    steps = _parse_steps(args.gain_steps)
    _check_model_arg(args.model)
    _check_data_arg(args.data)
    check_output_path(args.out, "--out", folder_ok=not args.out.endswith(".json"))
    if args.plot:
        check_output_path(args.plot, "--plot")
    if args.checkpoint:
        check_output_path(args.checkpoint, "--checkpoint")
    check_device(args.device, "--device")
    return steps


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--gain-steps={text!r}: expected comma-separated integers like 8,16,32") from None


def profile_command(args: argparse.Namespace) -> int:
    """``mdm-sched profile``: estimate (every launched process takes a share), save and summarise (process 0).

    Under ``torchrun`` / ``accelerate launch`` this command owns the processes: it creates their accelerate
    state (gloo on CPU, nccl on GPUs) and destroys the process group before returning.
    """
    import torch

    from mdm_sched.distributed import end_state, launched_state
    from mdm_sched.estimate import estimate_profile

    steps = _check_profile_paths(args)
    cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    state = launched_state(cpu=cpu)
    done = False
    try:
        if state is not None and args.device in (None, "cuda"):
            device = state.device  # this process's own GPU (or the CPU)
        else:
            device = args.device or ("cuda" if torch.cuda.is_available() else None)
        model = _load_model(args, device=device, dtype=args.dtype)
        kw = dict(levels=args.levels, batch_size=args.batch_size, tokens_per_level=args.tokens_per_level,
                  target_se=args.target_se, block_length=args.block_length, seed=args.seed, order=args.order,
                  progress=not args.no_progress, checkpoint=args.checkpoint, max_batches=args.max_batches,
                  accelerator=state)
        data, n_tokens = _profile_data(model, args)
        if args.self_samples is not None:
            from mdm_sched.self_profile import estimate_self_profile

            examples = data if args.region or args.prompt_column or args.chat else None
            profile = estimate_self_profile(model, n_tokens=None if examples is not None else n_tokens,
                                            num_samples=args.self_samples, examples=examples, **kw)
        else:
            profile = estimate_profile(model, data, n_tokens=n_tokens, prompt_length=args.prompt_length,
                                       text_column=args.text_column, **kw)
        if state is None or state.is_main_process:
            _report_profile(profile, args, steps)
        done = True
    finally:
        end_state(state, wait=done)
    return 0


def _profile_data(model: MaskedLM, args: argparse.Namespace) -> tuple[object, int | None]:
    """The data ``mdm-sched profile`` measures on (an Examples object when conditioned) and the n_tokens to pass."""
    from mdm_sched import conditioning, data
    from mdm_sched.estimate import _token_sequences

    if (args.prompt_column or args.chat) and args.region:
        raise ValueError("--region and --prompt-column/--chat are different conditionings: pass one")
    if args.prompt_column or args.response_column or args.chat:
        if args.prompt_length:
            raise ValueError("--prompt-length does not apply to --prompt-column/--chat data (each example has its prompt)")
        ds = data.load_source(args.data)
        pad = model.eos_token_id if args.pad_with_eos else None
        if args.pad_with_eos and (pad is None or args.n_tokens is None):
            raise ValueError("--pad-with-eos needs --n-tokens and a model with an EOS token")
        encode = model.encode if model.tokenizer is not None else None
        if args.chat and not args.prompt_column:
            ex = conditioning.from_chat(ds, model.tokenizer, encode=model.encode, n_tokens=args.n_tokens, pad_id=pad,
                                        description=f"{args.data} (messages, chat template)")
        else:
            if not (args.prompt_column and args.response_column):
                raise ValueError("pass both --prompt-column and --response-column")
            ex = conditioning.from_columns(ds, args.prompt_column, args.response_column, encode=encode,
                                           chat_tokenizer=model.tokenizer if args.chat else None,
                                           n_tokens=args.n_tokens, pad_id=pad,
                                           description=f"{args.data} ({args.prompt_column} -> {args.response_column})")
        return ex, None
    if args.region:
        try:
            start, stop = (int(v) for v in args.region.split(":"))
        except ValueError:
            raise ValueError(f"--region={args.region!r}: expected START:STOP, e.g. 26:65") from None
        seqs, desc = _token_sequences(model, args.data, args.text_column)
        return conditioning.Examples.from_region(seqs, start, stop, description=f"{desc}, region {start}:{stop}"), None
    return args.data, args.n_tokens


def _report_profile(profile: InformationProfile, args: argparse.Namespace, steps: list[int]) -> None:
    """Save (and plot) the profile, print its table and the predicted gains."""
    written = _save_json_value(profile, args.out)
    if args.plot:
        profile.plot(args.plot)
    print(profile.description)
    print(f"wrote {written}" + (f" and {args.plot}" if args.plot else ""))
    _print_profile_table(profile)
    for t in steps:
        if 1 <= t <= profile.n_tokens:
            gain = profile.predicted_gain(t)
            with warnings.catch_warnings():  # the same flatness warning as the gain's, just given
                warnings.simplefilter("ignore", UserWarning)
                calls = profile.predicted_calls_saved(t)
            print(f"predicted gain of the optimal schedule over constant at {t} steps: {gain:.3f}x (constant needs "
                  f"{calls:.2f}x the calls for the same bound)")


def _print_profile_table(profile: InformationProfile, file: TextIO | None = None) -> None:
    file = file or sys.stdout
    print(f"{'visible':>8} {'frac':>6} {'CE':>8} {'SE':>8} {'fit':>8} {'entropy':>8} {'acc':>6} {'tokens':>8}", file=file)
    fit = profile.fitted()
    for k in range(profile.levels.size):
        print(f"{profile.levels[k]:>8d} {profile.fractions[k]:>6.3f} {profile.ce[k]:>8.4f} {profile.se[k]:>8.4f} "
              f"{fit[k]:>8.4f} {profile.entropy[k]:>8.4f} {profile.accuracy[k]:>6.3f} {profile.tokens[k]:>8d}",
              file=file)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched schedule``."""
    parser.add_argument("--profile", required=True, help="the profile: a JSON file written by `mdm-sched profile`, a "
                        "folder holding mdm_profile.json, or a Hub id")
    parser.add_argument("--steps", type=_at_least(1), required=True, help="number of model calls T")
    parser.add_argument("--n-tokens", type=_at_least(1), default=None, help="generation length (default: the profile's)")
    parser.add_argument("--max-tokens-per-step", type=_at_least(1), default=None)
    parser.add_argument("--out", default=None, help="write the optimal schedule here: a .json file, or a folder (created "
                        "if its parent exists) that gets mdm_schedule.json (usable as `generate --schedule FOLDER`)")


def schedule_command(args: argparse.Namespace) -> int:
    """``mdm-sched schedule``: optimal sizes, bounds and predicted gains against constant and cosine."""
    import math

    from mdm_sched import schedules
    from mdm_sched.profile import InformationProfile

    if args.out:
        from mdm_sched.validation import check_output_path

        check_output_path(args.out, "--out", folder_ok=not args.out.endswith(".json"))
    profile = _read_flag_file(InformationProfile.from_pretrained, args.profile, "--profile")
    n = args.n_tokens if args.n_tokens is not None else profile.n_tokens
    curve = profile.curve(n)
    opt = schedules.optimal(curve, args.steps, args.max_tokens_per_step)
    opt = schedules.Schedule(opt.sizes, name="optimal",
                             metadata=dict(opt.metadata, profile=profile.description, profile_file=str(args.profile)))
    rows = [("optimal", opt), ("constant", schedules.constant(n, args.steps)), ("cosine", schedules.cosine(n, args.steps))]
    print(f"{profile.description}\nn_tokens={n}, steps={args.steps}")
    print(f"optimal sizes: {list(opt.sizes)}")
    j_opt = schedules.cost(curve, opt)
    print(f"{'schedule':>10} {'bound (nats/token)':>19} {'cost J':>10} {'J / J(optimal)':>15}")
    for name, s in rows:
        j = schedules.cost(curve, s)
        ratio = j / j_opt if j_opt > 0 else (1.0 if j <= 0 else math.inf)
        print(f"{name:>10} {schedules.nll_bound(curve, s):>19.4f} {j:>10.4f} {ratio:>15.3f}")
    gains = [schedules.cost(curve, s) / j_opt if j_opt > 0 else 1.0 for _, s in rows[1:]]
    print(f"predicted gain of optimal: {gains[0]:.3f}x over constant, {gains[1]:.3f}x over cosine")
    if args.out:
        print(f"wrote {_save_json_value(opt, args.out)}")
    return 0


def _save_json_value(value: Schedule | InformationProfile, out: str) -> str:
    """Save to ``out``: a ``.json`` path is one file (``save``), anything else a folder (``save_pretrained``)."""
    if out.endswith(".json"):
        value.save(out)
        return out
    return str(value.save_pretrained(out))


# ------------------------------------------------------------------------------------------------
# mdm-sched eval / mdm-sched demo: one flag per EvalConfig field, so a flag cannot drift from the config
# ------------------------------------------------------------------------------------------------

def _number_list(text: str, cast: Callable[[str], float], minimum: float, what: str) -> tuple:
    try:
        vals = tuple(cast(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from exc
    if not vals or min(vals) < minimum:
        raise argparse.ArgumentTypeError(f"expected {'positive' if minimum else 'non-negative'} {what}, got {text!r}")
    return vals


def _positive_ints(text: str) -> tuple[int, ...]:
    return _number_list(text, int, 1, "integers")


def _floats(text: str) -> tuple[float, ...]:
    return _number_list(text, float, 0, "numbers")


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
        item = typing.get_args(base)[0]
        convert = _positive_ints if item is int else _floats if item is float else _names
    parser.add_argument(flag, type=_or_none(convert) if optional else convert, default=argparse.SUPPRESS,
                        metavar=field.name.upper(), help=help_text)


def _add_run_arguments(parser: argparse.ArgumentParser, base: EvalConfig, out: str) -> None:
    from mdm_sched.results import EvalConfig

    hints = typing.get_type_hints(EvalConfig)
    for field in dataclasses.fields(EvalConfig):
        _field_flag(parser, field, hints[field.name], getattr(base, field.name))
    parser.add_argument("--no-judge", dest="judge", action="store_const", const=None, default=argparse.SUPPRESS,
                        help="no judge model (same as --judge none)")
    parser.add_argument("--out", default=None, help=f"output folder: report, plots, numbers, caches for resuming "
                                                    f"(default: {out})")
    parser.add_argument("--threads", type=_at_least(1), default=None,
                        help="torch CPU threads for this command (default: torch's, one per core; 1 is fastest on a "
                             "machine busy with other jobs)")


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

    _add_run_arguments(parser, EvalConfig(), "mdm_sched_eval")


def eval_command(args: argparse.Namespace) -> int:
    """``mdm-sched eval``: run the harness with the given settings; prints the summary table."""
    from mdm_sched.results import EvalConfig

    return _run_and_print(_config_from(args, EvalConfig()), args.out or "mdm_sched_eval", args.threads)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mdm-sched demo``: ``--quick`` plus the eval flags, defaulting to the demo's settings."""
    from mdm_sched.harness import DEMO_FULL

    parser.add_argument("--quick", action="store_true",
                        help="Sapiens VH, smaller sizes, infilling IMGT 27-65 (about 2 minutes; defaults of "
                             "mdm_sched.harness.DEMO_QUICK instead of those shown below)")
    _add_run_arguments(parser, DEMO_FULL, "mdm_sched_demo (--quick: mdm_sched_demo_quick)")


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
    from mdm_sched.validation import check_output_path

    check_output_path(out, "--out", folder_ok=True)  # the output folder (created if its parent exists)
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
        flags = {a.dest: a.option_strings[-1] for a in p._actions if a.option_strings and a.dest != "help"}
        p.set_defaults(_flags=flags)
    return parser


#: API argument names whose command-line flag is not the name with dashes.
_ALIASES = {"prompts": "--prompt"}


def flag_names(message: str, flags: dict[str, str]) -> str:
    """``message`` with the API's argument names (``stop_at_eos=5``, ``steps must``, ``EvalConfig.seed``) replaced by
    the flags the user typed (``--stop-at-eos=5``, ``--steps must``, ``--seed``)."""
    import re

    names = {**flags, **{k: v for k, v in _ALIASES.items() if v in flags.values()}}
    for dest in sorted(names, key=len, reverse=True):
        message = re.sub(rf"\bEvalConfig\.{re.escape(dest)}\b", names[dest], message)
        message = re.sub(rf"(?<![\w.\-\[/]){re.escape(dest)}(?=(\[\d+\])?( ?=| must\b| is\b| holds?\b| has\b))",
                         names[dest], message)
    return message


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
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as exc:  # bad input: one line, no traceback
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"mdm-sched {args.command}: error: {flag_names(text, getattr(args, '_flags', {}))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
