"""The evaluation harness behind ``mdm-sched eval`` and ``mdm-sched demo``.

One run, for a model, a profile fitted on one split and an evaluation split (THEORY.md sections 3, 6):

1. fixed generation length ``N`` (default: the median length of the data; shorter sequences are
   dropped, longer ones cropped to their first ``N`` tokens);
2. the profile on the profile split (``estimate_profile``), cached as ``profile.json``;
3. schedules (constant, cosine, geometric, optimal, sqrt by default) for every budget ``T``;
4. held-out metrics on the evaluation split, all schedules at once with common random orders:
   the bound ``NLL_T`` and the ``M``-order estimate (cached as ``cache/heldout.json``);
5. for each (order, schedule, T): samples, then path KL to the N-step sampler (random order only),
   k-mer and per-position JS divergences to the evaluation split, and a judge model's pseudo-log-likelihood
   (each cached as ``cache/samples/<order>_<schedule>_T<T>.json``: a rerun skips finished parts);
6. reference samplers (1 call, N calls) for the sensitivity check; verdicts; calls saved;
   ``results.json``, ``results.csv``, PNG plots and ``report.md`` (:mod:`mdm_sched.report`);
   optionally the exact-oracle theory table (:func:`oracle_theory`).

``mdm-sched demo`` runs this on AntiBERTy with human VH germlines (judge: Sapiens VH); ``--quick`` on
Sapiens VH (judge: AntiBERTy) with smaller sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics, report
from . import schedules as _schedules
from ._io import atomic_write_json, atomic_write_text, read_json

__all__ = ["EvalConfig", "run_eval", "oracle_theory", "prepare_sequences", "add_eval_arguments", "eval_command",
           "add_demo_arguments", "demo_command", "DEMO_FULL", "DEMO_QUICK", "main"]

DEFAULT_SCHEDULES = ("constant", "cosine", "geometric", "optimal", "sqrt")


@dataclasses.dataclass
class EvalConfig:
    """Everything a run depends on (stored in ``results.json``; caches are keyed on the relevant parts).

    Cost knobs (model rows evaluated): profile ``profile_levels x profile_tokens_per_level / (N/2)``;
    held-out ``|union of block starts| x n_orders x n_eval``; generation ``sum(T) x num_samples`` per
    schedule and order; path KL ``path_kl_levels x num_samples`` per config (``None``: ``N - T``);
    judge ``judge_positions x num_samples`` per config: ``judge_positions`` forwards per sample, each scoring
    15% randomly masked positions (``None``: the exact pseudo-log-likelihood, ``N`` forwards per sample).
    """

    model: str = "antiberty"
    judge: str | None = "sapiens-vh"
    data: str = "antibody-germlines:human:H"
    profile_split: str = "train"
    eval_split: str = "test"
    n_tokens: int | None = None
    budgets: tuple[int, ...] = (5, 10, 15, 30)
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    orders: tuple[str, ...] = ("random", "confidence")
    confidence_budgets: tuple[int, ...] | None = None
    num_samples: int = 32
    n_orders: int = 2
    max_eval_sequences: int | None = None
    path_kl_levels: int | None = 8
    judge_positions: int | None = 16
    profile_levels: int = 32
    profile_tokens_per_level: int = 2048
    reference_budget: int | None = None
    sensitivity_z: float = 5.0
    batch_size: int = 64
    seed: int = 0
    theory: bool = False
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEMO_FULL = EvalConfig(num_samples=16, n_orders=2, max_eval_sequences=32, path_kl_levels=4, judge_positions=2,
                       confidence_budgets=(10,), profile_levels=24, profile_tokens_per_level=1536, theory=True,
                       threads=1)
DEMO_QUICK = EvalConfig(model="sapiens-vh", judge="antiberty", budgets=(4, 8, 16), num_samples=32, n_orders=2,
                        max_eval_sequences=64, path_kl_levels=8, judge_positions=1, confidence_budgets=(8,), threads=1,
                        profile_levels=24, profile_tokens_per_level=2048, theory=True)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------

def prepare_sequences(seqs: Sequence[Sequence[int]], n_tokens: int | None) -> tuple[torch.Tensor, int]:
    """Fixed-length token ids: drop sequences shorter than ``n_tokens`` (default: median length), crop the rest."""
    lengths = np.array([len(s) for s in seqs])
    if lengths.size == 0:
        raise ValueError("no sequences: the data split is empty")
    n = int(np.median(lengths)) if n_tokens is None else int(n_tokens)
    if n < 2:
        raise ValueError(f"n_tokens={n}: need at least 2 tokens to generate")
    kept = [list(s[:n]) for s in seqs if len(s) >= n]
    if not kept:
        raise ValueError(f"n_tokens={n} is longer than every sequence (longest {lengths.max()}); use a smaller n_tokens")
    return torch.tensor(kept, dtype=torch.long), n


def _load_split(model: Any, spec: str, split: str) -> tuple[list[list[int]], str]:
    from . import data

    ds = data.load_source(spec, split=split)
    return data.token_sequences(ds, model), f"{spec}:{split}"


# --------------------------------------------------------------------------------------------------
# caching helpers
# --------------------------------------------------------------------------------------------------

def _seed_of(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode()) & 0x7FFFFFFF


def _cached(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = read_json(path, what="cache")
    except ValueError:
        return None
    return obj if obj.get("fingerprint") == json.loads(json.dumps(fingerprint, default=str)) else None


def _store(path: Path, fingerprint: dict[str, Any], payload: dict[str, Any]) -> None:
    atomic_write_json(path, {"fingerprint": json.loads(json.dumps(fingerprint, default=str)), **payload})


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

def _row(metric: str, order: str, schedule: str, t: int, value: float, se: float, **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "order": order, "schedule": schedule, "T": int(t), "value": float(value),
            "se": float(se), **extra}


class _Run:
    """State of one harness run (models, data, caches); methods are the pipeline's stages."""

    def __init__(self, cfg: EvalConfig, out: Path, log: Callable[[str], None], progress: bool) -> None:
        import mdm_sched as ms

        self.cfg, self.out, self.log, self.progress = cfg, out, log, progress
        self.cache = out / "cache"
        self.forward_rows = 0
        t0 = time.time()
        self.model = ms.load_masked_lm(cfg.model) if isinstance(cfg.model, str) else ms.wrap(cfg.model)
        self.judge = None
        if cfg.judge:
            self.judge = ms.load_masked_lm(cfg.judge) if isinstance(cfg.judge, str) else ms.wrap(cfg.judge)
        prof_ids, self.prof_desc = _load_split(self.model, cfg.data, cfg.profile_split)
        eval_ids, self.eval_desc = _load_split(self.model, cfg.data, cfg.eval_split)
        self.eval_x, self.n = prepare_sequences(eval_ids, cfg.n_tokens)
        self.prof_x, _ = prepare_sequences(prof_ids, self.n)
        if cfg.max_eval_sequences is not None and self.eval_x.shape[0] > cfg.max_eval_sequences:
            g = torch.Generator().manual_seed(_seed_of("eval-subset", cfg.seed))
            keep = torch.randperm(self.eval_x.shape[0], generator=g)[:cfg.max_eval_sequences].sort().values
            self.eval_x = self.eval_x[keep]
        self.base_fp = {"model": str(cfg.model), "config_hash": self.model.config_hash, "n": self.n,
                        "data": cfg.data, "eval_split": cfg.eval_split, "seed": cfg.seed,
                        "n_eval": int(self.eval_x.shape[0])}
        self.log(f"[harness] {cfg.model}: N={self.n}, profile split {self.prof_x.shape[0]} seqs, eval split "
                 f"{self.eval_x.shape[0]} seqs (loaded in {time.time() - t0:.0f} s)")

    # -- profile -----------------------------------------------------------------------------------
    def profile(self) -> Any:
        from .profile import InformationProfile, estimate_profile

        path = self.out / "profile.json"
        fp = {**self.base_fp, "split": self.cfg.profile_split, "levels": self.cfg.profile_levels,
              "tokens_per_level": self.cfg.profile_tokens_per_level}
        meta_path = self.cache / "profile.fingerprint.json"
        if path.is_file() and _cached(meta_path, fp) is not None:
            self.log("[harness] profile: cached")
            return InformationProfile.load(path)
        t0 = time.time()
        prof = estimate_profile(self.model, [r.tolist() for r in self.prof_x], n_tokens=self.n,
                                levels=self.cfg.profile_levels, tokens_per_level=self.cfg.profile_tokens_per_level,
                                batch_size=self.cfg.batch_size, seed=self.cfg.seed, progress=self.progress,
                                checkpoint=self.cache / "profile.checkpoint.json",
                                data_description=self.prof_desc)
        prof.save(path)
        _store(meta_path, fp, {"seconds": time.time() - t0})
        self.log(f"[harness] profile: {time.time() - t0:.0f} s")
        return prof

    # -- schedules ---------------------------------------------------------------------------------
    def build_schedules(self, curve: np.ndarray) -> dict[tuple[str, int], _schedules.Schedule]:
        out = {}
        for t in self.cfg.budgets:
            for name in self.cfg.schedules:
                out[(name, t)] = _schedules.build(name, self.n, t, curve)
        return out

    # -- held-out ----------------------------------------------------------------------------------
    def heldout(self, scheds: dict[tuple[str, int], _schedules.Schedule]) -> list[dict[str, Any]]:
        keyed = {f"{name}@T={t}": s for (name, t), s in scheds.items()}
        fp = {**self.base_fp, "what": "heldout", "n_orders": self.cfg.n_orders,
              "schedules": {k: list(s.sizes) for k, s in keyed.items()}}
        path = self.cache / "heldout.json"
        hit = _cached(path, fp)
        if hit is None:
            t0 = time.time()
            g = torch.Generator().manual_seed(_seed_of("heldout", self.cfg.seed))
            res = metrics.heldout_likelihood(self.model, self.eval_x, keyed, n_orders=self.cfg.n_orders,
                                             generator=g, batch_size=self.cfg.batch_size)
            per_seq = {k: v.tolist() for k, v in res.logq.items()}
            _store(path, fp, {"logq": per_seq, "n_tokens": res.n_tokens, "rows": res.n_forward_rows,
                              "seconds": time.time() - t0})
            self.forward_rows += res.n_forward_rows
            self.log(f"[harness] held-out: {res.n_forward_rows} rows in {time.time() - t0:.0f} s")
            hit = _cached(path, fp)
        res = metrics.HeldoutResult(logq={k: torch.tensor(v, dtype=torch.float64) for k, v in hit["logq"].items()},
                                    n_tokens=hit["n_tokens"], n_forward_rows=hit["rows"])
        rows = []
        for t in self.cfg.budgets:
            sub = metrics.HeldoutResult(logq={n: res.logq[f"{n}@T={t}"] for n in self.cfg.schedules},
                                        n_tokens=res.n_tokens, n_forward_rows=0)
            base = "constant" if "constant" in self.cfg.schedules else None
            summ = metrics.summarize_heldout(sub, baseline=base)
            for name, s in summ.items():
                for metric in ("bound", "nll_M"):
                    extra = {}
                    if base is not None:
                        extra["paired_with_constant"] = (s[f"{metric}_diff"], s[f"{metric}_diff_se"])
                    rows.append(_row(metric, "random", name, t, s[metric], s[f"{metric}_se"], **extra))
        return rows

    # -- samples -----------------------------------------------------------------------------------
    def _judge_pll(self, ids: torch.Tensor, key: str) -> tuple[float, float]:
        if self.judge is None:
            return float("nan"), float("nan")
        texts = self.model.decode(ids)
        enc = self.judge.encode(texts)
        x = torch.tensor(enc, dtype=torch.long) if len({len(e) for e in enc}) == 1 else None
        if x is None:
            raise ValueError("the judge tokenizes samples to different lengths; use a judge with one token per residue")
        g = torch.Generator().manual_seed(_seed_of("judge", key, self.cfg.seed))
        if self.cfg.judge_positions is None:  # exact pseudo-log-likelihood: N forwards per sample
            pll = metrics.pseudo_log_likelihood(self.judge, x, generator=g, batch_size=self.cfg.batch_size)
            self.forward_rows += x.shape[0] * x.shape[1]
        else:  # judge_positions = forwards per sample, each scoring 15% masked positions
            pll = metrics.masked_token_loglik(self.judge, x, mask_fraction=0.15, n_masks=self.cfg.judge_positions,
                                              generator=g, batch_size=self.cfg.batch_size)
            self.forward_rows += x.shape[0] * self.cfg.judge_positions
        return metrics.mean_se(pll)

    def sample_config(self, order: str, name: str, sched: _schedules.Schedule) -> dict[str, Any]:
        import mdm_sched as ms

        key = f"{order}_{name}_T{sched.steps}"
        fp = {**self.base_fp, "what": "samples", "order": order, "sizes": list(sched.sizes),
              "num_samples": self.cfg.num_samples, "path_kl_levels": self.cfg.path_kl_levels,
              "judge": str(self.cfg.judge), "judge_positions": self.cfg.judge_positions}
        path = self.cache / "samples" / f"{key}.json"
        hit = _cached(path, fp)
        if hit is not None:
            return hit
        t0 = time.time()
        g = torch.Generator().manual_seed(_seed_of("generate", key, self.cfg.seed))
        out = ms.generate(self.model, gen_length=self.n, schedule=sched, num_samples=self.cfg.num_samples,
                          order=order, generator=g)
        self.forward_rows += out.nfe * self.cfg.num_samples
        ids = out.generated.cpu()
        res: dict[str, Any] = {"nfe": out.nfe}
        if order == "random" and sched.steps < self.n:
            g2 = torch.Generator().manual_seed(_seed_of("pathkl", key, self.cfg.seed))
            pk = metrics.path_kl(self.model, out.sequences, out.reveal_step, out.token_logprobs,
                                 n_levels=self.cfg.path_kl_levels, generator=g2, batch_size=self.cfg.batch_size)
            self.forward_rows += pk.n_forward_rows
            res["path_kl"] = (pk.per_token, pk.per_token_se)
        elif order == "random":
            res["path_kl"] = (0.0, 0.0)  # the N-step sampler is the reference itself
        gb = torch.Generator().manual_seed(_seed_of("boot", key, self.cfg.seed))
        res["js2"] = metrics.kmer_js(ids, self.eval_x, 2, generator=gb)
        res["js3"] = metrics.kmer_js(ids, self.eval_x, 3, generator=gb)
        res["pos_js"] = metrics.position_js(ids, self.eval_x, generator=gb)
        res["judge_pll"] = self._judge_pll(ids, key)
        res["mean_token_logprob"] = metrics.mean_se(out.token_logprobs[:, -self.n:].double().mean(1))
        res["samples"] = ids.tolist()
        res["seconds"] = time.time() - t0
        _store(path, fp, res)
        self.log(f"[harness] {key}: {time.time() - t0:.1f} s")
        return _cached(path, fp)

    def heldout_references(self) -> dict[str, tuple[float, float]]:
        """Sample-side metrics of the profile split against the evaluation split: the finite-sample floor."""
        path = self.cache / "heldout_reference.json"
        fp = {**self.base_fp, "what": "reference", "judge": str(self.cfg.judge),
              "judge_positions": self.cfg.judge_positions, "num_samples": self.cfg.num_samples}
        hit = _cached(path, fp)
        if hit is None:
            g = torch.Generator().manual_seed(_seed_of("ref-subset", self.cfg.seed))
            sub = self.prof_x[torch.randperm(self.prof_x.shape[0], generator=g)[:self.cfg.num_samples]]
            gb = torch.Generator().manual_seed(_seed_of("ref-boot", self.cfg.seed))
            res = {"js2": metrics.kmer_js(sub, self.eval_x, 2, generator=gb),
                   "js3": metrics.kmer_js(sub, self.eval_x, 3, generator=gb),
                   "pos_js": metrics.position_js(sub, self.eval_x, generator=gb),
                   "judge_pll": self._judge_pll(self.eval_x, "eval-set")}
            _store(path, fp, res)
            hit = _cached(path, fp)
        return {k: tuple(v) for k, v in hit.items() if k != "fingerprint"}


SAMPLE_METRICS = ("path_kl", "js2", "js3", "pos_js", "judge_pll")


def run_eval(cfg: EvalConfig, out_dir: str | Path, *, log: Callable[[str], None] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Run the whole evaluation and write ``results.json``, ``results.csv``, plots and ``report.md`` to ``out_dir``.

    Returns the results dictionary (also in ``results.json``). Finished parts found in ``out_dir/cache``
    with the same settings are reused.
    """
    if not isinstance(cfg, EvalConfig):
        raise TypeError("cfg must be an EvalConfig")
    if not cfg.budgets or any((not isinstance(t, int)) or t < 1 for t in cfg.budgets):
        raise ValueError(f"budgets must be positive ints, got {cfg.budgets!r}")
    bad = [s for s in cfg.schedules if s not in _schedules.BUILDERS]
    if bad:
        raise ValueError(f"unknown schedules {bad}; choose from {', '.join(_schedules.BUILDERS)}")
    bad_orders = [o for o in cfg.orders if o not in ("random", "confidence", "margin", "entropy")]
    if bad_orders or "random" not in cfg.orders:
        raise ValueError(f"orders must include 'random' and may add confidence/margin/entropy, got {cfg.orders!r}")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    run = _Run(cfg, out, log, progress)
    n = run.n
    if max(cfg.budgets) > n:
        raise ValueError(f"budget T={max(cfg.budgets)} exceeds the generation length N={n}")

    prof = run.profile()
    curve = prof.curve(n)
    scheds = run.build_schedules(curve)
    atomic_write_json(out / "schedules.json", {f"{k[0]}@T={k[1]}": s.to_dict() for k, s in scheds.items()})

    rows = run.heldout(scheds)
    # sample-side metrics
    for order in cfg.orders:
        budgets = cfg.budgets if order == "random" or cfg.confidence_budgets is None else cfg.confidence_budgets
        for t in budgets:
            for name in cfg.schedules:
                sched = scheds.get((name, t)) or _schedules.build(name, n, t, curve)
                res = run.sample_config(order, name, sched)
                for metric in SAMPLE_METRICS:
                    if metric in res and np.isfinite(res[metric][0]):
                        rows.append(_row(metric, order, name, t, *res[metric]))
    one = run.sample_config("random", "one_call", _schedules.constant(n, 1))
    full = run.sample_config("random", "n_step", _schedules.constant(n, n))
    held = run.heldout_references()

    results: dict[str, Any] = {"config": cfg.to_dict(), "n_tokens": n, "rows": rows,
                               "data_description": f"{cfg.data} (profile: {cfg.profile_split}, eval: {cfg.eval_split})",
                               "n_profile_sequences": int(run.prof_x.shape[0]),
                               "n_eval_sequences": int(run.eval_x.shape[0]),
                               "sensitivity_z": cfg.sensitivity_z}
    # profile summary
    results["profile"] = {"ce0": float(curve[0]), "ceN": float(curve[-1]),
                          "bound_N": float(_schedules.nll_bound(curve, _schedules.constant(n, n))),
                          "predicted_gain": {int(t): float(_schedules.predicted_gain(curve, t)) for t in cfg.budgets}}
    # sensitivity and references
    sens, refs = {}, {}
    for metric in SAMPLE_METRICS:
        if metric not in one or metric not in full or not np.isfinite(one[metric][0]):
            continue
        (v1, s1), (vn, sn) = one[metric], full[metric]
        se = math.hypot(s1, sn)
        z = abs(v1 - vn) / se if se > 0 else float("inf")
        sens[metric] = {"one_call": v1, "one_call_se": s1, "n_step": vn, "n_step_se": sn, "z": z,
                        "sensitive": bool(z > cfg.sensitivity_z)}
        refs[metric] = {"n_step": (vn, sn), "one_call": (v1, s1)}
        if metric in held:
            refs[metric]["heldout"] = held[metric]
    results["sensitivity"], results["references"] = sens, refs
    # calls saved
    t_ref = cfg.reference_budget or sorted(cfg.budgets)[len(cfg.budgets) // 2]
    results["calls_saved"] = (_calls_saved(rows, cfg, t_ref, results["sensitivity"])
                              if "constant" in cfg.schedules else [])
    results["findings"] = _findings(rows, cfg, results)
    results["confidence_notes"] = _confidence_notes(rows, cfg, results)
    results["caveats"] = ["Antibody language models saw near-germline sequences in training: the germline "
                          "evaluation split is real but not strictly held out for them."] if "germline" in cfg.data else []
    if cfg.theory:
        t0 = time.time()
        table, trows = oracle_theory(quick=True)
        results["theory"] = table
        results["theory_rows"] = trows
        log(f"[harness] theory: {time.time() - t0:.0f} s")
    results["forward_rows"] = run.forward_rows
    results["wall_time_s"] = time.time() - t_start
    _write_outputs(results, out, prof, curve, scheds, cfg)
    return results


def _calls_saved(rows: list[dict[str, Any]], cfg: EvalConfig, t_ref: int,
                 sensitivity: dict[str, Any]) -> list[dict[str, Any]]:
    """Calls each schedule needs to match constant's quality at ``t_ref``, on monotone fits of each curve.

    Metrics that failed the sensitivity check are left out: they cannot rank schedules at all.
    """
    out = []
    for metric, (_label, lower, _) in report.METRICS.items():
        if metric in sensitivity and not sensitivity[metric]["sensitive"]:
            continue
        sel = [r for r in rows if r["metric"] == metric and r["order"] == "random"]
        const = sorted((r["T"], r["value"]) for r in sel if r["schedule"] == "constant")
        if t_ref not in [c[0] for c in const]:
            continue
        fitted = report.monotone_in_calls([c[1] for c in const], lower)
        target = float(fitted[[c[0] for c in const].index(t_ref)])
        for name in cfg.schedules:
            pts = sorted((r["T"], r["value"]) for r in sel if r["schedule"] == name)
            if not pts:
                continue
            t_star = report.calls_to_match([p[0] for p in pts], [p[1] for p in pts], target, lower)
            if t_star == float("-inf"):
                calls, saved = f"<= {pts[0][0]}", f">= {t_ref - pts[0][0]} ({(t_ref - pts[0][0]) / t_ref:.0%})"
            elif t_star == float("inf"):
                calls, saved = f"> {pts[-1][0]}", "none (never matches)"
            elif math.isnan(t_star):
                calls, saved = "–", "–"
            else:
                calls, saved = f"{t_star:.1f}", f"{t_ref - t_star:+.1f} ({(t_ref - t_star) / t_ref:+.0%})"
            out.append({"metric": metric, "schedule": name, "reference_T": t_ref, "constant_value": target,
                        "calls_to_match": t_star, "calls_text": calls, "saved_text": saved})
    return out


def _tally(rows: list[dict[str, Any]], order: str, metric: str, cand: str = "optimal",
           base: str = "constant") -> dict[str, list[int]]:
    lower = report.METRICS[metric][1]
    tally: dict[str, list[int]] = {"win": [], "tie": [], "lose": []}
    cell = {(r["schedule"], r["T"]): r for r in rows if r["order"] == order and r["metric"] == metric}
    for (s, t), r in sorted(cell.items(), key=lambda kv: kv[0][1]):
        if s != cand or (base, t) not in cell:
            continue
        d, se = report._diff(r, cell[(base, t)])
        v = report.verdict(d, se, lower)
        if v in tally:
            tally[v].append(t)
    return tally


def _tally_text(rows: list[dict[str, Any]], order: str, metric: str) -> str:
    """'wins at T=5, 10; ties at none; loses at none' for optimal against constant."""
    t = _tally(rows, order, metric)
    part = lambda ts: ", ".join(map(str, ts)) if ts else "none"
    return f"wins at T={part(t['win'])}; ties at T={part(t['tie'])}; loses at T={part(t['lose'])}"


def _insensitive(metric: str, results: dict[str, Any]) -> bool:
    return metric in results["sensitivity"] and not results["sensitivity"][metric]["sensitive"]


def _findings(rows: list[dict[str, Any]], cfg: EvalConfig, results: dict[str, Any]) -> list[str]:
    if "optimal" not in cfg.schedules or "constant" not in cfg.schedules:
        return []
    out = []
    gains = results["profile"]["predicted_gain"]
    out.append("Predicted gain of the optimum on the fitted profile: "
               + ", ".join(f"{g:.2f}x at T={t}" for t, g in gains.items())
               + (" (close to 1: the profile is nearly linear, little to gain)." if max(gains.values()) < 1.15 else "."))
    for metric in report.METRICS:
        if not any(r["metric"] == metric and r["order"] == "random" for r in rows):
            continue
        if _insensitive(metric, results):
            out.append(f"{report.METRICS[metric][0]}: cannot judge schedules (does not separate 1 call from N calls).")
            continue
        out.append(f"{report.METRICS[metric][0]}: optimal vs constant {_tally_text(rows, 'random', metric)}.")
    return out


def _confidence_notes(rows: list[dict[str, Any]], cfg: EvalConfig, results: dict[str, Any]) -> list[str]:
    notes = []
    for order in cfg.orders:
        if order == "random":
            continue
        for metric in report.METRICS:
            if not any(r["metric"] == metric and r["order"] == order for r in rows):
                continue
            label = report.METRICS[metric][0]
            if _insensitive(metric, results):
                notes.append(f"order={order}, {label}: cannot judge schedules (insensitive under random order).")
                continue
            notes.append(f"order={order}, {label}: optimal (chosen for random order) vs constant "
                         f"{_tally_text(rows, order, metric)}.")
    return notes


def _write_outputs(results: dict[str, Any], out: Path, prof: Any, curve: np.ndarray,
                   scheds: dict[tuple[str, int], _schedules.Schedule], cfg: EvalConfig) -> None:
    atomic_write_json(out / "results.json", results)
    report.write_csv(results["rows"], out / "results.csv")
    try:
        prof.plot(out / "profile.png")
    except Exception as exc:  # a plotting failure must not lose the numbers
        results.setdefault("caveats", []).append(f"profile plot failed: {exc}")
    for t in cfg.budgets:
        report.plot_profile_blocks(curve, {name: scheds[(name, t)].cumulative for name in cfg.schedules},
                                   out / f"profile_blocks_T{t}.png", title=f"fitted CE profile, block starts at T={t}")
    for order in cfg.orders:
        for metric in report.METRICS:
            refs = {}
            ref = results["references"].get(metric, {})
            if order == "random":
                for k, label in (("n_step", "N-step sampler"), ("heldout", "held-out data")):
                    if k in ref:
                        refs[label] = tuple(ref[k])
            report.plot_metric(results["rows"], metric, out / f"plot_{metric}_{order}.png", order=order, references=refs)
    atomic_write_text(out / "report.md", report.render_markdown(results))
    atomic_write_text(out / "summary.md", report.summary_table(results) + "\n")


# --------------------------------------------------------------------------------------------------
# theory reproduction on exact oracles (THEORY.md sections 3 and 4)
# --------------------------------------------------------------------------------------------------

def _chain_entropy(chain: Any) -> float:
    """Exact H of a homogeneous Markov chain: H(x_1) + sum_t E H(trans[x_t])."""
    p = chain.initial.double()
    trans = chain.transition.double()
    row_h = -(trans * trans.clamp_min(1e-300).log()).sum(1)
    h = float(-(p * p.clamp_min(1e-300).log()).sum())
    for _ in range(chain.n_tokens - 1):
        h += float((p * row_h).sum())
        p = p @ trans
    return h


def oracle_theory(quick: bool = True, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """Predicted against measured gains, and the bound against exact KL, on exact oracles.

    * Tabular oracles (small N, everything exact): per schedule the exact factorization error, the
      bound's excess ``E_order KL = sum_t k_t CE(K_{t-1}) - H`` and the exact ``KL(pi || q)``; the predicted
      gain ``J(constant)/J(optimal)`` on the exact entropy profile and the realised gain in exact KL.
    * Markov chains (long N, non-linear profiles): the profile estimated by Monte Carlo, the optimal schedule
      built on that estimate; predicted gain (on the estimate) against the measured gain in order-averaged KL
      ``N * bound - H`` (held-out block estimator on fresh samples, exact H), with SEs.

    Returns (Markdown table, rows).
    """
    rows: list[dict[str, Any]] = []
    from .oracle import MarkovChainOracle, TabularOracle

    # -- tabular ---------------------------------------------------------------------------------------
    tabs = [("tabular V=3 N=6 Dirichlet(0.2)", TabularOracle.random(3, 6, concentration=0.2, seed=seed)),
            ("chain V=3 N=7 sticky (tabulated)", MarkovChainOracle.random(3, 7, stickiness=0.7, seed=seed).to_tabular())]
    for label, tab in tabs:
        g = tab.entropy_profile()
        for t in (2, 3):
            e = {}
            for name in ("constant", "optimal"):
                sched = _schedules.build(name, tab.n_tokens, t, np.minimum.accumulate(g))
                e[name] = metrics.oracle_exact(tab, sched)
            pred = _schedules.predicted_gain(np.minimum.accumulate(g), t)
            for name, v in e.items():
                rows.append({"oracle": label, "N": tab.n_tokens, "T": t, "schedule": name,
                             "fact_error": v["fact_error"], "order_kl": v["order_kl"], "exact_kl": v["kl"],
                             "predicted_gain": pred,
                             "measured_gain": e["constant"]["fact_error"] / max(e["optimal"]["fact_error"], 1e-300),
                             "kl_gain": e["constant"]["kl"] / max(e["optimal"]["kl"], 1e-300), "gain_se": 0.0})
    # -- Markov chains, long ---------------------------------------------------------------------------
    n = 48 if quick else 128
    n_prof = 300 if quick else 2000
    n_eval = 400 if quick else 3000
    chains = [("chain V=4 sticky 0.9 (saturating)", MarkovChainOracle.random(4, n, stickiness=0.9, seed=seed)),
              ("chain V=6 sticky 0.6", MarkovChainOracle.random(6, n, stickiness=0.6, seed=seed + 1))]
    from .profile import isotonic_nonincreasing

    for label, chain in chains:
        g_gen = torch.Generator().manual_seed(seed)
        levels = np.unique(np.round(np.linspace(0, n - 1, 24)).astype(int))
        lv, mean, se = chain.entropy_profile(levels=levels, n_samples=n_prof, generator=g_gen)
        fit = isotonic_nonincreasing(mean, 1.0 / np.maximum(se, 1e-6) ** 2)
        curve = np.minimum.accumulate(np.interp(np.arange(n), lv, fit))
        h = _chain_entropy(chain)
        x = chain.sample(n_eval, generator=g_gen)
        for t in (4, 8) if quick else (4, 8, 16):
            sc = {name: _schedules.build(name, n, t, curve) for name in ("constant", "optimal")}
            res = metrics.heldout_likelihood(chain, x, sc, n_orders=1, generator=g_gen, batch_size=4096)
            okl = {k: -v[:, 0] for k, v in res.logq.items()}  # per-sequence -log q_sigma(x)
            mc, sc_ = metrics.mean_se(okl["constant"])
            mo, so = metrics.mean_se(okl["optimal"])
            kc, ko = mc - h, mo - h  # E_order KL per sequence
            gain = kc / ko if ko > 0 else float("inf")
            # delta method for the ratio (SEs of the two estimates, correlation ignored: conservative)
            gse = abs(gain) * math.hypot(sc_ / max(kc, 1e-12), so / max(ko, 1e-12))
            pred = _schedules.predicted_gain(curve, t)
            for name, kl_v, se_v in (("constant", kc, sc_), ("optimal", ko, so)):
                rows.append({"oracle": label, "N": n, "T": t, "schedule": name,
                             "fact_error": _schedules.cost(curve, sc[name]), "order_kl": kl_v, "order_kl_se": se_v,
                             "exact_kl": float("nan"), "predicted_gain": pred, "measured_gain": gain, "gain_se": gse,
                             "kl_gain": float("nan")})
    header = ["oracle", "N", "T", "schedule", "E_fact (predicted)", "E_order KL = bound - H", "exact KL(pi||q)",
              "predicted gain", "measured gain"]
    body = []
    for r in rows:
        okl = f"{r['order_kl']:.4g}" + (f" ± {r['order_kl_se']:.2g}" if "order_kl_se" in r else "")
        meas = f"{r['measured_gain']:.2f}" + (f" ± {r['gain_se']:.2f}" if r.get("gain_se") else "")
        if np.isfinite(r.get("kl_gain", float("nan"))):
            meas += f" (exact-KL gain {r['kl_gain']:.2f})"
        body.append([r["oracle"], r["N"], r["T"], r["schedule"], f"{r['fact_error']:.4g}", okl,
                     f"{r['exact_kl']:.4g}" if np.isfinite(r["exact_kl"]) else "–", f"{r['predicted_gain']:.2f}", meas])
    text = ("Tabular rows are exact (perfect model: the bound's excess equals the factorization error, and "
            "exact KL(pi||q) <= bound - H). Chain rows: profile estimated by Monte Carlo, schedules built on the "
            "estimate, gain measured with the held-out block estimator on fresh samples (nats per sequence).\n\n"
            + report.markdown_table(header, body))
    return text, rows


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _str_tuple(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.replace(",", " ").split() if v)


def _add_common(parser: argparse.ArgumentParser, base: EvalConfig) -> None:
    parser.add_argument("--out", default=None, help="output folder (report, plots, numbers, caches for resuming)")
    parser.add_argument("--budgets", type=_int_tuple, default=None, help=f"model-call budgets T (default {base.budgets})")
    parser.add_argument("--schedules", type=_str_tuple, default=None, help=f"schedules (default {','.join(base.schedules)})")
    parser.add_argument("--orders", type=_str_tuple, default=None, help="orders (default random,confidence)")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per (schedule, T, order)")
    parser.add_argument("--n-orders", type=int, default=None, help="random orders per held-out sequence (M)")
    parser.add_argument("--max-eval-sequences", type=int, default=None)
    parser.add_argument("--n-tokens", type=int, default=None, help="generation length N (default: median length)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--no-theory", action="store_true", help="skip the exact-oracle theory table")


def _config_from(args: argparse.Namespace, base: EvalConfig) -> EvalConfig:
    upd: dict[str, Any] = {}
    for field, attr in (("budgets", "budgets"), ("schedules", "schedules"), ("orders", "orders"),
                        ("num_samples", "num_samples"), ("n_orders", "n_orders"),
                        ("max_eval_sequences", "max_eval_sequences"), ("n_tokens", "n_tokens"), ("seed", "seed"),
                        ("threads", "threads"), ("model", "model"), ("judge", "judge"), ("data", "data")):
        v = getattr(args, attr, None)
        if v is not None:
            upd[field] = v
    if getattr(args, "no_theory", False):
        upd["theory"] = False
    if getattr(args, "no_judge", False):
        upd["judge"] = None
    cfg = dataclasses.replace(base, **upd)
    if cfg.confidence_budgets is not None and "budgets" in upd:
        cfg = dataclasses.replace(cfg, confidence_budgets=tuple(t for t in cfg.confidence_budgets if t in cfg.budgets)
                                  or (cfg.budgets[len(cfg.budgets) // 2],))
    return cfg


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched eval``."""
    parser.add_argument("--model", default=None, help="model to evaluate (built-in name, directory or hub id)")
    parser.add_argument("--judge", default=None, help="a different model scoring the samples (pseudo-log-likelihood)")
    parser.add_argument("--no-judge", action="store_true")
    parser.add_argument("--data", default=None, help="data spec with train/test splits, e.g. antibody-germlines:human:H")
    _add_common(parser, EvalConfig())


def eval_command(args: argparse.Namespace) -> int:
    """``mdm-sched eval``: run the harness with the given settings; prints the summary table."""
    cfg = _config_from(args, dataclasses.replace(EvalConfig(), theory=False))
    return _run_and_print(cfg, args.out or "mdm_sched_eval")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdm-sched demo``."""
    parser.add_argument("--quick", action="store_true", help="Sapiens VH, smaller sizes (about 2 minutes)")
    _add_common(parser, DEMO_FULL)


def demo_command(args: argparse.Namespace) -> int:
    """``mdm-sched demo``: AntiBERTy (``--quick``: Sapiens) on human VH germlines, end to end."""
    base = DEMO_QUICK if args.quick else DEMO_FULL
    cfg = _config_from(args, base)
    return _run_and_print(cfg, args.out or ("mdm_sched_demo_quick" if args.quick else "mdm_sched_demo"))


def _run_and_print(cfg: EvalConfig, out: str) -> int:
    t0 = time.time()
    try:
        results = run_eval(cfg, out, progress=False)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary_table(results))
    print()
    for f in results.get("findings", []):
        print(f"- {f}")
    print(f"\nreport: {Path(out) / 'report.md'}  (wall time {time.time() - t0:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdm_sched.harness [demo|eval] ...``"""
    parser = argparse.ArgumentParser(prog="python -m mdm_sched.harness")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_demo_arguments(sub.add_parser("demo"))
    add_eval_arguments(sub.add_parser("eval"))
    args = parser.parse_args(argv)
    return demo_command(args) if args.cmd == "demo" else eval_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
