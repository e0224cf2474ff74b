"""Recipe: every kind of information profile for one model and data set, with plots and predicted gains.

    python recipes/profile_kinds.py --model antiberty --data antibody-germlines:human:H:train --n-tokens 96 \\
        --region 26:65 --out runs/kinds

Profiles (each saved as ``OUT/<name>.json`` + ``.png``, checkpointed, skipped when already there):

- ``random``: unconditional, random order (the theory's sampler);
- ``region``: region-conditional infilling (``--region START:STOP`` masked, the rest always visible);
- ``region-policy`` / ``policy``: the ordering-aware profile for ``--order`` (default confidence) on the region /
  unconditionally (teacher forcing along the model's own order; one forward per visible count);
- ``region-self`` / ``self``: data-free: the same on the model's own samples from its N-call sampler
  (``--order`` for the region, random order unconditionally).

``OUT/summary.json`` and the printed table give, per budget T, each profile's predicted gain of its optimal
schedule over constant (``J(constant) / J(optimal)``), and the cross-checks that matter for choosing a profile:
the policy profile's predicted cost of constant, of the schedule optimal for the random-order profile and of its
own optimum (the ordered sampler's predicted excess NLL over its N-call version, nats per sequence), and the
held-out profile's cost of the schedule optimal for the self profile.
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.conditioning import Examples

KINDS = ("random", "region", "region-policy", "region-self", "policy", "self")


def _profile(name: str, model: ms.MaskedLM, seqs: list[list[int]], args: argparse.Namespace,
             out: Path) -> ms.InformationProfile:
    """Measure (or load) the profile ``name``."""
    path = out / f"{name}.json"
    if path.exists():
        return ms.InformationProfile.load(path)
    start, stop = (int(v) for v in args.region.split(":"))
    region = Examples.from_region(seqs, start, stop, description=f"{args.data}, region {start}:{stop}")
    kw: dict[str, Any] = dict(batch_size=args.batch_size, seed=args.seed, checkpoint=out / f"{name}.ckpt.npz")
    rows = args.max_rows
    few = max(1, math.ceil(rows / args.batch_size)) if rows else None
    if name == "random":
        prof = ms.estimate_profile(model, seqs, n_tokens=args.n_tokens, levels=args.levels,
                                   tokens_per_level=args.tokens_per_level, data_description=args.data, **kw)
    elif name == "region":
        prof = ms.estimate_profile(model, region, levels=args.levels, tokens_per_level=args.tokens_per_level, **kw)
    elif name == "region-policy":
        prof = ms.estimate_profile(model, region, order=args.order, levels=args.levels, max_batches=few, **kw)
    elif name == "policy":
        prof = ms.estimate_profile(model, seqs, n_tokens=args.n_tokens, order=args.order, levels=args.levels,
                                   max_batches=few, data_description=args.data, **kw)
    elif name == "region-self":
        frames = region.select(torch.arange(len(region)) < (rows or len(region)))
        prof = ms.estimate_self_profile(model, examples=frames, num_samples=len(frames), order=args.order,
                                        levels=args.levels, **kw)
    elif name == "self":
        prof = ms.estimate_self_profile(model, n_tokens=args.n_tokens, num_samples=rows or len(seqs), order="random",
                                        levels=args.levels, tokens_per_level=args.tokens_per_level, **kw)
    else:
        raise ValueError(f"unknown profile kind {name!r}; choose from {', '.join(KINDS)}")
    prof.save(path)
    prof.plot(out / f"{name}.png")
    return prof


def _costs(p: ms.InformationProfile, sched: schedules.Schedule) -> float:
    """The profile's cost ``J`` of a schedule (nats per sequence)."""
    return schedules.cost(p if p.kind == "policy" else p.curve(sched.n_tokens), sched)


def summarize(profiles: dict[str, ms.InformationProfile], steps: list[int]) -> dict[str, Any]:
    """Predicted gains and the cross-profile costs described in the module docstring."""
    out: dict[str, Any] = {"gains": {}, "costs": {}, "policy_vs_random": {}, "self_vs_heldout": {}}
    for name, p in profiles.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flat profiles and J <= 0 make ratios meaningless: the costs say why
            out["gains"][name] = {t: p.predicted_gain(t) for t in steps if t <= p.n_tokens}
        out["costs"][name] = {t: {"constant": _costs(p, schedules.constant(p.n_tokens, t)),
                                  "optimal": _costs(p, schedules.optimal(p, t))} for t in steps if t <= p.n_tokens}
    # costs on the first profile of each pair, of the optimum built from the other one and from itself
    comparisons = [("policy_vs_random", "random-order", "policy", [("region-policy", "region"), ("policy", "random")]),
                   ("self_vs_heldout", "self", "held-out", [("region-policy", "region-self"), ("random", "self")])]
    for key, other_name, own_name, pairs in comparisons:
        for judge, other in pairs:
            if judge in profiles and other in profiles:
                p, o = profiles[judge], profiles[other]
                out[key][judge if key == "policy_vs_random" else other] = {
                    t: {"constant": _costs(p, schedules.constant(p.n_tokens, t)),
                        f"optimal({other_name} profile)": _costs(p, schedules.optimal(o, t, n_tokens=p.n_tokens)),
                        f"optimal({own_name} profile)": _costs(p, schedules.optimal(p, t))}
                    for t in steps if t <= p.n_tokens}
    return out


def _print(summary: dict[str, Any]) -> None:
    for name, gains in summary["gains"].items():
        print(f"{name:>14}: predicted gain over constant " + ", ".join(f"T={t}: {g:.3f}x" for t, g in gains.items()))
        print(f"{'':>14}  cost J (nats/sequence) constant -> optimal " + ", ".join(
            f"T={t}: {c['constant']:.3f} -> {c['optimal']:.3f}" for t, c in summary["costs"][name].items()))
    for section in ("policy_vs_random", "self_vs_heldout"):
        for name, rows in summary[section].items():
            for t, costs in rows.items():
                print(f"{section} {name} T={t}: " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="antiberty")
    ap.add_argument("--data", default="antibody-germlines:human:H:train")
    ap.add_argument("--n-tokens", type=int, default=96)
    ap.add_argument("--region", default="26:65", help="content positions START:STOP to infill (IMGT-like CDR1-FR2-CDR2)")
    ap.add_argument("--order", default="confidence", choices=["confidence", "margin", "entropy"])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--tokens-per-level", type=int, default=768)
    ap.add_argument("--max-rows", type=int, default=52, help="rows walked by policy and self profiles")
    ap.add_argument("--batch-size", type=int, default=52)
    ap.add_argument("--steps", default="4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/kinds")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ms.load_masked_lm(args.model)
    seqs = model.encode(ms.data.load_source(args.data)["text"])
    profiles = {name: _profile(name, model, seqs, args, out) for name in args.kinds.split(",") if name}
    summary = summarize(profiles, [int(t) for t in args.steps.split(",")])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _print(summary)


if __name__ == "__main__":
    main()
