"""Benchmark of the generate() loop (a script, not a test). All ratios come from one run of this script.

1. **Loop overhead**: time of ``generate()`` divided by the summed time of the *bare* model forwards it made
   (recorded during the run, replayed afterwards, full logits). A LLaDA-shaped random model (d=256, 4 layers,
   :mod:`bench_models`), batch 16, gen_length 128, 32 calls, at vocabulary 32,000 and 126,464; greedy and
   sampled (temperature 1); confidence and random order; on two paths:

   * ``full-logits``: the model edits its logits after the head, so the LM head cannot be applied at selected
     positions: every call makes ``[B, L, V]`` logits and the loop reads the rows it draws from them;
   * ``positions-only``: the head runs only where logits are needed (random order: the revealed positions;
     confidence order: every candidate), so generate() can cost less than the bare forwards.

   Targets (issue 11): full-logits <= 1.05 at V = 32,000 and <= 1.10 at 126,464; positions-only <= 1.0.
2. **KV cache**: wall time of generate() without a cache and with ``cache="prefix"`` / ``"dual"`` at prompt
   lengths 64, 256 and 1024 (batch 8, gen_length 128, block 32, 8 calls per block, confidence order, greedy),
   and the share of generated tokens equal to the uncached run's. Target: prefix >= 2x at 1024.
3. **Memory** of full ``[B, L, V]`` logits vs positions-only logits on a tiny random BERT with a 50k
   vocabulary, each in a fresh subprocess (peak RSS above the RSS after model build).

Timing: by default one torch thread and **process CPU time** (``--clock cpu``): on a machine shared with other
jobs, wall time mostly measures the neighbours; ``--clock wall --threads 2`` measures wall time instead. Each
timing is the minimum over ``--repeats`` runs.

    HF_HUB_OFFLINE=1 .venv/bin/python eval/bench_generate.py [--repeats 2] [--out results.json]
    .venv/bin/python eval/bench_generate.py --quick      # tiny sizes: a smoke run in seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import SIZES, EditedLogits, LLaDALike

import mdm_sched as ms
from mdm_sched._io import atomic_write_json

BATCH, GEN_LENGTH, STEPS = 16, 128, 32
VOCABS = (32_000, 126_464)
PROMPT_LENGTHS = (64, 256, 1024)
Clock = Callable[[], float]


def _settings(quick: bool) -> dict:
    if quick:
        return {"size": "tiny", "batch": 2, "gen_length": 16, "steps": 4, "vocabs": (512,), "prompts": (8, 32),
                "cache_batch": 2, "block": 8}
    return {"size": "small", "batch": BATCH, "gen_length": GEN_LENGTH, "steps": STEPS, "vocabs": VOCABS,
            "prompts": PROMPT_LENGTHS, "cache_batch": 8, "block": 32}


# --------------------------------------------------------------------------------------------------
# 1. loop overhead
# --------------------------------------------------------------------------------------------------

def _record_calls(model: nn.Module) -> tuple[list, object]:
    calls: list = []

    def hook(module, args, kwargs):
        calls.append(([a.clone() if isinstance(a, torch.Tensor) else a for a in args],
                      {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def overhead(model: ms.MaskedLM, s: dict, order: str, temperature: float, repeats: int, clock: Clock) -> dict:
    """min generate() time / min summed bare-forward time over ``repeats`` runs."""
    module = model.model
    kw = dict(gen_length=s["gen_length"], schedule=s["steps"], num_samples=s["batch"], order=order,
              temperature=temperature)
    ms.generate(model, **{**kw, "gen_length": 8, "schedule": 2}, generator=torch.Generator().manual_seed(0))  # warm-up
    gens, bares = [], []
    for r in range(repeats):
        calls, handle = _record_calls(module)
        t0 = clock()
        out = ms.generate(model, **kw, generator=torch.Generator().manual_seed(r))
        gens.append(clock() - t0)
        handle.remove()
        assert len(calls) == out.nfe == s["steps"]
        bare = 0.0
        with torch.inference_mode():
            for args, kwargs in calls:
                t0 = clock()
                module(*args, **kwargs)
                bare += clock() - t0
        bares.append(bare)
    return {"order": order, "temperature": temperature, "ratio": min(gens) / min(bares), "generate_s": gens,
            "bare_forwards_s": bares}


def overhead_matrix(s: dict, repeats: int, clock: Clock) -> list[dict]:
    rows = []
    for vocab in s["vocabs"]:
        config = dataclasses.replace(SIZES[s["size"]], vocab_size=vocab, mask_token_id=vocab - 1)
        base = LLaDALike(config)
        for path, module in (("full-logits", EditedLogits(base)), ("positions-only", base)):
            mlm = ms.wrap(module)
            for order in ("confidence", "random"):
                for temperature in (0.0, 1.0):
                    r = {"vocab": vocab, "path": path, **overhead(mlm, s, order, temperature, repeats, clock)}
                    rows.append(r)
                    print(f"overhead V={vocab:<7d} {path:14s} order={order:10s} T={temperature:g}  generate/bare = "
                          f"{r['ratio']:.3f}  (generate {min(r['generate_s']):.3f} s, bare forwards "
                          f"{min(r['bare_forwards_s']):.3f} s)", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# 2. KV cache
# --------------------------------------------------------------------------------------------------

def cache_speed(s: dict, repeats: int, clock: Clock) -> list[dict]:
    model = LLaDALike(SIZES[s["size"]])
    vocab = model.config.vocab_size
    rows = []
    for prompt_length in s["prompts"]:
        prompt = torch.randint(0, vocab - 1, (s["cache_batch"], prompt_length), generator=torch.Generator().manual_seed(0))
        kw = dict(gen_length=s["gen_length"], block_length=s["block"], schedule=s["steps"] * s["block"] // s["gen_length"],
                  order="confidence", temperature=0.0)
        times, outs = {}, {}
        for mode in (None, "prefix", "dual"):
            ms.generate(model, prompt[:, :8], **{**kw, "gen_length": s["block"]}, cache=mode)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = clock()
                outs[mode] = ms.generate(model, prompt, **kw, cache=mode)
                best = min(best, clock() - t0)
            times[mode] = best
        row = {"prompt_length": prompt_length, "uncached_s": times[None], "prefix_s": times["prefix"],
               "dual_s": times["dual"], "prefix_speedup": times[None] / times["prefix"],
               "dual_speedup": times[None] / times["dual"], "nfe": outs[None].nfe,
               "prefix_same_tokens": float((outs["prefix"].generated == outs[None].generated).float().mean()),
               "dual_same_tokens": float((outs["dual"].generated == outs[None].generated).float().mean())}
        rows.append(row)
        print(f"cache prompt={prompt_length:<5d} uncached {times[None]:.3f} s | prefix {times['prefix']:.3f} s "
              f"(x{row['prefix_speedup']:.2f}, {row['prefix_same_tokens']:.0%} tokens as uncached) | dual "
              f"{times['dual']:.3f} s (x{row['dual_speedup']:.2f}, {row['dual_same_tokens']:.0%})", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# 3. full vs positions-only logits memory (each in its own process)
# --------------------------------------------------------------------------------------------------

def big_vocab_bert(vocab_size: int = 50_000, positions_only: bool | None = None):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=256)
    return ms.wrap(BertForMaskedLM(config).eval(), mask_token_id=103, framing=(101, 102), suppress_tokens=[0, 100],
                   positions_only=positions_only)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(mode: str, order: str) -> dict:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    mlm = big_vocab_bert(positions_only=False if mode == "full" else None)  # "full": as for a model without a usable head
    with torch.inference_mode():  # touch every weight once so the baseline holds the whole model
        mlm.model(torch.zeros((1, 8), dtype=torch.long))
    base = _rss_bytes()
    t0 = time.perf_counter()
    out = ms.generate(mlm, gen_length=GEN_LENGTH, schedule=STEPS, num_samples=BATCH, order=order,
                      generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"mode": mode, "order": order, "seconds": seconds, "peak_rss_above_model_mb": (peak - base) / 2**20,
            "nfe": out.nfe, "checksum": int(out.sequences.sum())}


def memory_comparison(order: str) -> dict:
    res = {}
    for mode in ("full", "positions"):
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--order", order],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full_bytes = BATCH * (GEN_LENGTH + 2) * 50_000 * 4
    m = {"order": order, **res, "logits_tensor_mb": full_bytes / 2**20,
         "memory_ratio_full_over_positions": res["full"]["peak_rss_above_model_mb"]
         / max(res["positions"]["peak_rss_above_model_mb"], 1e-9),
         "time_ratio_full_over_positions": res["full"]["seconds"] / res["positions"]["seconds"],
         "same_samples": res["full"]["checksum"] == res["positions"]["checksum"]}
    print(f"vocab 50k order={order:10s} full: {m['full']['seconds']:.2f} s, +{m['full']['peak_rss_above_model_mb']:.0f} MB"
          f" | positions-only: {m['positions']['seconds']:.2f} s, +{m['positions']['peak_rss_above_model_mb']:.0f} MB"
          f" | memory x{m['memory_ratio_full_over_positions']:.1f}, time x{m['time_ratio_full_over_positions']:.2f}"
          f", identical samples: {m['same_samples']}", flush=True)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timings are the minimum over this many runs")
    parser.add_argument("--sections", default="overhead,cache,memory", help="comma-separated subset to run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall time")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--vocabs", default=None, help="comma-separated vocabulary sizes for the overhead section "
                        f"(default {','.join(map(str, VOCABS))})")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=["full", "positions"], help=argparse.SUPPRESS)
    parser.add_argument("--order", default="random", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.order)))
        return
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    s = _settings(args.quick)
    if args.vocabs:
        s["vocabs"] = tuple(int(v) for v in args.vocabs.split(","))
    sections = set(args.sections.split(","))
    results: dict = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
                     "threads": torch.get_num_threads(), "clock": args.clock, "repeats": args.repeats}
    if "overhead" in sections:
        results["overhead"] = overhead_matrix(s, args.repeats, clock)
    if "cache" in sections:
        results["cache"] = cache_speed(s, args.repeats, clock)
    if "memory" in sections and not args.quick:
        results["memory"] = [memory_comparison(order) for order in ("random", "confidence")]
    if args.out is not None:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
