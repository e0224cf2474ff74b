"""Theory reproduction on exact oracles (docs/theory.md §3 and §4): predicted against measured gains.

:func:`oracle_theory` builds the table that ``mdm-sched demo`` appends to its report and that
``eval/theory.py`` prints:

* Tabular oracles (small N, everything exact): per schedule the exact factorization error, the
  bound's excess ``E_order KL = sum_t k_t CE(K_{t-1}) - H`` and the exact ``KL(pi || q)``; the predicted
  gain ``J(constant)/J(optimal)`` on the exact entropy profile and the realised gain in exact KL.
* Markov chains (long N, non-linear profiles): the profile estimated by Monte Carlo, the optimal schedule
  built on that estimate; predicted gain (on the estimate) against the measured gain in order-averaged KL
  ``N * bound - H`` (held-out block estimator on fresh samples, exact H), with SEs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import metrics
from . import schedules as _schedules
from .oracle import MarkovChainOracle, TabularOracle
from .report import markdown_table
from .results import TheoryRow

__all__ = ["oracle_theory", "theory_table"]

_PAIR = ("constant", "optimal")


def _chain_entropy(chain: MarkovChainOracle) -> float:
    """Exact H of a homogeneous Markov chain: H(x_1) + sum_t E H(trans[x_t])."""
    p = chain.initial.double()
    trans = chain.transition.double()
    row_h = -(trans * trans.clamp_min(1e-300).log()).sum(1)
    h = float(-(p * p.clamp_min(1e-300).log()).sum())
    for _ in range(chain.n_tokens - 1):
        h += float((p * row_h).sum())
        p = p @ trans
    return h


def _tabular_rows(label: str, tab: TabularOracle) -> list[TheoryRow]:
    """Exact rows: factorization error, order-averaged KL and exact KL for constant and optimal at T = 2, 3."""
    curve = np.minimum.accumulate(tab.entropy_profile())
    rows = []
    for t in (2, 3):
        exact = {name: metrics.oracle_exact(tab, _schedules.build(name, tab.n_tokens, t, curve)) for name in _PAIR}
        pred = float(_schedules.predicted_gain(curve, t))
        gain = exact["constant"]["fact_error"] / max(exact["optimal"]["fact_error"], 1e-300)
        kl_gain = exact["constant"]["kl"] / max(exact["optimal"]["kl"], 1e-300)
        for name, v in exact.items():
            rows.append(TheoryRow(oracle=label, n_tokens=tab.n_tokens, budget=t, schedule=name,
                                  fact_error=float(v["fact_error"]), order_kl=float(v["order_kl"]),
                                  predicted_gain=pred, measured_gain=float(gain), exact_kl=float(v["kl"]),
                                  kl_gain=float(kl_gain)))
    return rows


def _estimated_curve(chain: MarkovChainOracle, n_samples: int, generator: torch.Generator) -> np.ndarray:
    """A Monte Carlo entropy profile at 24 levels, isotonic fit, interpolated to every visible count."""
    from .profile import isotonic_nonincreasing

    n = chain.n_tokens
    levels = np.unique(np.round(np.linspace(0, n - 1, 24)).astype(int))
    lv, mean, se = chain.entropy_profile(levels=levels, n_samples=n_samples, generator=generator)
    fit = isotonic_nonincreasing(mean, 1.0 / np.maximum(se, 1e-6) ** 2)
    return np.minimum.accumulate(np.interp(np.arange(n), lv, fit))


def _chain_rows(label: str, chain: MarkovChainOracle, budgets: tuple[int, ...], n_prof: int, n_eval: int,
                seed: int) -> list[TheoryRow]:
    """Measured rows: schedules on an estimated profile, order-averaged KL from the held-out block estimator."""
    g = torch.Generator().manual_seed(seed)
    n = chain.n_tokens
    curve = _estimated_curve(chain, n_prof, g)
    h = _chain_entropy(chain)
    x = chain.sample(n_eval, generator=g)
    rows = []
    for t in budgets:
        sc = {name: _schedules.build(name, n, t, curve) for name in _PAIR}
        res = metrics.heldout_likelihood(chain, x, sc, n_orders=1, generator=g, batch_size=4096)
        est = {k: metrics.mean_se(-v[:, 0]) for k, v in res.logq.items()}  # per-sequence -log q_sigma(x)
        kl = {k: (m - h, s) for k, (m, s) in est.items()}  # E_order KL per sequence
        (kc, sc_), (ko, so) = kl["constant"], kl["optimal"]
        gain = kc / ko if ko > 0 else float("inf")
        # delta method for the ratio (SEs of the two estimates, correlation ignored: conservative)
        gse = abs(gain) * math.hypot(sc_ / max(kc, 1e-12), so / max(ko, 1e-12))
        pred = float(_schedules.predicted_gain(curve, t))
        for name in _PAIR:
            rows.append(TheoryRow(oracle=label, n_tokens=n, budget=t, schedule=name,
                                  fact_error=float(_schedules.cost(curve, sc[name])), order_kl=float(kl[name][0]),
                                  order_kl_se=float(kl[name][1]), predicted_gain=pred, measured_gain=float(gain),
                                  gain_se=float(gse)))
    return rows


def theory_table(rows: list[TheoryRow]) -> str:
    """The rows of :func:`oracle_theory` as a Markdown table with a sentence on how to read it."""
    header = ["oracle", "N", "T", "schedule", "E_fact (predicted)", "E_order KL = bound - H", "exact KL(pi||q)",
              "predicted gain", "measured gain"]
    body = []
    for r in rows:
        okl = f"{r.order_kl:.4g}" + (f" ± {r.order_kl_se:.2g}" if r.order_kl_se is not None else "")
        meas = f"{r.measured_gain:.2f}" + (f" ± {r.gain_se:.2f}" if r.gain_se else "")
        if r.kl_gain is not None and np.isfinite(r.kl_gain):
            meas += f" (exact-KL gain {r.kl_gain:.2f})"
        exact = f"{r.exact_kl:.4g}" if r.exact_kl is not None and np.isfinite(r.exact_kl) else "–"
        body.append([r.oracle, r.n_tokens, r.budget, r.schedule, f"{r.fact_error:.4g}", okl, exact,
                     f"{r.predicted_gain:.2f}", meas])
    return ("Tabular rows are exact (perfect model: the bound's excess equals the factorization error, and "
            "exact KL(pi||q) <= bound - H). Chain rows: profile estimated by Monte Carlo, schedules built on the "
            "estimate, gain measured with the held-out block estimator on fresh samples (nats per sequence).\n\n"
            + markdown_table(header, body))


def oracle_theory(quick: bool = True, seed: int = 0) -> tuple[str, list[TheoryRow]]:
    """Predicted against measured gains, and the bound against exact KL, on exact oracles.

    ``quick``: chains of 48 tokens at T = 4, 8 (else 128 tokens at T = 4, 8, 16, more samples).
    Returns (Markdown table, rows).
    """
    tabs = [("tabular V=3 N=6 Dirichlet(0.2)", TabularOracle.random(3, 6, concentration=0.2, seed=seed)),
            ("chain V=3 N=7 sticky (tabulated)", MarkovChainOracle.random(3, 7, stickiness=0.7, seed=seed).to_tabular())]
    rows = [r for label, tab in tabs for r in _tabular_rows(label, tab)]
    n, n_prof, n_eval = (48, 300, 400) if quick else (128, 2000, 3000)
    budgets = (4, 8) if quick else (4, 8, 16)
    chains = [("chain V=4 sticky 0.9 (saturating)", MarkovChainOracle.random(4, n, stickiness=0.9, seed=seed)),
              ("chain V=6 sticky 0.6", MarkovChainOracle.random(6, n, stickiness=0.6, seed=seed + 1))]
    for label, chain in chains:
        rows += _chain_rows(label, chain, budgets, n_prof, n_eval, seed)
    return theory_table(rows), rows
