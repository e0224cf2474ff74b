"""Benchmark profile estimation: forwards and wall time to a target standard error, overhead over bare
forwards, and 2 processes against 1.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python eval/bench_profile.py --out eval/results/bench_profile.json

Parts:
  A. ``estimate_profile(model, human VH germlines, target_se=...)`` within a budget of ``--max-batches``
     batches; reports forwards, wall time, scored tokens/s, the Monte Carlo SE reached per level and,
     where the target was not reached, the forwards it would take (SE shrinks as 1/sqrt(rows)).
  B. The same forward shapes run bare (``MaskedLM.logits`` with positions, nothing else): the
     estimator's throughput relative to bare forwards.
  C. A fixed-token profile with 1 process and with 2 processes (torchrun, gloo on CPU): wall times and
     whether the profiles are identical.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import mdm_sched as ms
from mdm_sched.profile import InformationProfile, estimate_profile


def _data(chain: str) -> list[str]:
    return ms.data.germlines("human", chain)


def part_a(args: argparse.Namespace, model) -> dict:
    seqs = _data(args.chain)
    t0 = time.perf_counter()
    prof = estimate_profile(model, seqs, n_tokens=args.n_tokens, levels=args.levels, batch_size=args.batch_size,
                            target_se=args.target_se, max_batches=args.max_batches, checkpoint_every=1,
                            progress=args.progress)
    wall = time.perf_counter() - t0
    mc = np.asarray(prof.metadata["mc_se"], dtype=float)
    # rows needed per level for SE <= target, from the observed per-row spread
    need_rows = np.ceil(prof.rows * np.maximum(mc / args.target_se, 1.0) ** 2)
    need_fwd_per_level = np.ceil(need_rows / args.batch_size)
    fwd = prof.metadata["forwards"]
    return {"forwards": fwd, "wall_s": wall, "s_per_forward": wall / fwd,
            "scored_tokens": int(prof.tokens.sum()), "tokens_per_s": float(prof.tokens.sum() / wall),
            "levels": prof.levels.tolist(), "ce": prof.ce.tolist(), "se_clustered": prof.se.tolist(),
            "mc_se": mc.tolist(), "rows": prof.rows.tolist(),
            "levels_reaching_target": int((mc <= args.target_se).sum()),
            "projected_forwards_to_target": int(need_fwd_per_level.sum()),
            "projected_wall_s_to_target": float(need_fwd_per_level.sum() * wall / fwd),
            "sequences": prof.metadata["sequences"]}, prof


def part_b(args: argparse.Namespace, model, prof: InformationProfile) -> dict:
    """Bare positions-only forwards with the same shapes (rows x masked count) as part A."""
    x = torch.tensor([s[:args.n_tokens] for s in model.encode(_data(args.chain)) if len(s) >= args.n_tokens])
    x = x[: args.batch_size]
    g = torch.Generator().manual_seed(0)
    n_fwd, tokens = 0, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for level, rows in zip(prof.levels.tolist(), prof.rows.tolist()):
            reps = max(1, math.ceil(rows / args.batch_size))
            for _ in range(reps):
                masked = torch.rand(x.shape, generator=g).argsort(1).argsort(1) >= level
                model.logits(x.masked_fill(masked, model.mask_token_id), positions=masked)
                n_fwd += 1
                tokens += int(masked.sum())
    wall = time.perf_counter() - t0
    return {"forwards": n_fwd, "wall_s": wall, "s_per_forward": wall / n_fwd, "tokens_per_s": tokens / wall}


_WORKER = """
import sys, time, torch
sys.path.insert(0, {root!r})
import mdm_sched as ms
from mdm_sched.distributed import end_state, launched_state
from mdm_sched.profile import estimate_profile
torch.set_num_threads({threads})
state = launched_state(cpu=True)  # gloo under torchrun; None for one process
model = ms.load_masked_lm({model!r})
seqs = ms.data.germlines("human", {chain!r})
t0 = time.perf_counter()
p = estimate_profile(model, seqs, n_tokens={n}, levels={levels}, batch_size={bs}, tokens_per_level={tpl},
                     progress=False, checkpoint_every=2, accelerator=state)
wall = time.perf_counter() - t0
if state is None or state.is_main_process:
    p.save(sys.argv[1])
    print("WALL", wall)
end_state(state)
"""


def part_c(args: argparse.Namespace) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        results = {}
        for procs in (1, 2):
            script.write_text(_WORKER.format(root=str(Path(__file__).resolve().parents[1]), threads=1,
                                             model=args.model, chain=args.chain, n=args.n_tokens, levels=args.levels,
                                             bs=args.batch_size, tpl=args.dp_tokens_per_level))
            path = Path(tmp) / f"p{procs}.json"
            cmd = [sys.executable, str(script), str(path)] if procs == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                str(script), str(path)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            total = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-3000:])
            inner = float(next(l.split()[1] for l in res.stdout.splitlines() if l.startswith("WALL")))
            results[procs] = InformationProfile.load(path)
            out[f"{procs}_process"] = {"estimate_wall_s": inner, "total_wall_s_incl_startup": total,
                                       "forwards": results[procs].metadata["forwards"]}
        out["identical"] = bool(results[1] == results[2])
        out["max_abs_ce_diff"] = float(np.abs(results[1].ce - results[2].ce).max())
        out["speedup"] = out["1_process"]["estimate_wall_s"] / out["2_process"]["estimate_wall_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="antiberty")
    ap.add_argument("--chain", default="H")
    ap.add_argument("--n-tokens", type=int, default=96)
    ap.add_argument("--levels", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--target-se", type=float, default=2e-3)
    ap.add_argument("--max-batches", type=int, default=12, help="budget for part A (the full target may need far more)")
    ap.add_argument("--dp-tokens-per-level", type=int, default=1000, help="part C stop criterion")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-dp", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="eval/results/bench_profile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ms.load_masked_lm(args.model)
    report = {"command": " ".join(sys.argv), "model": args.model, "data": f"human V{args.chain} germlines (ANARCI)",
              "torch_threads": args.threads, "cpu_count": os.cpu_count()}
    report["A_target_se"], prof = part_a(args, model)
    print(json.dumps(report["A_target_se"], indent=1)[:2000], flush=True)
    report["B_bare_forwards"] = part_b(args, model, prof)
    report["B_relative_throughput"] = report["A_target_se"]["tokens_per_s"] / report["B_bare_forwards"]["tokens_per_s"]
    print("B", report["B_bare_forwards"], "relative", report["B_relative_throughput"], flush=True)
    if not args.skip_dp:
        report["C_data_parallel"] = part_c(args)
        print("C", report["C_data_parallel"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from mdm_sched._io import atomic_write_json

    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
