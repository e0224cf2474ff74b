"""Recipe: optimal schedules for an instruct masked diffusion LM on chat data (LLaDA-8B-Instruct, Dream-7B-Instruct).

    # LLaDA: semi-autoregressive blocks of 32, confidence order (its low-confidence remasking)
    python recipes/instruct_gpu.py --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code \\
        --data HuggingFaceH4/ultrachat_200k --split test_sft --gen-length 256 --block-length 32 --steps 8 \\
        --order confidence --out runs/llada-chat
    # Dream: one block, entropy order
    python recipes/instruct_gpu.py --model Dream-org/Dream-v0-Instruct-7B --trust-remote-code \\
        --data HuggingFaceH4/ultrachat_200k --split test_sft --gen-length 128 --steps 16 --order entropy \\
        --out runs/dream-chat

``--data`` is anything :func:`mdm_sched.data.load_source` reads (a hub name where the hub is reachable, a local
``.jsonl``, a saved dataset) with a ``messages`` column of conversations (``[{"role", "content"}, ...]``).
What it does, and what it writes to ``--out``:

1. **Data as deployed.** Each conversation's last (assistant) message is the response; the earlier messages,
   rendered with the tokenizer's chat template (generation prompt added), are the prompt, always visible.
   The response is what the template writes for that message (content and end-of-turn marker), padded with
   EOS to ``--gen-length``: LLaDA/Dream generate a fixed length and fill the tail with EOS. The first
   ``--num-profile`` conversations measure the profiles, the next ``--num-prompts`` prompts are generated from.
2. **Conditional profiles** (``profile_random.json``, ``profile_<order>.json`` + PNGs): the random-order profile
   and the ordering-aware policy profile of ``--order`` (teacher forcing along the model's ranking), both
   conditioned on each prompt and measured within ``--block-length`` blocks.
3. **Schedules** for ``--steps`` calls per block (``schedules.json``): constant (LLaDA's default), cosine,
   optimal for the random-order profile and optimal for the policy profile, with each one's predicted excess
   loss under the policy profile (the sampler ``--order`` actually runs).
4. **Generation** (``samples.jsonl``): every schedule on the held-out prompts, order ``--order``, temperature
   ``--temperature`` (0 = LLaDA's greedy chat default), with the calls made.

The weights load in bfloat16 on the GPU (``--dtype``). Nothing here downloads on machines without hub access:
point ``--model``/``--data`` at local copies there. Quality comparisons at matched calls belong to the eval
harness; this recipe shows the whole path and the predicted gains.
"""
from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched._io import atomic_write_json, atomic_write_text
from mdm_sched.conditioning import Examples, chat_pair


def chat_examples(model: ms.MaskedLM, conversations: Sequence[Sequence[Mapping[str, str]]], *, gen_length: int,
                  max_prompt_tokens: int) -> tuple[Examples, list[list[int]]]:
    """Profile examples (prompt visible, EOS-padded response generated) and the prompts' ids, in data order;
    conversations whose prompt is too long or whose last message is not the assistant's are skipped."""
    if model.eos_token_id is None:
        raise ValueError("the model has no EOS token: responses cannot be padded as the model generates them")
    prompts, responses = [], []
    for conv in conversations:
        conv = list(conv)
        if len(conv) < 2 or conv[-1].get("role") != "assistant":
            continue
        prompt, response = chat_pair(model.tokenizer, conv)
        p_ids, r_ids = model.encode([prompt, response])
        if len(p_ids) <= max_prompt_tokens:
            prompts.append(p_ids)
            responses.append(r_ids)
    if not prompts:
        raise ValueError("no usable conversation (last message from the assistant, prompt within max_prompt_tokens)")
    ex = Examples.from_pairs(prompts, responses, n_tokens=gen_length, pad_id=model.eos_token_id,
                             description=f"{len(prompts)} chat conversations (template, EOS-padded to {gen_length})")
    return ex, prompts


def run(model: ms.MaskedLM, conversations: Sequence[Sequence[Mapping[str, str]]], out: Path, *, gen_length: int,
        steps: int, order: str = "confidence", block_length: int | None = None, num_profile: int = 256,
        num_prompts: int = 8, max_prompt_tokens: int = 512, batch_size: int = 8, levels: int = 32,
        tokens_per_level: int = 4096, temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Profiles, schedules and samples for ``model`` on ``conversations`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    ex, prompts = chat_examples(model, conversations, gen_length=gen_length, max_prompt_tokens=max_prompt_tokens)
    if len(ex) <= num_prompts:
        raise ValueError(f"{len(ex)} usable conversations: need more than num_prompts={num_prompts}")
    held = ex.select(torch.arange(len(ex)) < min(num_profile, len(ex) - num_prompts))
    kw = dict(block_length=block_length, levels=levels, batch_size=batch_size, seed=seed, progress=progress)
    profiles = {"random": ms.estimate_profile(model, held, tokens_per_level=tokens_per_level,
                                              checkpoint=out / "profile_random.ckpt.npz", **kw),
                order: ms.estimate_profile(model, held, order=order, checkpoint=out / f"profile_{order}.ckpt.npz", **kw)}
    for name, prof in profiles.items():
        prof.save(out / f"profile_{name}.json")
        prof.plot(out / f"profile_{name}.png")
    policy, n = profiles[order], profiles[order].n_tokens
    scheds = {"constant": schedules.constant(n, steps), "cosine": schedules.cosine(n, steps),
              "optimal(random-order profile)": schedules.optimal(profiles["random"], steps),
              f"optimal({order} profile)": schedules.optimal(policy, steps)}
    table = {name: {"sizes": list(s.sizes), "predicted_excess_nats": schedules.cost(policy, s),
                    "predicted_nll_per_token": policy.bound(s)} for name, s in scheds.items()}
    atomic_write_json(out / "schedules.json", table)
    lines = []
    for name, sched in scheds.items():
        with warnings.catch_warnings():
            # the random-order schedule under an ordered sampler is the deliberate baseline: no mismatch warning
            warnings.filterwarnings("ignore", message="the profile behind this schedule")
            gen = ms.generate(model, prompts=prompts[-num_prompts:], gen_length=gen_length, block_length=block_length,
                              schedule=sched, order=order, temperature=temperature,
                              generator=torch.Generator().manual_seed(seed))
        lines += [json.dumps({"schedule": name, "nfe": gen.nfe, "text": t}) + "\n" for t in (gen.texts or [])]
    atomic_write_text(out / "samples.jsonl", "".join(lines))
    return {"profiles": profiles, "schedules": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or local directory of the instruct model")
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--data", required=True, help="conversations with a 'messages' column (hub name, .jsonl, dataset dir)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--messages-column", default="messages")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=None)
    ap.add_argument("--steps", type=int, default=8, help="model calls per block")
    ap.add_argument("--order", default="confidence", choices=["confidence", "margin", "entropy"])
    ap.add_argument("--num-profile", type=int, default=256)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-prompt-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--levels", type=int, default=32)
    ap.add_argument("--tokens-per-level", type=int, default=4096)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    model = ms.load_masked_lm(args.model, trust_remote_code=args.trust_remote_code, device="cuda" if cuda else "cpu",
                              dtype=args.dtype if cuda else "float32")
    ds = ms.data.load_source(args.data, split=args.split)
    n = min(len(ds), 4 * (args.num_profile + args.num_prompts))  # enough after filtering, without reading everything
    res = run(model, ds.select(range(n))[args.messages_column], Path(args.out), gen_length=args.gen_length,
              steps=args.steps, order=args.order, block_length=args.block_length, num_profile=args.num_profile,
              num_prompts=args.num_prompts, max_prompt_tokens=args.max_prompt_tokens, batch_size=args.batch_size,
              levels=args.levels, tokens_per_level=args.tokens_per_level, temperature=args.temperature, seed=args.seed)
    for name, row in res["schedules"].items():
        print(f"{name:>32}: sizes {row['sizes']}, predicted excess {row['predicted_excess_nats']:.3f} nats, "
              f"NLL {row['predicted_nll_per_token']:.4f} nats/token")


if __name__ == "__main__":
    main()
