"""Benchmark of the generate() loop (a script, not a test).

1. Loop overhead: wall time of ``generate()`` divided by the summed time of *bare* model forwards on the
   very same inputs (recorded during the run, replayed afterwards with full logits). Batch 16,
   gen_length 128, 32 calls, on Sapiens VH (real, 0.57M params: the hardest case for overhead because
   its forward is so cheap) and on a small random LLaDA-shaped model (4 layers, d=256, vocab 1000).
   Target: <= 1.03.
2. Memory and time of full ``[B, L, V]`` logits vs positions-only logits on a tiny random BERT with a
   50k vocabulary, each measured in a fresh subprocess (peak RSS above the RSS after model build).

Ratios are taken within one run; absolute times depend on the machine and its load.

    HF_HUB_OFFLINE=1 .venv/bin/python eval/bench_generate.py [--repeats 3] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mdm_sched as ms
from mdm_sched._io import atomic_write_json

BATCH, GEN_LENGTH, STEPS = 16, 128, 32


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

class SmallLLaDA(nn.Module):
    """Bidirectional transformer with the LLaDA call signature (random weights)."""

    def __init__(self, vocab_size: int = 1000, d: int = 256, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(512, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)
        self.config = SimpleNamespace(model_type="llada", vocab_size=vocab_size, mask_token_id=vocab_size - 1,
                                      max_sequence_length=512)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        pad = None if attention_mask is None else attention_mask == 0
        h = self.body(self.emb(input_ids) + self.pos(pos), src_key_padding_mask=pad)
        return SimpleNamespace(logits=self.lm_head(self.norm(h)))


def big_vocab_bert(vocab_size: int = 50_000, positions_only: bool | None = None):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=256)
    return ms.wrap(BertForMaskedLM(config).eval(), mask_token_id=103, framing=(101, 102), suppress_tokens=[0, 100],
                   positions_only=positions_only)


# --------------------------------------------------------------------------------------------------
# 1. loop overhead
# --------------------------------------------------------------------------------------------------

def _record_calls(model: nn.Module) -> tuple[list, object]:
    calls: list = []

    def hook(module, args, kwargs):
        calls.append(([a.clone() if isinstance(a, torch.Tensor) else a for a in args],
                      {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def loop_overhead(mlm, order: str, repeats: int) -> dict:
    ratios, walls, bares = [], [], []
    ms.generate(mlm, gen_length=GEN_LENGTH, schedule=STEPS, num_samples=BATCH, order=order,
                generator=torch.Generator().manual_seed(0))  # warm-up (also verifies the head shortcut)
    for r in range(repeats):
        calls, handle = _record_calls(mlm.model)
        t0 = time.perf_counter()
        out = ms.generate(mlm, gen_length=GEN_LENGTH, schedule=STEPS, num_samples=BATCH, order=order,
                          generator=torch.Generator().manual_seed(r))
        wall = time.perf_counter() - t0
        handle.remove()
        assert len(calls) == out.nfe == STEPS
        bare = 0.0
        with torch.inference_mode():
            for args, kwargs in calls:
                t0 = time.perf_counter()
                mlm.model(*args, **kwargs)
                bare += time.perf_counter() - t0
        ratios.append(wall / bare)
        walls.append(wall)
        bares.append(bare)
    return {"order": order, "ratio_median": statistics.median(ratios), "ratios": ratios,
            "generate_s": walls, "bare_forward_sum_s": bares}


# --------------------------------------------------------------------------------------------------
# 2. full vs positions-only logits (each in its own process)
# --------------------------------------------------------------------------------------------------

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
    return {"order": order, **res,
            "logits_tensor_mb": full_bytes / 2**20,
            "memory_ratio_full_over_positions": res["full"]["peak_rss_above_model_mb"]
            / max(res["positions"]["peak_rss_above_model_mb"], 1e-9),
            "time_ratio_full_over_positions": res["full"]["seconds"] / res["positions"]["seconds"],
            "same_samples": res["full"]["checksum"] == res["positions"]["checksum"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=["full", "positions"], help=argparse.SUPPRESS)
    parser.add_argument("--order", default="random", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.order)))
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    results: dict = {"batch": BATCH, "gen_length": GEN_LENGTH, "steps": STEPS, "threads": torch.get_num_threads(),
                     "overhead": {}, "memory": []}
    models = {"small-llada-random": ms.wrap(SmallLLaDA().eval())}
    if ms.assets.available().get("sapiens-vh"):
        models["sapiens-vh"] = ms.load_masked_lm("sapiens-vh")
    for name, mlm in models.items():
        results["overhead"][name] = [loop_overhead(mlm, order, args.repeats) for order in ("random", "confidence")]
        for r in results["overhead"][name]:
            print(f"overhead {name:20s} order={r['order']:10s} generate/bare-forward = {r['ratio_median']:.3f} "
                  f"(generate {statistics.median(r['generate_s']):.3f} s, forwards "
                  f"{statistics.median(r['bare_forward_sum_s']):.3f} s)", flush=True)
    for order in ("random", "confidence"):
        m = memory_comparison(order)
        results["memory"].append(m)
        print(f"vocab 50k order={order:10s} full: {m['full']['seconds']:.2f} s, +{m['full']['peak_rss_above_model_mb']:.0f} MB"
              f" | positions-only: {m['positions']['seconds']:.2f} s, +{m['positions']['peak_rss_above_model_mb']:.0f} MB"
              f" | memory x{m['memory_ratio_full_over_positions']:.1f}, time x{m['time_ratio_full_over_positions']:.2f}"
              f", identical samples: {m['same_samples']}", flush=True)
    if args.out is not None:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
