"""GPU benchmark of generate() at LLM scale: tokens/s and peak memory (a script for a lent GPU, not a test).

A LLaDA-shaped model with random weights in bf16 (:class:`bench_models.LLaDALike`: LLaDA-8B's dimensions by
default, ``--size 1b`` for a 1B-class one), driven by

* ``llada-loop``: LLaDA's own sampler, written here from its published description (Nie et al. 2025,
  "low-confidence remasking"): per block the masked count is split evenly over the steps; each step runs the
  whole canvas, draws with float64 Gumbel noise (argmax at temperature 0), takes the float64 softmax
  probability of the draw as confidence and commits each row's most confident positions of the block. The mask
  id is never drawn (as generate() does), so both samplers draw real tokens;
* ``generate``: ``ms.generate(order="confidence")`` with the same settings, without a cache and with
  ``cache="prefix"`` / ``"dual"`` (Fast-dLLM's caches);

each with a constant schedule and with an optimal one (exact DP on a CE curve shaped like real profiles, the same
number of calls). On random weights quality cannot be measured, so "equal quality" is not checked here: the
optimal schedule runs as many calls as the constant one and shows what a non-uniform schedule costs the loop;
the calls a schedule saves at equal quality come from a real model's profile (``ms.estimate_profile``).
Reported per run: seconds, generated tokens/s, model calls, peak GPU memory above the model's, and the share of
generated tokens equal to the LLaDA loop's (the same greedy algorithm without a cache; bf16 near-ties aside).

    python eval/bench_gpu.py                       # on a GPU: LLaDA-8B-like, batch 8, prompt 256, gen 256
    python eval/bench_gpu.py --tiny                # CPU smoke run with tiny sizes (well under a minute)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import SIZES, LLaDALike

import mdm_sched as ms
from mdm_sched._io import atomic_write_json


@torch.no_grad()
def llada_loop(model: nn.Module, prompt: torch.Tensor, gen_length: int, block_length: int, steps: int,
               mask_id: int, temperature: float = 0.0) -> tuple[torch.Tensor, int]:
    """LLaDA's sampler from its description (module docstring); ``steps`` per block. Returns (canvas, calls)."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=torch.long, device=prompt.device)], 1)
    calls = 0
    for lo in range(p, p + gen_length, block_length):
        hi = min(lo + block_length, p + gen_length)
        n = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        quota = n // steps + (torch.arange(steps, device=x.device).unsqueeze(0) < n % steps).long()
        for i in range(steps):
            masked = x == mask_id
            logits = model(x).logits
            calls += 1
            logits[..., mask_id] = float("-inf")
            if temperature > 0:  # Gumbel-max in float64 over the whole vocabulary
                noise = (-torch.log(torch.rand_like(logits, dtype=torch.float64))) ** temperature
                x0 = (logits.double().exp() / noise).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            conf = F.softmax(logits.double(), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            del logits
            conf[:, hi:] = float("-inf")
            conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            for j in range(b):
                idx = torch.topk(conf[j], int(quota[j, i])).indices
                x[j, idx] = x0[j, idx]
    return x, calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[object, float, float | None]:
    """(result, seconds, peak memory in GiB above what was allocated before, or None off CUDA)."""
    _sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
    return out, seconds, peak


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    config = SIZES[args.size]
    model = LLaDALike(config, device=device, dtype=getattr(torch, args.dtype))
    mlm = ms.wrap(model)
    mask = config.mask_token_id
    prompt = torch.randint(0, mask, (args.batch, args.prompt_length), device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    per_block = args.steps * args.block_length // args.gen_length
    curve = 3.0 * torch.exp(-torch.arange(args.block_length, dtype=torch.float64) / (args.block_length / 4))
    schedules = {"constant": ms.schedules.constant(args.block_length, per_block),
                 "optimal": ms.schedules.optimal(curve, per_block)}
    kw = dict(gen_length=args.gen_length, block_length=args.block_length, order="confidence", temperature=0.0)
    ms.generate(mlm, prompt[:, :8], **{**kw, "gen_length": args.block_length}, schedule=2)  # warm-up (head check)
    tokens = args.batch * args.gen_length
    (want, calls), secs, peak = timed(lambda: llada_loop(model, prompt, args.gen_length, args.block_length,
                                                         per_block, mask), device)
    rows = [{"run": "llada-loop", "schedule": "constant", "cache": None, "seconds": secs, "tokens_per_s": tokens / secs,
             "calls": calls, "peak_gib": peak, "same_tokens_as_llada": 1.0}]
    for name, sched in schedules.items():
        for cache in (None, "prefix", "dual"):
            out, secs, peak = timed(lambda s=sched, c=cache: ms.generate(mlm, prompt, schedule=s, cache=c, **kw), device)
            rows.append({"run": "generate", "schedule": name, "cache": cache, "seconds": secs,
                         "tokens_per_s": tokens / secs, "calls": out.nfe, "peak_gib": peak,
                         "same_tokens_as_llada": float((out.generated == want[:, args.prompt_length:]).float().mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: a smoke run")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="model dimensions (default 8b, tiny with --tiny)")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--prompt-length", type=int, default=None)
    parser.add_argument("--gen-length", type=int, default=None)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="model calls in total (over all blocks)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    small = {"size": "tiny", "device": "cpu", "batch": 2, "prompt_length": 16, "gen_length": 32, "block_length": 8,
             "steps": 16}
    large = {"size": "8b", "device": "cuda", "batch": 8, "prompt_length": 256, "gen_length": 256, "steps": 64}
    for key, value in (small if args.tiny else large).items():
        if getattr(args, key) is None or (args.tiny and key == "block_length"):
            setattr(args, key, value)
    if args.gen_length % args.block_length or args.steps % (args.gen_length // args.block_length):
        parser.error("block_length must divide gen_length, and the number of blocks must divide steps")
    rows = run(args)
    for r in rows:
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(f"{r['run']:10s} {r['schedule']:8s} cache={r['cache']!s:6s} {r['seconds']:8.2f} s  "
              f"{r['tokens_per_s']:9.1f} tok/s  calls {r['calls']:4d}  peak {peak:>10s}  "
              f"same tokens as LLaDA's loop {r['same_tokens_as_llada']:.0%}", flush=True)
    if args.out is not None:
        atomic_write_json(args.out, {"settings": {k: str(v) for k, v in vars(args).items()},
                                     "config": dataclasses.asdict(SIZES[args.size]), "rows": rows})
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
