"""Recipe: information profile of a large masked LM (LLaDA, Dream, or a BERT) on your own data, on GPUs.

    # one GPU
    python recipes/profile_llm_gpu.py --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code \
        --data my_heldout.jsonl --prompt-column prompt --text-column completion \
        --prompt-length 64 --n-tokens 256 --pad-with-eos --block-length 32 --out llada_profile.json
    # all GPUs of a node (data parallel, identical result)
    accelerate launch --config_file recipes/accelerate_gpu.yaml recipes/profile_llm_gpu.py ...same arguments...

    # a BERT-style model on plain text
    python recipes/profile_llm_gpu.py --model answerdotai/ModernBERT-base --data heldout.txt --n-tokens 128 \
        --out modernbert_profile.json

Data (anything ``mdm_sched.data.load_source`` reads: .txt/.json/.jsonl/.csv/.parquet, a saved dataset,
a hub name) is formatted as in deployment:

- ``--prompt-column``: each example is the last ``--prompt-length`` tokens of its prompt (always
  visible, never scored; examples with shorter prompts are dropped) followed by the first
  ``--n-tokens`` tokens of its completion. Use ``--chat-template`` to wrap the prompt with the
  tokenizer's chat template first (instruct models).
- ``--pad-with-eos``: completions shorter than ``--n-tokens`` are padded with EOS, as LLaDA/Dream
  generate a fixed length and fill the tail with EOS; without it they are dropped.
- ``--block-length``: semi-autoregressive generation in blocks (LLaDA's ``block_length``): the
  profile is measured within a block, earlier blocks visible, later ones masked.

The weights load in bfloat16 (``--dtype``); the cross-entropy is computed in float32. Progress is
checkpointed to ``<out>.ckpt`` (an .npz file) and a rerun resumes. Weights cannot be downloaded on machines
without hub access: point ``--model`` at a local directory there.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import TYPE_CHECKING

import torch

import mdm_sched as ms
from mdm_sched.distributed import end_state, launched_state

if TYPE_CHECKING:
    from accelerate import PartialState


def _examples(model: ms.MaskedLM, args: argparse.Namespace) -> list[list[int]]:
    ds = ms.data.load_source(args.data, split=args.split)
    if args.text_column is None and "text" not in ds.column_names:
        raise SystemExit(f"--text-column is required: columns are {ds.column_names}")
    completions = model.encode(list(ds[args.text_column or "text"]))
    if args.prompt_column is None:
        prompts = [[] for _ in completions]
    else:
        texts = list(ds[args.prompt_column])
        if args.chat_template:
            tok = model.tokenizer
            texts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                             tokenize=False) for t in texts]
        prompts = model.encode(texts)
    eos = model.eos_token_id
    if args.pad_with_eos and eos is None:
        raise SystemExit("--pad-with-eos: the model has no EOS token id")
    out, short_prompt = [], 0
    for p, c in zip(prompts, completions):
        if len(p) < args.prompt_length:
            short_prompt += 1
            continue
        c = c[:args.n_tokens]
        if args.pad_with_eos:
            c = c + [eos] * (args.n_tokens - len(c))
        out.append((p[len(p) - args.prompt_length:] if args.prompt_length else []) + c)
    if short_prompt:
        warnings.warn(f"{short_prompt} examples dropped: prompt shorter than --prompt-length={args.prompt_length}", stacklevel=2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--family", default=None, choices=[None, "bert", "llada", "dream"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--text-column", default=None)
    ap.add_argument("--prompt-column", default=None)
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument("--prompt-length", type=int, default=0)
    ap.add_argument("--n-tokens", type=int, required=True)
    ap.add_argument("--pad-with-eos", action="store_true")
    ap.add_argument("--block-length", type=int, default=None)
    ap.add_argument("--levels", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens-per-level", type=int, default=None)
    ap.add_argument("--target-se", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    # Under `accelerate launch` / torchrun: this script owns the processes, so it creates their state
    # (one GPU each, nccl) and destroys the process group at the end; None for a single process.
    state = launched_state(cpu=not torch.cuda.is_available())
    done = False
    try:
        prof = _estimate(args, state)
        if state is None or state.is_main_process:
            _report(prof, args)
        done = True
    finally:
        end_state(state, wait=done)  # no barrier after an error: the others may never reach it


def _estimate(args: argparse.Namespace, state: PartialState | None) -> ms.InformationProfile:
    cuda = torch.cuda.is_available()
    device = state.device if state is not None else ("cuda" if cuda else "cpu")
    dtype = args.dtype if cuda else "float32"  # bfloat16 matmuls on CPU are slow
    model = ms.load_masked_lm(args.model, trust_remote_code=args.trust_remote_code, device=device, dtype=dtype,
                              family=args.family)
    seqs = _examples(model, args)
    return ms.estimate_profile(model, seqs, n_tokens=args.n_tokens, prompt_length=args.prompt_length,
                               block_length=args.block_length, levels=args.levels, batch_size=args.batch_size,
                               tokens_per_level=args.tokens_per_level, target_se=args.target_se, seed=args.seed,
                               checkpoint=args.out + ".ckpt", data_description=f"{args.data} ({args.text_column})",
                               accelerator=state)


def _report(prof: ms.InformationProfile, args: argparse.Namespace) -> None:
    prof.save(args.out)
    prof.plot(os.path.splitext(args.out)[0] + ".png")
    print(prof.description)
    for t in (8, 16, 32, 64):
        if t <= prof.n_tokens:
            print(f"steps={t}: predicted gain of the optimal schedule over constant {prof.predicted_gain(t):.3f}x")


if __name__ == "__main__":
    main()
