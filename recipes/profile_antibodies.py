"""Recipe: information profiles of the offline antibody models on human germline V genes.

Profiles AntiBERTy on human VH, VK and VL, Sapiens-VH on VH and Sapiens-VL on VK and VL (the
germline "test" split, cropped to a common length), writes ``<out>/<model>_<chain>.json`` and
``.png``, and prints the predicted gain of the optimal schedule over the constant one.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python recipes/profile_antibodies.py --out runs/profiles
    python recipes/profile_antibodies.py --models sapiens-vh --chains H --quick     # ~1 min on 2 CPU cores

Needs ``pip install antiberty==0.1.3`` and ``pip install --no-deps sapiens==1.0.5 anarci==2026.2.13.2``.
The antibody models saw near-germline sequences in training: these germlines are real but not strictly
held out. Rerunning resumes from the checkpoints in ``<out>``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import mdm_sched as ms

#: (model, chain) pairs: each model on the chains it was trained on.
PAIRS = {"antiberty": ("H", "K", "L"), "sapiens-vh": ("H",), "sapiens-vl": ("K", "L")}
#: Generated length per chain: at most the shortest test germline, so nothing is dropped.
N_TOKENS = {"H": 96, "K": 92, "L": 90}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/profiles")
    ap.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--chains", nargs="+", default=["H", "K", "L"], choices=["H", "K", "L"])
    ap.add_argument("--split", default="test", choices=["train", "test", "all"])
    ap.add_argument("--tokens-per-level", type=int, default=4096)
    ap.add_argument("--levels", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", default="8,16,32", help="budgets for the printed gains")
    ap.add_argument("--quick", action="store_true", help="12 levels, 600 tokens per level (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.levels, args.tokens_per_level = 12, 600
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    split = None if args.split == "all" else args.split
    for name in args.models:
        model = ms.load_masked_lm(name)
        for chain in PAIRS[name]:
            if chain not in args.chains:
                continue
            seqs = ms.data.germlines("human", chain, split=split)
            n = min(N_TOKENS[chain], min(len(s) for s in seqs))
            stem = out / f"{name}_{chain}"
            prof = ms.estimate_profile(model, seqs, n_tokens=n, levels=args.levels, batch_size=args.batch_size,
                                       tokens_per_level=args.tokens_per_level, checkpoint=f"{stem}.ckpt",
                                       data_description=f"human V{chain} germlines ({args.split} split, ANARCI)")
            prof.save(f"{stem}.json")
            prof.plot(f"{stem}.png")
            gains = ", ".join(f"T={t}: {prof.predicted_gain(t):.2f}x" for t in steps if t <= n)
            print(f"{name:>10} V{chain} N={n}: CE {prof.ce[0]:.3f} -> {prof.ce[-1]:.3f} nats, "
                  f"accuracy at 85% visible {prof.accuracy[abs(prof.fractions - 0.85).argmin()]:.3f}; "
                  f"predicted gain over constant {gains}  -> {stem}.json/.png", flush=True)


if __name__ == "__main__":
    main()
