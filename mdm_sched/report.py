"""Turn harness results into files a person reads: CSV/JSON of every number, PNG plots, a Markdown report.

Everything here is a pure function of the results dictionary built by :mod:`mdm_sched.harness`
(``results["rows"]``: one dict per (metric, order, schedule, T) with ``value``/``se``), so a report can be
re-rendered from ``results.json`` without touching a model.

Verdicts: a schedule *wins* (or *loses*) against another when the difference exceeds ``2 SE`` of the
difference (paired SE for the held-out metrics, which share sequences and orders; independent SEs
combined in quadrature for sample-side metrics); otherwise it *ties*.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_png, atomic_write_text, new_figure

__all__ = ["METRICS", "verdict", "calls_to_match", "write_csv", "plot_metric", "plot_profile_blocks",
           "summary_table", "render_markdown", "markdown_table"]

#: metric key -> (label, lower_is_better, unit)
METRICS: dict[str, tuple[str, bool, str]] = {
    "bound": ("held-out bound NLL_T", True, "nats/token"),
    "nll_M": ("held-out NLL, M-order estimate", True, "nats/token"),
    "path_kl": ("path KL to the N-step sampler", True, "nats/token"),
    "js2": ("2-mer spectrum JS to held-out", True, "bits"),
    "js3": ("3-mer spectrum JS to held-out", True, "bits"),
    "pos_js": ("per-position residue JS to held-out", True, "bits"),
    "judge_pll": ("judge log-likelihood (other model)", False, "nats/token"),
}


def verdict(diff: float, se: float, lower_is_better: bool, z: float = 2.0) -> str:
    """``"win"`` / ``"lose"`` / ``"tie"`` for ``diff = candidate - baseline`` with standard error ``se``."""
    if not np.isfinite(diff):
        return "n/a"
    if not np.isfinite(se) or abs(diff) <= z * se:
        return "tie"
    better = diff < 0 if lower_is_better else diff > 0
    return "win" if better else "lose"


def monotone_in_calls(values: Sequence[float], lower_is_better: bool) -> np.ndarray:
    """Least-squares fit of a metric that can only improve with more calls (isotonic in T).

    Sample-side metrics are noisy; without this a lucky small budget makes "calls to match" jump.
    """
    from .profile import isotonic_nonincreasing

    v = np.asarray(values, dtype=np.float64)
    return isotonic_nonincreasing(v) if lower_is_better else -isotonic_nonincreasing(-v)


def calls_to_match(budgets: Sequence[float], values: Sequence[float], target: float, lower_is_better: bool) -> float:
    """The (linearly interpolated) number of calls at which a metric curve first reaches ``target``.

    The curve is first made monotone in the number of calls (:func:`monotone_in_calls`).
    Returns ``-inf`` when the curve is already at least as good as ``target`` at its smallest budget
    (report "<= min budget"), ``inf`` when it never reaches it, NaN with no finite values.
    """
    t = np.asarray(budgets, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if t.size == 0 or not np.isfinite(target):
        return float("nan")
    order = np.argsort(t)
    t, v = t[order], monotone_in_calls(v[order], lower_is_better)
    good = (v <= target + 1e-12) if lower_is_better else (v >= target - 1e-12)
    if good[0]:
        return float("-inf")
    for i in range(1, t.size):
        if good[i]:
            v0, v1 = v[i - 1], v[i]
            w = 1.0 if v1 == v0 else (target - v0) / (v1 - v0)
            return float(t[i - 1] + min(max(w, 0.0), 1.0) * (t[i] - t[i - 1]))
    return float("inf")


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """All rows as CSV (union of keys as columns), atomically."""
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    atomic_write_text(path, buf.getvalue())


def plot_metric(rows: Sequence[Mapping[str, Any]], metric: str, path: str | Path, *, order: str = "random",
                references: Mapping[str, tuple[float, float]] | None = None) -> bool:
    """One metric against model calls, one line per schedule, error bars; horizontal lines for references
    (e.g. the N-step sampler). Returns False (nothing written) when there is no data."""
    sel = [r for r in rows if r["metric"] == metric and r["order"] == order and np.isfinite(r["value"])]
    if not sel:
        return False
    label, lower, unit = METRICS.get(metric, (metric, True, ""))
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(dict.fromkeys(r["schedule"] for r in sel)):
        pts = sorted((r["T"], r["value"], r["se"]) for r in sel if r["schedule"] == name)
        t, v, s = (np.array(c, dtype=float) for c in zip(*pts))
        ax.errorbar(t, v, yerr=np.nan_to_num(s), marker="o", ms=4, capsize=3, label=name, color=f"C{i}")
    for j, (name, (v, s)) in enumerate((references or {}).items()):
        if np.isfinite(v):
            ax.axhline(v, ls="--", lw=1, color=f"C{7 + j % 3}", label=f"{name} ({v:.3g})")
            if np.isfinite(s) and s > 0:
                ax.axhspan(v - s, v + s, color=f"C{7 + j % 3}", alpha=0.12)
    ax.set_xlabel("model calls T")
    ax.set_ylabel(f"{label} [{unit}]" + (" (lower is better)" if lower else " (higher is better)"))
    ax.set_title(f"{label} — order={order}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    atomic_write_png(fig, path)
    return True


def plot_profile_blocks(curve: np.ndarray, schedules: Mapping[str, Sequence[int]], path: str | Path, *,
                        title: str = "") -> None:
    """The fitted CE profile with each schedule's block boundaries ``K_t`` drawn as ticks, one row per schedule."""
    curve = np.asarray(curve, dtype=np.float64)
    n = curve.size
    fig = new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(n), curve, "-", color="k", lw=1.5, label="CE(i) fitted")
    lo, hi = float(curve.min()), float(curve.max())
    span = max(hi - lo, 1e-6)
    for i, (name, cum) in enumerate(schedules.items()):
        y = hi + span * (0.08 + 0.07 * i)
        ks = np.asarray(cum[:-1])
        ax.vlines(ks, y - 0.025 * span, y + 0.025 * span, color=f"C{i}", lw=1.2)
        ax.plot([], [], color=f"C{i}", label=f"{name}: block starts")
        ax.vlines(ks, lo, curve[ks], color=f"C{i}", lw=0.4, alpha=0.35)
    ax.set_xlabel("visible tokens i")
    ax.set_ylabel("nats per masked token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    atomic_write_png(fig, path)


def _fmt(v: float, s: float | None = None, digits: int = 4) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if s is None or not np.isfinite(s):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g} ± {s:.2g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_table(results: Mapping[str, Any], *, order: str = "random", candidate: str = "optimal",
                  baseline: str = "constant") -> str:
    """The plain-words table: per metric and budget, every schedule's value ± SE and the candidate's verdict
    against the baseline and against the best other schedule (``2 SE`` rule)."""
    rows = [r for r in results["rows"] if r["order"] == order]
    scheds = list(dict.fromkeys(r["schedule"] for r in rows))
    sens = results.get("sensitivity", {})
    header = ["metric", "T", *scheds, f"{candidate} vs {baseline}", f"{candidate} vs best other"]
    body = []
    for metric in [m for m in METRICS if any(r["metric"] == m for r in rows)]:
        label, lower, unit = METRICS[metric]
        for t in sorted({r["T"] for r in rows if r["metric"] == metric}):
            cell = {r["schedule"]: r for r in rows if r["metric"] == metric and r["T"] == t}
            vals = [_fmt(cell[s]["value"], cell[s]["se"]) if s in cell else "–" for s in scheds]
            cmp_base = cmp_best = "–"
            if candidate in cell and baseline in cell:
                d, s = _diff(cell[candidate], cell[baseline])
                cmp_base = f"{verdict(d, s, lower)} ({d:+.3g} ± {s:.2g})"
                others = [o for o in cell if o != candidate and np.isfinite(cell[o]["value"])]
                if others:
                    best = min(others, key=lambda o: cell[o]["value"] if lower else -cell[o]["value"])
                    d2, s2 = _diff(cell[candidate], cell[best])
                    cmp_best = f"{verdict(d2, s2, lower)} vs {best} ({d2:+.3g} ± {s2:.2g})"
            if metric in sens and not sens[metric].get("sensitive", True):
                cmp_base = cmp_best = "cannot judge (insensitive)"
            body.append([f"{label} [{unit}]", t, *vals, cmp_base, cmp_best])
    return markdown_table(header, body)


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float]:
    """Difference a - b and its SE: paired when both carry per-unit differences to the same baseline."""
    d = a["value"] - b["value"]
    paired = a.get("paired_with_constant")
    if paired is not None and b.get("paired_with_constant") is not None:
        # both hold (diff to constant, se of that diff): a - b = (a - c) - (b - c); if b is the baseline
        # itself its paired diff is exactly 0 with SE 0, so this is the paired SE of a - c.
        _da, sa = paired
        _db, sb = b["paired_with_constant"]
        if sb == 0.0 or sa == 0.0:
            return d, float(max(sa, sb))
        return d, float(math.hypot(sa, sb))  # conservative for two non-baseline schedules
    return d, float(math.hypot(a["se"], b["se"]))


def render_markdown(results: Mapping[str, Any]) -> str:
    """The full Markdown report."""
    cfg = results["config"]
    out = [f"# mdm_sched evaluation: {cfg['model']} on {results.get('data_description', cfg.get('data'))}", ""]
    out.append(f"Wall time of this run: {results.get('wall_time_s', float('nan')):.0f} s (model rows evaluated in "
               f"this run: {results.get('forward_rows', 'n/a')}; parts found in the output folder's cache were "
               f"computed by an earlier run and reused). Generation length N = "
               f"{results['n_tokens']} (sequences shorter than N dropped, longer ones cropped to their first N "
               f"tokens). Profile fitted on split `{cfg['profile_split']}` ({results.get('n_profile_sequences')} "
               f"sequences), everything else evaluated on split `{cfg['eval_split']}` "
               f"({results.get('n_eval_sequences')} sequences). Budgets T = {list(cfg['budgets'])}; "
               f"{cfg['num_samples']} samples per (schedule, T, order); held-out metrics use {cfg['n_orders']} "
               f"random orders per sequence, common to every schedule (paired comparisons).")
    out.append("")
    out.append("Verdicts use the 2-SE rule: *win*/*lose* only when the difference exceeds twice its standard "
               "error, otherwise *tie*. The schedule theory (THEORY.md) optimises the **held-out bound**; "
               "sample-side metrics (path KL, spectra, judge) measure other things and may disagree.")
    if results.get("caveats"):
        out += ["", "**Caveats.** " + " ".join(results["caveats"])]
    prof = results.get("profile", {})
    if prof:
        out += ["", "## Profile and predicted gains", "",
                f"CE(0) = {prof.get('ce0', float('nan')):.3f}, CE(N-1) = {prof.get('ceN', float('nan')):.3f} nats; "
                f"N-step bound on the fitted curve = {prof.get('bound_N', float('nan')):.4f} nats/token. "
                "Predicted gain of the optimum (J(constant)/J(optimal) on the fitted curve) per budget: "
                + ", ".join(f"T={t}: {g:.2f}x" for t, g in prof.get("predicted_gain", {}).items()) + ".",
                "", "![profile](profile.png)"]
        for t in cfg["budgets"]:
            out.append(f"![blocks T={t}](profile_blocks_T{t}.png)")
    out += ["", "## Summary (order = random)", "", summary_table(results, order="random")]
    if any(r["order"] == "confidence" for r in results["rows"]):
        out += ["", "## Confidence order", "",
                "Same schedules, positions chosen by the model's confidence instead of at random (the theory "
                "does not cover this order; path KL is not defined for it).", "",
                summary_table(results, order="confidence")]
        if results.get("confidence_notes"):
            out += [""] + [f"- {n}" for n in results["confidence_notes"]]
    sens = results.get("sensitivity", {})
    if sens:
        body = [[METRICS.get(m, (m,))[0], _fmt(s["one_call"], s["one_call_se"]), _fmt(s["n_step"], s["n_step_se"]),
                 f"{s['z']:.1f}", "yes" if s["sensitive"] else "**no: this metric cannot judge schedules here**"]
                for m, s in sens.items()]
        out += ["", "## Is each sample-side metric sensitive at all?", "",
                "1-call sampler (all tokens from their marginals) against the N-step sampler; a metric is "
                f"called sensitive when they differ by more than {results.get('sensitivity_z', 5)} SE.", "",
                markdown_table(["metric", "1 call", "N calls", "|diff| / SE", "sensitive"], body)]
    refs = results.get("references", {})
    if refs:
        body = [[METRICS.get(m, (m,))[0], *(_fmt(*refs[m].get(k, (float("nan"), float("nan"))))
                                             for k in ("n_step", "one_call", "heldout"))] for m in refs]
        out += ["", "## Reference values", "",
                markdown_table(["metric", "N-step sampler", "1-call sampler", "held-out data itself"], body)]
    saved = results.get("calls_saved", [])
    if saved:
        body = [[METRICS.get(r["metric"], (r["metric"],))[0], r["schedule"], r["reference_T"],
                 _fmt(r["constant_value"]), r["calls_text"], r["saved_text"]] for r in saved]
        out += ["", "## Calls saved", "",
                "Budget at which each schedule matches the constant schedule's quality at the reference budget "
                "(each curve first fitted to be monotone in the number of calls, then interpolated linearly between "
                "measured budgets; point estimates, see the error bars above; metrics that failed the sensitivity "
                "check are left out). Where the constant schedule seems to \"save\" calls against itself, the metric's "
                "fitted curve is flat there: it cannot resolve budgets that close, and neither can the other rows.", "",
                markdown_table(["metric", "schedule", "reference T", "constant's value", "calls to match",
                                "calls saved"], body)]
    theory = results.get("theory")
    if theory:
        out += ["", "## Theory reproduction on exact oracles", "", theory]
    out += ["", "## Plots", ""]
    out += [f"![{m}](plot_{m}_random.png)" for m in METRICS if any(r["metric"] == m for r in results["rows"])]
    if results.get("findings"):
        out += ["", "## Findings", ""] + [f"- {f}" for f in results["findings"]]
    return "\n".join(out) + "\n"
