"""The evaluation harness behind ``mdm-sched eval`` and ``mdm-sched demo``: measure, cache, return typed results.

One run, for a model, a profile fitted on one split and an evaluation split (docs/theory.md §3, §6):

1. fixed generation length ``N`` under the library's one length policy (:func:`mdm_sched.data.fixed_length`:
   default the most common length of the evaluation split, other lengths dropped; the profile split is
   cropped to ``N``, shorter sequences dropped);
2. the profile on the profile split (``estimate_profile``);
3. schedules (constant, cosine, geometric, optimal, sqrt by default) for every budget ``T``;
4. held-out metrics on the evaluation split, all schedules at once with common random orders:
   the bound ``NLL_T`` and the ``M``-order estimate;
5. for each (order, schedule, T): samples, then path KL to the N-step sampler (random order only),
   k-mer and per-position JS divergences to the evaluation split, and a judge model's pseudo-log-likelihood;
6. reference samplers (1 call, N calls) for the sensitivity check, and the held-out data's own levels;
7. with ``EvalConfig.infill``: the infilling stage (:mod:`mdm_sched.infill_eval`): every decoder (fixed schedules
   and adaptive rules, :mod:`mdm_sched.decoders`) on a task with ground truth, at the model calls each makes;
8. :class:`~mdm_sched.results.EvalResults`, whose conclusions and files come from :mod:`mdm_sched.report`
   (``results.json``, ``results.csv``, PNG plots, ``report.md``); optionally the exact-oracle theory table
   (:mod:`mdm_sched.theory`).

Stages 2, 4, 5, 6 and 7 are cached under ``OUT/cache`` (:func:`cached_stage`): a rerun with the same settings
skips finished parts. The command line lives in :mod:`mdm_sched.cli`.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics, report
from . import schedules as _schedules
from ._io import atomic_write_json, read_json
from ._types import PathLike
from .results import (
    DEFAULT_DECODERS,
    Estimate,
    EvalConfig,
    EvalResults,
    PairedDiff,
    ProfileSummary,
    ReferenceValues,
    ResultRow,
    SensitivityCheck,
    SplitSummary,
)
from .validation import check_float, check_int, check_optional_int

if TYPE_CHECKING:
    from .profile import InformationProfile
    from .sampling import GenerationOutput

__all__ = ["EvalConfig", "EvalResults", "run_eval", "cached_stage", "DEMO_FULL", "DEMO_QUICK", "ORDERS",
           "SAMPLE_METRICS"]

DEMO_FULL = EvalConfig(budgets=(5, 10, 15), schedules=("constant", "cosine", "optimal", "sqrt"), orders=("random",),
                       num_samples=8, n_orders=2, max_eval_sequences=16, path_kl_levels=2, judge_positions=2,
                       profile_levels=24, profile_tokens_per_level=1536, theory=True,
                       infill="imgt:1-65", infill_orders=("confidence",), infill_budgets=(2, 4),
                       thresholds=(0.5, 0.7), entropy_bounds=(8.0, 32.0),
                       # optimal_region's profile would cost about 1.7x the unconditional one: left to `eval`
                       infill_decoders=DEFAULT_DECODERS + ("optimal_policy",), profile_walks=16)
DEMO_QUICK = EvalConfig(model="sapiens-vh", judge=None, budgets=(4, 8, 16), num_samples=32, n_orders=2,
                        max_eval_sequences=64, path_kl_levels=8, judge_positions=1, orders=("random",),
                        profile_levels=24, profile_tokens_per_level=2048, theory=True,
                        infill="imgt:27-65", infill_orders=("confidence",), infill_budgets=(2, 4, 8),
                        thresholds=(0.5, 0.7, 0.9), entropy_bounds=(2.0, 8.0),
                        infill_decoders=DEFAULT_DECODERS + ("optimal_region", "optimal_policy"), profile_walks=16)

ORDERS = ("random", "confidence", "margin", "entropy")
#: the examples an infilling task may be built on (EvalConfig.infill_split)
INFILL_SPLITS = ("eval", "all")
#: unconditional schedules built on a profile the run measures besides the random-order one
#: (:mod:`mdm_sched.profile_stage`): the self profile of each order, and the policy profile of each ranked order
PROFILE_SCHEDULES = ("optimal_self", "optimal_policy")
BASELINE_DECODER = "constant"
SAMPLE_METRICS = ("path_kl", "js2", "js3", "pos_js", "judge_pll")
#: a cache file's content besides its fingerprint (JSON values)
Payload = dict[str, Any]
Schedules = dict[tuple[str, int], _schedules.Schedule]


# --------------------------------------------------------------------------------------------------
# caching
# --------------------------------------------------------------------------------------------------

def _seed_of(*parts: object) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode()) & 0x7FFFFFFF


def _as_json(obj: object) -> Any:
    """``obj`` as it reads back from JSON (so a computed and a cached stage return identical values)."""
    return json.loads(json.dumps(obj, default=str))


def cached_stage(path: PathLike, fingerprint: Mapping[str, object], compute: Callable[[], Payload], *,
                 name: str = "", log: Callable[[str], None] | None = None) -> Payload:
    """The payload cached at ``path`` for ``fingerprint``, or ``compute()``'s, stored there atomically first.

    A missing, unreadable or differently fingerprinted file is recomputed. The payload comes back as JSON
    values either way (lists, not tuples or tensors). ``name``/``log``: one line saying "cached" or the time taken.
    """
    path = Path(path)
    fp = _as_json(dict(fingerprint))
    if path.is_file():
        try:
            hit = read_json(path, what="cache")
        except ValueError:
            hit = None
        if isinstance(hit, dict) and hit.get("fingerprint") == fp:
            if log and name:
                log(f"[harness] {name}: cached")
            return {k: v for k, v in hit.items() if k != "fingerprint"}
    t0 = time.time()
    payload = _as_json(compute())
    atomic_write_json(path, {"fingerprint": fp, **payload})
    if log and name:
        log(f"[harness] {name}: {time.time() - t0:.1f} s")
    return payload


def _pair(value: Any) -> tuple[float, float]:
    v, s = value
    return float(v), float(s)


# --------------------------------------------------------------------------------------------------
# the run's stages
# --------------------------------------------------------------------------------------------------

class _Run:
    """State of one harness run (models, fixed-length data, caches); methods are the pipeline's stages."""

    def __init__(self, cfg: EvalConfig, out: Path, log: Callable[[str], None], progress: bool) -> None:
        import mdm_sched as ms

        self.cfg, self.out, self.log, self.progress = cfg, out, log, progress
        self.cache = out / "cache"
        self.forward_rows = 0
        t0 = time.time()
        self.model = ms.load_masked_lm(cfg.model)
        self.judge = ms.load_masked_lm(cfg.judge) if cfg.judge else None
        self._load_data()
        self.base_fp = {"model": cfg.model, "config_hash": self.model.config_hash, "n": self.n, "data": cfg.data,
                        "eval_split": cfg.eval_split, "seed": cfg.seed, "n_eval": int(self.eval_x.shape[0])}
        self.log(f"[harness] {cfg.model}: N={self.n}, profile split {self.prof_x.shape[0]} seqs, eval split "
                 f"{self.eval_x.shape[0]} seqs (loaded in {time.time() - t0:.0f} s)")

    def _split(self, split: str, n_tokens: int | None) -> tuple[torch.Tensor, int, dict[str, int]]:
        """One split's token ids under :func:`mdm_sched.data.fixed_length` (its counts go to the results)."""
        from . import data

        seqs = data.token_sequences(data.load_source(self.cfg.data, split=split), self.model)
        with warnings.catch_warnings():  # the dropped/cropped counts are reported in results and report instead
            warnings.simplefilter("ignore", UserWarning)
            return data.fixed_length(seqs, n_tokens)

    def _load_data(self) -> None:
        cfg = self.cfg
        self.eval_x, self.n, ev = self._split(cfg.eval_split, cfg.n_tokens)
        self.prof_x, _, pr = self._split(cfg.profile_split, self.n)
        if cfg.max_eval_sequences is not None and self.eval_x.shape[0] > cfg.max_eval_sequences:
            g = torch.Generator().manual_seed(_seed_of("eval-subset", cfg.seed))
            keep = torch.randperm(self.eval_x.shape[0], generator=g)[:cfg.max_eval_sequences].sort().values
            self.eval_x = self.eval_x[keep]
        self.eval_data = SplitSummary(cfg.eval_split, int(self.eval_x.shape[0]), ev["dropped"], ev["cropped"])
        self.profile_data = SplitSummary(cfg.profile_split, int(self.prof_x.shape[0]), pr["dropped"], pr["cropped"])

    def stage(self, name: str, file: str, fingerprint: Mapping[str, object], compute: Callable[[], Payload], *,
              eval_subset: bool = True) -> Payload:
        """``compute()``'s payload, cached under ``OUT/cache/file`` for this run's model and data plus ``fingerprint``.

        ``eval_subset=False``: the stage does not use the (``max_eval_sequences``) evaluation subset, so changing
        it does not invalidate the cache (the infilling stage fingerprints its own examples).
        """
        base = self.base_fp if eval_subset else {k: v for k, v in self.base_fp.items() if k != "n_eval"}
        return cached_stage(self.cache / file, {**base, **fingerprint}, compute, name=name, log=self.log)


    # -- profile -----------------------------------------------------------------------------------
    def profile(self) -> InformationProfile:
        import mdm_sched as ms

        cfg = self.cfg

        def compute() -> Payload:
            prof = ms.estimate_profile(self.model, [r.tolist() for r in self.prof_x], n_tokens=self.n,
                                       levels=cfg.profile_levels, tokens_per_level=cfg.profile_tokens_per_level,
                                       batch_size=cfg.batch_size, seed=cfg.seed, progress=self.progress,
                                       checkpoint=self.cache / "profile.checkpoint.npz",
                                       data_description=f"{cfg.data}:{cfg.profile_split}")
            return {"profile": prof.to_dict()}

        fp = {"what": "profile", "split": cfg.profile_split, "levels": cfg.profile_levels,
              "tokens_per_level": cfg.profile_tokens_per_level}
        return ms.InformationProfile.from_dict(self.stage("profile", "profile.json", fp, compute)["profile"])

    def other_profile(self, kind: str, order: str) -> InformationProfile:
        """The unconditional ``kind`` profile (``"policy"`` or ``"self"``) of ``order`` on the profile split's first
        ``profile_walks`` sequences (:mod:`mdm_sched.profile_stage`)."""
        from . import profile_stage

        ex = profile_stage.unconditional_examples(self.prof_x, self.cfg.profile_walks)
        make = profile_stage.policy_profile if kind == "policy" else profile_stage.self_profile
        return make(self, ex, order, label="unconditional")

    def schedule(self, name: str, t: int, order: str, curve: np.ndarray) -> _schedules.Schedule | None:
        """Schedule ``name`` with ``t`` calls for ``order``; None for ``optimal_policy`` under random order (the
        policy profile describes ranked orders only)."""
        if name == "optimal_policy":
            return None if order == "random" else _schedules.optimal(self.other_profile("policy", order), t,
                                                                     n_tokens=self.n)
        if name == "optimal_self":
            prof = self.other_profile("self", order)
            sched = _schedules.optimal(prof if prof.kind == "policy" else prof.curve(self.n), t)
            return _schedules.Schedule(sched.sizes, name=name, metadata=sched.metadata)
        return _schedules.build(name, self.n, t, curve)

    # -- held-out ----------------------------------------------------------------------------------
    def heldout_rows(self, scheds: Schedules) -> list[ResultRow]:
        """The bound and the M-order NLL per (schedule, T), paired with the constant schedule when present."""
        keyed = {f"{name}@T={t}": s for (name, t), s in scheds.items()}

        def compute() -> Payload:
            g = torch.Generator().manual_seed(_seed_of("heldout", self.cfg.seed))
            res = metrics.heldout_likelihood(self.model, self.eval_x, keyed, n_orders=self.cfg.n_orders,
                                             generator=g, batch_size=self.cfg.batch_size)
            self.forward_rows += res.n_forward_rows
            return {"logq": {k: v.tolist() for k, v in res.logq.items()}, "n_tokens": res.n_tokens,
                    "rows": res.n_forward_rows}

        fp = {"what": "heldout", "n_orders": self.cfg.n_orders, "schedules": {k: list(s.sizes) for k, s in keyed.items()}}
        hit = self.stage("held-out", "heldout.json", fp, compute)
        logq = {k: torch.tensor(v, dtype=torch.float64) for k, v in hit["logq"].items()}
        base = "constant" if "constant" in self.cfg.schedules else None
        rows = []
        names = list(dict.fromkeys(name for name, _ in scheds))
        for t in self.cfg.budgets:
            sub = metrics.HeldoutResult(logq={n: logq[f"{n}@T={t}"] for n in names},
                                        n_tokens=hit["n_tokens"], n_forward_rows=0)
            for name, s in metrics.summarize_heldout(sub, baseline=base).items():
                for metric in ("bound", "nll_M"):
                    paired = None if base is None else PairedDiff(base, s[f"{metric}_diff"], s[f"{metric}_diff_se"])
                    rows.append(ResultRow(metric, "random", name, t, s[metric], s[f"{metric}_se"], paired=paired))
        return rows

    # -- samples -----------------------------------------------------------------------------------
    def _judge_pll(self, ids: torch.Tensor, key: str) -> tuple[float, float]:
        if self.judge is None:
            return float("nan"), float("nan")
        enc = self.judge.encode(self.model.decode(ids))
        if len({len(e) for e in enc}) != 1:
            raise ValueError("the judge tokenizes samples to different lengths; use a judge with one token per residue")
        x = torch.tensor(enc, dtype=torch.long)
        g = torch.Generator().manual_seed(_seed_of("judge", key, self.cfg.seed))
        if self.cfg.judge_positions is None:  # exact pseudo-log-likelihood: N forwards per sample
            pll = metrics.pseudo_log_likelihood(self.judge, x, generator=g, batch_size=self.cfg.batch_size)
            self.forward_rows += x.shape[0] * x.shape[1]
        else:  # judge_positions = forwards per sample, each scoring 15% masked positions
            pll = metrics.masked_token_loglik(self.judge, x, mask_fraction=0.15, n_masks=self.cfg.judge_positions,
                                              generator=g, batch_size=self.cfg.batch_size)
            self.forward_rows += x.shape[0] * self.cfg.judge_positions
        return metrics.mean_se(pll)

    def _path_kl(self, out: GenerationOutput, key: str, steps: int) -> tuple[float, float]:
        if steps >= self.n:
            return 0.0, 0.0  # the N-step sampler is the reference itself
        g = torch.Generator().manual_seed(_seed_of("pathkl", key, self.cfg.seed))
        pk = metrics.path_kl(self.model, out.sequences, out.reveal_step, out.token_logprobs,
                             n_levels=self.cfg.path_kl_levels, generator=g, batch_size=self.cfg.batch_size)
        self.forward_rows += pk.n_forward_rows
        return pk.per_token, pk.per_token_se

    def _spectra(self, ids: torch.Tensor, *seed_parts: str) -> Payload:
        """k-mer and per-position JS divergences of ``ids`` to the evaluation split (bootstrap SEs)."""
        gb = torch.Generator().manual_seed(_seed_of(*seed_parts, self.cfg.seed))
        return {"js2": metrics.kmer_js(ids, self.eval_x, 2, generator=gb),
                "js3": metrics.kmer_js(ids, self.eval_x, 3, generator=gb),
                "pos_js": metrics.position_js(ids, self.eval_x, generator=gb)}

    def samples(self, order: str, name: str, sched: _schedules.Schedule) -> Payload:
        """Samples of one (order, schedule) and every sample-side metric of them (each ``[value, se]``)."""
        import mdm_sched as ms

        key = f"{order}_{name}_T{sched.steps}"

        def compute() -> Payload:
            g = torch.Generator().manual_seed(_seed_of("generate", key, self.cfg.seed))
            out = ms.generate(self.model, gen_length=self.n, schedule=sched, num_samples=self.cfg.num_samples,
                              order=order, generator=g)
            self.forward_rows += out.nfe * self.cfg.num_samples
            ids = out.generated.cpu()
            res: Payload = {"nfe": out.nfe, **self._spectra(ids, "boot", key)}
            if order == "random":
                res["path_kl"] = self._path_kl(out, key, sched.steps)
            res["judge_pll"] = self._judge_pll(ids, key)
            res["mean_token_logprob"] = metrics.mean_se(out.token_logprobs[:, -self.n:].double().mean(1))
            return {**res, "samples": ids.tolist()}

        fp = {"what": "samples", "order": order, "sizes": list(sched.sizes), "num_samples": self.cfg.num_samples,
              "path_kl_levels": self.cfg.path_kl_levels, "judge": str(self.cfg.judge),
              "judge_positions": self.cfg.judge_positions}
        return self.stage(key, f"samples/{key}.json", fp, compute)

    def heldout_references(self) -> dict[str, tuple[float, float]]:
        """Sample-side metrics of the profile split against the evaluation split: the finite-sample floor."""
        def compute() -> Payload:
            g = torch.Generator().manual_seed(_seed_of("ref-subset", self.cfg.seed))
            sub = self.prof_x[torch.randperm(self.prof_x.shape[0], generator=g)[:self.cfg.num_samples]]
            return {**self._spectra(sub, "ref-boot"), "judge_pll": self._judge_pll(self.eval_x, "eval-set")}

        fp = {"what": "reference", "judge": str(self.cfg.judge), "judge_positions": self.cfg.judge_positions,
              "num_samples": self.cfg.num_samples}
        return {k: _pair(v) for k, v in self.stage("references", "heldout_reference.json", fp, compute).items()}


# --------------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------------

def _check_config(cfg: EvalConfig) -> None:
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"cfg must be an EvalConfig, got {type(cfg).__name__}")
    if not isinstance(cfg.model, str) or (cfg.judge is not None and not isinstance(cfg.judge, str)):
        raise TypeError("EvalConfig.model and .judge must be model names or paths (str); judge may be None")
    if not cfg.budgets or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in cfg.budgets):
        raise ValueError(f"budgets must be positive ints, got {cfg.budgets!r}")
    bad = [s for s in cfg.schedules if s not in _schedules.BUILDERS + PROFILE_SCHEDULES]
    if bad:
        raise ValueError(f"unknown schedules {bad}; choose from {', '.join(_schedules.BUILDERS + PROFILE_SCHEDULES)}")
    if any(o not in ORDERS for o in cfg.orders) or "random" not in cfg.orders:
        raise ValueError(f"orders must include 'random' and may add confidence/margin/entropy, got {cfg.orders!r}")
    for name in ("num_samples", "n_orders", "profile_levels", "profile_tokens_per_level", "batch_size"):
        check_int(getattr(cfg, name), f"EvalConfig.{name}", minimum=1)
    for name in ("max_eval_sequences", "path_kl_levels", "judge_positions", "reference_budget"):
        check_optional_int(getattr(cfg, name), f"EvalConfig.{name}", minimum=1, hint=" or None")
    check_optional_int(cfg.n_tokens, "EvalConfig.n_tokens", minimum=2, hint=" or None (the most common length)")
    check_int(cfg.seed, "EvalConfig.seed", minimum=0)
    check_int(cfg.profile_walks, "EvalConfig.profile_walks", minimum=1)
    check_float(cfg.sensitivity_z, "EvalConfig.sensitivity_z", minimum=0.0, min_inclusive=False)
    if cfg.infill is not None:
        _check_infill_config(cfg)


def _check_infill_config(cfg: EvalConfig) -> None:
    from .decoders import get_decoder
    from .tasks import parse_task

    parse_task(cfg.infill or "")
    if not cfg.infill_decoders or BASELINE_DECODER not in cfg.infill_decoders:
        raise ValueError(f"infill_decoders must include {BASELINE_DECODER!r} (the baseline), got {cfg.infill_decoders!r}")
    for name in cfg.infill_decoders:
        decoder = get_decoder(name)
        if not getattr(cfg, decoder.grid):
            raise ValueError(f"decoder {name!r} runs at EvalConfig.{decoder.grid}, which is empty")
    if cfg.infill_split not in INFILL_SPLITS:
        raise ValueError(f"infill_split must be one of {', '.join(INFILL_SPLITS)}, got {cfg.infill_split!r}")
    fitted = [name for name in cfg.infill_decoders if get_decoder(name).profile is not None]
    if cfg.infill_split == "all" and fitted:
        # their profiles come from the profile split, which 'all' also scores: they would be judged on their own data
        raise ValueError(f"infill_split='all' scores the profile split too, which decoders {fitted} are fitted on; "
                         f"drop them from infill_decoders or use infill_split='eval'")
    if not cfg.infill_orders or any(o not in ORDERS for o in cfg.infill_orders):
        raise ValueError(f"infill_orders must be among {', '.join(ORDERS)}, got {cfg.infill_orders!r}")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in cfg.infill_budgets):
        raise ValueError(f"infill_budgets must be positive ints, got {cfg.infill_budgets!r}")
    for name in ("thresholds", "entropy_bounds", "factors"):
        for v in getattr(cfg, name):
            check_float(v, f"EvalConfig.{name}", minimum=0.0)
    check_int(cfg.infill_samples, "EvalConfig.infill_samples", minimum=1)
    check_optional_int(cfg.infill_sequences, "EvalConfig.infill_sequences", minimum=1, hint=" or None")


def _build_schedules(run: _Run, curve: np.ndarray) -> Schedules:
    """The random-order schedules (held-out bound, random-order samples, plots): every name that has one."""
    built = {(name, t): run.schedule(name, t, "random", curve) for t in run.cfg.budgets for name in run.cfg.schedules}
    return {k: s for k, s in built.items() if s is not None}


def _sample_rows(run: _Run, scheds: Schedules, curve: np.ndarray) -> list[ResultRow]:
    """Sample-side rows for every (order, budget, schedule); non-random orders use ``confidence_budgets``."""
    cfg, rows = run.cfg, []
    for order in cfg.orders:
        budgets = cfg.budgets if order == "random" or cfg.confidence_budgets is None else cfg.confidence_budgets
        for t in budgets:
            for name in cfg.schedules:
                sched = scheds.get((name, t)) if order == "random" else run.schedule(name, t, order, curve)
                if sched is None:
                    continue
                res = run.samples(order, name, sched)
                for metric in SAMPLE_METRICS:
                    if metric in res and np.isfinite(res[metric][0]):
                        rows.append(ResultRow(metric, order, name, t, *_pair(res[metric]), calls=float(res["nfe"])))
    return rows


def _checks(run: _Run) -> tuple[list[SensitivityCheck], list[ReferenceValues]]:
    """The sensitivity check of each sample-side metric (1 call vs N calls) and every reference level."""
    one = run.samples("random", "one_call", _schedules.constant(run.n, 1))
    full = run.samples("random", "n_step", _schedules.constant(run.n, run.n))
    held = run.heldout_references()
    sens, refs = [], []
    for metric in SAMPLE_METRICS:
        if metric not in one or metric not in full or not np.isfinite(one[metric][0]):
            continue
        e1, en = Estimate(*_pair(one[metric])), Estimate(*_pair(full[metric]))
        se = math.hypot(e1.se, en.se)
        z = abs(e1.value - en.value) / se if se > 0 else float("inf")
        sens.append(SensitivityCheck(metric, e1, en, z, bool(z > run.cfg.sensitivity_z)))
        refs.append(ReferenceValues(metric, n_step=en, one_call=e1,
                                    heldout=Estimate(*held[metric]) if metric in held else None))
    return sens, refs


def _infill(run: _Run, results: EvalResults, curve: np.ndarray) -> None:
    """The infilling stage (:mod:`mdm_sched.infill_eval`): its rows, checks and task summary join the results."""
    from .infill_eval import load_task, run_infill

    task = load_task(run.cfg, run.model)
    run.log(f"[harness] infilling {task.name}: {len(task)} examples, {task.description}")
    outcome = run_infill(run, task, curve)
    results.rows += outcome.rows
    results.sensitivity += outcome.sensitivity
    results.infill = outcome.summary


def _profile_summary(cfg: EvalConfig, n: int, curve: np.ndarray) -> ProfileSummary:
    return ProfileSummary(ce_first=float(curve[0]), ce_last=float(curve[-1]),
                          bound_n_step=float(_schedules.nll_bound(curve, _schedules.constant(n, n))),
                          predicted_gain={int(t): float(_schedules.predicted_gain(curve, t)) for t in cfg.budgets},
                          predicted_calls={int(t): float(_schedules.predicted_calls_saved(curve, t)) for t in cfg.budgets})


def _conclude(results: EvalResults, log: Callable[[str], None]) -> None:
    """Calls saved, findings, notes and caveats (:mod:`mdm_sched.report`); the theory table if asked for."""
    cfg = results.config
    t_ref = cfg.reference_budget or sorted(cfg.budgets)[len(cfg.budgets) // 2]
    results.calls_saved = report.calls_saved(results, t_ref) if report.BASELINE in cfg.schedules else []
    if results.infill is not None:
        results.calls_saved += report.infill_calls_saved(results)
    results.findings = report.findings(results) + report.infill_findings(results)
    results.confidence_notes = report.confidence_notes(results)
    results.caveats = report.data_caveats(cfg)
    if cfg.theory:
        from .theory import oracle_theory

        t0 = time.time()
        results.theory, results.theory_rows = oracle_theory(quick=True)
        log(f"[harness] theory: {time.time() - t0:.0f} s")


def _write_outputs(results: EvalResults, out: Path, prof: InformationProfile, curve: np.ndarray, scheds: Schedules) -> None:
    """Profile plots (a failure becomes a caveat, never a lost run), then the report's files."""
    try:
        prof.plot(out / "profile.png")
    except Exception as exc:  # a plotting failure must not lose the numbers
        results.caveats.append(f"profile plot failed: {exc}")
    for t in results.config.budgets:
        report.plot_profile_blocks(curve, {name: s.cumulative for (name, tt), s in scheds.items() if tt == t},
                                   out / f"profile_blocks_T{t}.png", title=f"fitted CE profile, block starts at T={t}")
    report.write_report_files(results, out)


def run_eval(cfg: EvalConfig, out_dir: PathLike, *, log: Callable[[str], None] | None = None,
             progress: bool = False) -> EvalResults:
    """Run the whole evaluation; write ``profile.json``, ``schedules.json``, the results, plots and ``report.md``.

    Returns the results (also in ``OUT/results.json``). Finished parts found in ``OUT/cache`` with the same
    settings are reused. ``log`` receives one line per stage (default: standard error).
    """
    _check_config(cfg)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    run = _Run(cfg, out, log, progress)
    if max(cfg.budgets) > run.n:
        raise ValueError(f"budget T={max(cfg.budgets)} exceeds the generation length N={run.n}; lower the budgets")
    prof = run.profile()
    prof.save(out / "profile.json")
    curve = prof.curve(run.n)
    scheds = _build_schedules(run, curve)
    atomic_write_json(out / "schedules.json", {f"{k[0]}@T={k[1]}": s.to_dict() for k, s in scheds.items()})
    results = EvalResults(config=cfg, n_tokens=run.n, profile_data=run.profile_data, eval_data=run.eval_data,
                          data_description=f"{cfg.data} (profile: {cfg.profile_split}, eval: {cfg.eval_split})",
                          rows=run.heldout_rows(scheds) + _sample_rows(run, scheds, curve),
                          profile=_profile_summary(cfg, run.n, curve))
    results.sensitivity, results.references = _checks(run)
    if cfg.infill is not None:
        _infill(run, results, curve)
    _conclude(results, log)
    results.forward_rows = run.forward_rows
    results.wall_time_s = time.time() - t_start
    _write_outputs(results, out, prof, curve, scheds)
    return results
