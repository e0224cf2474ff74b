"""Turn harness results into files a person reads, and say in words what they show.

Everything here is a pure function of an :class:`~mdm_sched.results.EvalResults` (typed rows, one per
(metric, order, decoder, budget) with value and SE), so a report can be re-rendered from ``results.json``
without touching a model: ``render_markdown(EvalResults.load("results.json"))``. This module owns all of the
analysis prose: verdicts, the findings, the notes on other orders, "calls saved" and the report's sections.

Verdicts: a decoder *wins* (or *loses*) against another when the difference exceeds ``2 SE`` of the
difference (paired SE when both rows carry a paired difference to the same baseline, as the held-out
metrics do: they share sequences and orders; independent SEs combined in quadrature otherwise); otherwise
it *ties*.
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
from ._types import PathLike
from .results import UNCONDITIONAL, CallsSaved, Estimate, EvalConfig, EvalResults, ProfileSummary, ResultRow, TaskSummary

__all__ = ["METRICS", "CANDIDATE", "BASELINE", "GOAL_RATIO", "verdict", "monotone_in_calls", "calls_to_match",
           "write_csv", "plot_metric", "plot_profile_blocks", "write_metric_plots", "write_report_files", "summary_table",
           "render_markdown", "markdown_table", "findings", "confidence_notes", "calls_saved", "data_caveats",
           "infill_calls_saved", "infill_findings", "matched_calls_table", "optimal_vs_adaptive", "write_infill_plots"]

#: metric key -> (label, lower_is_better, unit); a new metric (e.g. an infilling exact match) is one entry here.
METRICS: dict[str, tuple[str, bool, str]] = {
    "bound": ("held-out bound NLL_T", True, "nats/token"),
    "nll_M": ("held-out NLL, M-order estimate", True, "nats/token"),
    "path_kl": ("path KL to the N-step sampler", True, "nats/token"),
    "js2": ("2-mer spectrum JS to held-out", True, "bits"),
    "js3": ("3-mer spectrum JS to held-out", True, "bits"),
    "pos_js": ("per-position residue JS to held-out", True, "bits"),
    "judge_pll": ("judge log-likelihood (other model)", False, "nats/token"),
    "recovery": ("infilled residues recovered", False, "fraction"),
    "exact_match": ("whole region exact match", False, "fraction"),
    "cond_nll": ("conditional NLL of the truth, bound", True, "nats/token"),
    "cond_nll_M": ("conditional NLL of the truth, M-order estimate", True, "nats/token"),
}
#: the decoder the report argues for, and the one it is compared with
CANDIDATE = "optimal"
BASELINE = "constant"
#: the issue's goal: the best decoder needs this many times fewer calls than the baseline for the same quality
GOAL_RATIO = 1.3


def _meta(metric: str) -> tuple[str, bool, str]:
    return METRICS.get(metric, (metric, True, ""))


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


def write_csv(rows: Iterable[ResultRow], path: PathLike) -> None:
    """All rows as CSV (union of :meth:`ResultRow.to_dict` keys as columns, per-unit lists left to the JSON),
    atomically."""
    dicts = [{k: v for k, v in r.to_dict().items() if not isinstance(v, list)} for r in rows]
    keys: list[str] = []
    for r in dicts:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in dicts:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
    atomic_write_text(path, buf.getvalue())


def plot_metric(rows: Sequence[ResultRow], metric: str, path: PathLike, *, order: str = "random",
                references: Mapping[str, Estimate] | None = None) -> bool:
    """One metric against the mean number of model calls, one line per decoder, error bars both ways;
    horizontal lines for references (e.g. the N-step sampler). Returns False (nothing written) without data."""
    sel = [r for r in rows if r.metric == metric and r.order == order and np.isfinite(r.value)]
    if not sel:
        return False
    label, lower, unit = _meta(metric)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(dict.fromkeys(r.decoder for r in sel)):
        pts = sorted((r.calls, r.value, r.se, r.calls_se) for r in sel if r.decoder == name)
        c, v, s, cs = (np.array(col, dtype=float) for col in zip(*pts))
        ax.errorbar(c, v, yerr=np.nan_to_num(s), xerr=np.nan_to_num(cs) if cs.any() else None, marker="o", ms=4,
                    capsize=3, label=name, color=f"C{i}")
    for j, (name, ref) in enumerate((references or {}).items()):
        if np.isfinite(ref.value):
            ax.axhline(ref.value, ls="--", lw=1, color=f"C{7 + j % 3}", label=f"{name} ({ref.value:.3g})")
            if np.isfinite(ref.se) and ref.se > 0:
                ax.axhspan(ref.value - ref.se, ref.value + ref.se, color=f"C{7 + j % 3}", alpha=0.12)
    calls = [r.calls for r in sel if r.calls]
    if calls and max(calls) > 8 * min(calls):  # 1 call to one call per token: a log axis shows both ends
        ax.set_xscale("log")
    ax.set_xlabel("mean model calls per sequence")
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


def write_metric_plots(results: EvalResults, out_dir: PathLike) -> None:
    """``plot_<metric>_<order>.png`` for every metric and order (random order: with the reference levels)."""
    for order in results.config.orders:
        for metric in _metrics_in(results.rows_of()):
            refs: dict[str, Estimate] = {}
            ref = results.references_of(metric)
            if order == "random" and ref is not None:
                for label, est in (("N-step sampler", ref.n_step), ("held-out data", ref.heldout)):
                    if est is not None:
                        refs[label] = est
            plot_metric(results.rows_of(), metric, Path(out_dir) / f"plot_{metric}_{order}.png", order=order,
                        references=refs)


def write_infill_plots(results: EvalResults, out_dir: PathLike) -> None:
    """``plot_infill_<metric>_<order>.png``: every decoder as a curve of the metric against mean calls made."""
    if results.infill is None:
        return
    rows = results.rows_of(results.infill.name)
    for order in dict.fromkeys(r.order for r in rows):
        for metric in _metrics_in(r for r in rows if r.order == order):
            plot_metric(rows, metric, Path(out_dir) / f"plot_infill_{metric}_{order}.png", order=order)


def write_report_files(results: EvalResults, out_dir: PathLike) -> None:
    """``results.json``, ``results.csv``, the metric plots, ``report.md`` and ``summary.md`` in ``out_dir``."""
    out = Path(out_dir)
    results.save(out / "results.json")
    write_csv(results.rows, out / "results.csv")
    write_metric_plots(results, out)
    write_infill_plots(results, out)
    atomic_write_text(out / "report.md", render_markdown(results))
    atomic_write_text(out / "summary.md", summary_table(results) + "\n")


# --------------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------------

def _diff(a: ResultRow, b: ResultRow) -> tuple[float, float]:
    """Difference a - b and its SE: paired when both carry differences to the same baseline."""
    d = a.value - b.value
    if a.paired is not None and b.paired is not None and a.paired.baseline == b.paired.baseline:
        # a - b = (a - c) - (b - c); if b is the baseline itself its paired diff is exactly 0 with SE 0,
        # so this is the paired SE of a - c.
        sa, sb = a.paired.se, b.paired.se
        if sa == 0.0 or sb == 0.0:
            return d, float(max(sa, sb))
        return d, float(math.hypot(sa, sb))  # conservative for two non-baseline decoders
    return d, float(math.hypot(a.se, b.se))


def _cells(rows: Iterable[ResultRow], order: str, metric: str) -> dict[int, dict[str, ResultRow]]:
    """Rows of one (order, metric) by budget, then decoder (rows without a budget are left out)."""
    out: dict[int, dict[str, ResultRow]] = {}
    for r in rows:
        if r.order == order and r.metric == metric and r.budget is not None:
            out.setdefault(r.budget, {})[r.decoder] = r
    return dict(sorted(out.items()))


def _compare(cell: Mapping[str, ResultRow], candidate: str, other: str, lower: bool) -> tuple[str, str]:
    """(verdict, "(diff ± se)") of ``candidate`` against ``other``."""
    d, s = _diff(cell[candidate], cell[other])
    return verdict(d, s, lower), f"({d:+.3g} ± {s:.2g})"


def _summary_line(cell: Mapping[str, ResultRow], candidate: str, baseline: str, lower: bool) -> tuple[str, str]:
    """(candidate vs baseline, candidate vs the best other decoder) for one budget."""
    if candidate not in cell or baseline not in cell:
        return "–", "–"
    v, detail = _compare(cell, candidate, baseline, lower)
    others = [o for o in cell if o != candidate and np.isfinite(cell[o].value)]
    if not others:
        return f"{v} {detail}", "–"
    best = min(others, key=lambda o: cell[o].value if lower else -cell[o].value)
    v2, detail2 = _compare(cell, candidate, best, lower)
    return f"{v} {detail}", f"{v2} vs {best} {detail2}"


def _metrics_in(rows: Iterable[ResultRow]) -> list[str]:
    """The metrics present in ``rows``: known ones in :data:`METRICS` order, then any others as they come."""
    seen = dict.fromkeys(r.metric for r in rows)
    return [m for m in METRICS if m in seen] + [m for m in seen if m not in METRICS]


def summary_table(results: EvalResults, *, order: str = "random", candidate: str = CANDIDATE,
                  baseline: str = BASELINE) -> str:
    """The plain-words table: per metric and budget, every decoder's value ± SE and the candidate's verdict
    against the baseline and against the best other decoder (``2 SE`` rule)."""
    rows = [r for r in results.rows_of() if r.order == order]
    decoders = list(dict.fromkeys(r.decoder for r in rows))
    header = ["metric", "T", *decoders, f"{candidate} vs {baseline}", f"{candidate} vs best other"]
    body = []
    for metric in _metrics_in(rows):
        label, lower, unit = _meta(metric)
        for t, cell in _cells(rows, order, metric).items():
            vals = [_fmt(cell[s].value, cell[s].se) if s in cell else "–" for s in decoders]
            cmp_base, cmp_best = _summary_line(cell, candidate, baseline, lower)
            if _insensitive(results, metric):
                cmp_base = cmp_best = "cannot judge (insensitive)"
            body.append([f"{label} [{unit}]", t, *vals, cmp_base, cmp_best])
    return markdown_table(header, body)


def _tally(rows: Iterable[ResultRow], order: str, metric: str, candidate: str = CANDIDATE,
           baseline: str = BASELINE) -> dict[str, list[int]]:
    """The budgets at which ``candidate`` wins, ties and loses against ``baseline``."""
    lower = _meta(metric)[1]
    tally: dict[str, list[int]] = {"win": [], "tie": [], "lose": []}
    for t, cell in _cells(rows, order, metric).items():
        if candidate in cell and baseline in cell:
            v = verdict(*_diff(cell[candidate], cell[baseline]), lower)
            if v in tally:
                tally[v].append(t)
    return tally


def _tally_text(rows: Iterable[ResultRow], order: str, metric: str) -> str:
    """'wins at T=5, 10; ties at T=none; loses at T=none' for the candidate against the baseline."""
    t = _tally(rows, order, metric)
    part = lambda ts: ", ".join(map(str, ts)) if ts else "none"
    return f"wins at T={part(t['win'])}; ties at T={part(t['tie'])}; loses at T={part(t['lose'])}"


def _insensitive(results: EvalResults, metric: str) -> bool:
    check = results.sensitivity_of(metric)
    return check is not None and not check.sensitive


def findings(results: EvalResults) -> list[str]:
    """The report's conclusions under random order: predicted gains, then the candidate's tally per metric."""
    if CANDIDATE not in results.config.schedules or BASELINE not in results.config.schedules:
        return []
    out = []
    if results.profile is not None and results.profile.predicted_gain:
        gains = results.profile.predicted_gain
        out.append("Predicted gain of the optimum on the fitted profile: "
                   + ", ".join(f"{g:.2f}x at T={t}" for t, g in gains.items())
                   + (" (close to 1: the profile is nearly linear, little to gain)." if max(gains.values()) < 1.15
                      else "."))
    for metric in _metrics_in(r for r in results.rows_of() if r.order == "random"):
        label = _meta(metric)[0]
        if _insensitive(results, metric):
            out.append(f"{label}: cannot judge schedules (does not separate 1 call from N calls).")
        else:
            out.append(f"{label}: {CANDIDATE} vs {BASELINE} {_tally_text(results.rows_of(), 'random', metric)}.")
    return out


def confidence_notes(results: EvalResults) -> list[str]:
    """The same tally under every non-random order (the schedules were chosen for random order)."""
    notes = []
    for order in results.config.orders:
        if order == "random":
            continue
        for metric in _metrics_in(r for r in results.rows_of() if r.order == order):
            label = _meta(metric)[0]
            if _insensitive(results, metric):
                notes.append(f"order={order}, {label}: cannot judge schedules (insensitive under random order).")
            else:
                notes.append(f"order={order}, {label}: {CANDIDATE} (chosen for random order) vs {BASELINE} "
                             f"{_tally_text(results.rows_of(), order, metric)}.")
    return notes


def _calls_saved_one(rows: Sequence[ResultRow], metric: str, decoder: str, target: float,
                     reference_budget: int) -> CallsSaved | None:
    pts = sorted((r.calls, r.value) for r in rows if r.decoder == decoder)
    if not pts:
        return None
    t_star = calls_to_match([p[0] for p in pts], [p[1] for p in pts], target, _meta(metric)[1])
    return CallsSaved(metric=metric, decoder=decoder, baseline=BASELINE, reference_budget=reference_budget,
                      baseline_value=target, calls_to_match=t_star, lowest_calls=pts[0][0], highest_calls=pts[-1][0])


def calls_saved(results: EvalResults, reference_budget: int) -> list[CallsSaved]:
    """Calls each decoder needs to match the baseline's quality at ``reference_budget`` (random order).

    Every curve (metric against mean calls made) is first fitted to be monotone in the number of calls.
    Metrics that failed the sensitivity check are left out: they cannot rank decoders at all.
    """
    out = []
    for metric in _metrics_in(results.rows_of()):
        if _insensitive(results, metric):
            continue
        sel = [r for r in results.rows_of() if r.metric == metric and r.order == "random"]
        base = sorted((r.calls, r.value, r.budget) for r in sel if r.decoder == BASELINE)
        budgets = [b[2] for b in base]
        if reference_budget not in budgets:
            continue
        fitted = monotone_in_calls([b[1] for b in base], _meta(metric)[1])
        target = float(fitted[budgets.index(reference_budget)])
        for decoder in dict.fromkeys(r.decoder for r in sel):
            entry = _calls_saved_one(sel, metric, decoder, target, reference_budget)
            if entry is not None:
                out.append(entry)
    return out


def _calls_saved_text(c: CallsSaved) -> tuple[str, str]:
    """('calls to match', 'calls saved') in words."""
    ref, t = c.reference_calls if c.reference_calls is not None else c.reference_budget, c.calls_to_match
    if t == float("-inf"):
        return f"<= {c.lowest_calls:.3g}", f">= {ref - c.lowest_calls:.3g} ({(ref - c.lowest_calls) / ref:.0%})"
    if t == float("inf"):
        return f"> {c.highest_calls:.3g}", "none (never matches)"
    if math.isnan(t):
        return "–", "–"
    return f"{t:.1f}", f"{ref - t:+.3g} ({(ref - t) / ref:+.0%})"


# --------------------------------------------------------------------------------------------------
# infilling at matched model calls
# --------------------------------------------------------------------------------------------------

def _points_of(rows: Iterable[ResultRow], decoder: str) -> list[ResultRow]:
    """One decoder's rows sorted by mean calls (fixed budgets and adaptive settings alike)."""
    return sorted((r for r in rows if r.decoder == decoder), key=lambda r: r.calls or 0.0)


def _infill_sensitive(results: EvalResults, metric: str, order: str) -> bool:
    task = results.infill.name if results.infill is not None else UNCONDITIONAL
    check = results.sensitivity_of(metric, order=order, task=task)
    return check is not None and check.sensitive


def infill_calls_saved(results: EvalResults) -> list[CallsSaved]:
    """Per order and sensitive metric: the calls each decoder needs to reach the baseline's quality at each budget
    of ``infill_budgets`` (all curves are metric against *mean calls made*, fitted monotone, then interpolated).

    The reference is the calls the baseline itself needs for that quality on its fitted curve: where the curve is
    flat (a later budget no better than an earlier one) the earlier budget's calls count, not the later budget, so a
    plateau cannot inflate the saving. Budgets that repeat an earlier reference quality are skipped. Metrics whose
    1-call and one-call-per-token values do not differ (the sensitivity check) are left out.
    """
    if results.infill is None:
        return []
    task = results.infill.name
    rows = results.rows_of(task)
    out = []
    for order in dict.fromkeys(r.order for r in rows):
        for metric in _metrics_in(r for r in rows if r.order == order):
            if not _infill_sensitive(results, metric, order):
                continue
            sel = [r for r in rows if r.metric == metric and r.order == order]
            out += _saved_against_baseline(results, sel, metric, order, task)
    return out


def _saved_against_baseline(results: EvalResults, sel: Sequence[ResultRow], metric: str, order: str,
                            task: str) -> list[CallsSaved]:
    base = _points_of(sel, BASELINE)
    lower = _meta(metric)[1]
    calls = [float(r.calls or 0.0) for r in base]
    fitted = monotone_in_calls([r.value for r in base], lower)
    out, seen = [], set()
    for i, ref in enumerate(base):
        target = float(fitted[i])
        if ref.budget not in results.config.infill_budgets or target in seen:
            continue
        seen.add(target)
        ref_calls = calls_to_match(calls, [r.value for r in base], target, lower)
        ref_calls = calls[0] if ref_calls == float("-inf") else ref_calls
        for decoder in dict.fromkeys(r.decoder for r in sel):
            pts = _points_of(sel, decoder)
            if decoder == BASELINE or not pts:
                continue
            t_star = calls_to_match([p.calls for p in pts], [p.value for p in pts], target, lower)
            out.append(CallsSaved(metric, decoder, BASELINE, int(ref.budget), target, t_star, float(pts[0].calls),
                                  float(pts[-1].calls), order=order, task=task, reference_calls=float(ref_calls),
                                  interval=_ratio_interval(base, pts, i, lower)))
    return out


#: Resamples of the paired bootstrap behind each calls-saved interval, and its coverage.
BOOTSTRAP_RESAMPLES = 300
INTERVAL_LEVEL = 0.9


def _unit_arrays(rows: Sequence[ResultRow]) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit calls and values of each row as ``[rows, units]`` arrays (a row without per-unit calls repeats its
    mean calls)."""
    n = len(rows[0].per_unit or ())
    calls = np.array([r.calls_per_unit if r.calls_per_unit else [float(r.calls or 0.0)] * n for r in rows], float)
    return calls, np.array([r.per_unit for r in rows], dtype=np.float64)


def _curve_at(units: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[list[float], list[float]]:
    """(mean calls, mean value) of each row over the resampled units ``idx``."""
    calls, values = units
    return calls[:, idx].mean(1).tolist(), values[:, idx].mean(1).tolist()


def _ratio_interval(base: Sequence[ResultRow], pts: Sequence[ResultRow], i: int,
                    lower: bool) -> tuple[float, float] | None:
    """A paired bootstrap interval of "fewer calls" (the baseline's calls for its fitted value at point ``i`` over
    the decoder's calls to match it): units (examples) are resampled jointly for every curve and the whole
    computation is redone. A decoder already matching at its fewest calls counts at that lower bound; one never
    matching counts as 0. ``None`` when the rows carry no per-unit values of one length."""
    rows = [*base, *pts]
    sizes = {len(r.per_unit) for r in rows if r.per_unit is not None}
    if any(r.per_unit is None for r in rows) or len(sizes) != 1:
        return None
    n = sizes.pop()
    base_units, pts_units = _unit_arrays(base), _unit_arrays(pts)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, n, n)
        b_calls, b_vals = _curve_at(base_units, idx)
        target = float(monotone_in_calls(b_vals, lower)[i])
        ref = calls_to_match(b_calls, b_vals, target, lower)
        ref = b_calls[0] if ref == float("-inf") else ref
        p_calls, p_vals = _curve_at(pts_units, idx)
        t = calls_to_match(p_calls, p_vals, target, lower)
        ratios.append(ref / p_calls[0] if t == float("-inf") else 0.0 if t == float("inf") else ref / t)
    if np.isnan(ratios).all():
        return None
    lo, hi = np.nanquantile(ratios, [(1 - INTERVAL_LEVEL) / 2, (1 + INTERVAL_LEVEL) / 2])
    return float(lo), float(hi)


def _interpolated(rows: Sequence[ResultRow], calls: float, lower: bool) -> tuple[float, float] | None:
    """A decoder's monotone-fitted value and (interpolated) SE at ``calls``; ``None`` outside its measured range."""
    c = np.array([r.calls for r in rows], dtype=np.float64)
    if c.size == 0 or not c[0] <= calls <= c[-1]:
        return None
    v = monotone_in_calls([r.value for r in rows], lower)
    return float(np.interp(calls, c, v)), float(np.interp(calls, c, [r.se for r in rows]))


def optimal_vs_adaptive(results: EvalResults, order: str, metric: str) -> dict[str, dict[str, list[float]]]:
    """For each adaptive decoder: the mean calls of its settings where :data:`CANDIDATE` (interpolated at the same
    mean calls) wins, ties or loses against it (2-SE rule; settings outside the candidate's range are skipped)."""
    if results.infill is None:
        return {}
    sel = [r for r in results.rows_of(results.infill.name) if r.metric == metric and r.order == order]
    cand = _points_of(sel, CANDIDATE)
    lower = _meta(metric)[1]
    out: dict[str, dict[str, list[float]]] = {}
    if not cand:  # the run did not compare the candidate on this task: nothing to say
        return out
    for decoder in dict.fromkeys(r.decoder for r in sel if r.parameter is not None):
        tally: dict[str, list[float]] = {"win": [], "tie": [], "lose": []}
        for p in _points_of(sel, decoder):
            at = _interpolated(cand, float(p.calls or 0.0), lower)
            if at is not None:
                v = verdict(at[0] - p.value, math.hypot(at[1], p.se), lower)
                if v in tally:
                    tally[v].append(round(float(p.calls or 0.0), 2))
        if any(tally.values()):  # no setting within the candidate's range of calls: no comparison to report
            out[decoder] = tally
    return out


def _setting(r: ResultRow) -> str:
    """``T=4`` for a fixed schedule, ``tau=0.9`` for an adaptive rule (its parameter's name from the decoder list)."""
    if r.parameter is None:
        return f"T={r.budget}"
    from .decoders import DECODERS

    name = DECODERS[r.decoder].parameter if r.decoder in DECODERS else "parameter"
    return f"{name}={r.parameter:g}"


def matched_calls_table(results: EvalResults, order: str) -> str:
    """Every (decoder, T or setting) under ``order``: mean calls, recovery, exact match and conditional NLL, ± SE."""
    if results.infill is None:
        return ""
    rows = [r for r in results.rows_of(results.infill.name) if r.order == order]
    cells: dict[tuple[str, str], dict[str, ResultRow]] = {}
    for r in rows:
        cells.setdefault((r.decoder, _setting(r)), {})[r.metric] = r
    metrics_ = ("recovery", "exact_match", "cond_nll", "cond_nll_M")
    body = []
    for (decoder, setting), cell in sorted(cells.items(), key=lambda kv: (kv[0][0], next(iter(kv[1].values())).calls)):
        any_row = next(iter(cell.values()))
        vals = [_fmt(cell[m].value, cell[m].se) if m in cell else "n/a" for m in metrics_]
        body.append([decoder, setting, _fmt(any_row.calls or 0.0, any_row.calls_se), *vals])
    header = ["decoder", "T / setting", "mean calls", "recovery", "exact match",
              "cond. NLL bound [nats/token]" if order == "random" else "cond. NLL, ordered sampler [nats/token]",
              "cond. NLL M-order [nats/token]"]
    return markdown_table(header, body)


def _fewer(c: CallsSaved) -> tuple[float, str]:
    """(how many times fewer calls, in words): a lower bound when the decoder matches at its fewest calls."""
    ref = c.reference_calls if c.reference_calls is not None else float(c.reference_budget)
    if c.calls_to_match == float("-inf") and c.lowest_calls > 0:
        return ref / c.lowest_calls, f">= {ref / c.lowest_calls:.2f}x"
    if not np.isfinite(c.ratio) or c.ratio == 0:
        return float("nan"), "–"
    return c.ratio, f"{c.ratio:.2f}x"


def _established(c: CallsSaved) -> str:
    """What the bootstrap interval of a saving says about it, in words."""
    if c.interval is None:
        return "no interval: the per-decoder values and their SE say whether the difference exceeds the noise"
    lo, hi = c.interval
    level = f"{INTERVAL_LEVEL:.0%} paired bootstrap interval {lo:.2f}x – {hi:.2f}x"
    if lo >= GOAL_RATIO:
        return f"{level}: the {GOAL_RATIO:g}x goal holds beyond the noise"
    if lo > 1.0:
        return f"{level}: fewer calls beyond the noise, the {GOAL_RATIO:g}x goal not established"
    return f"{level}: within the noise of no saving at all"


def _best_saving(saved: Sequence[CallsSaved]) -> CallsSaved | None:
    known = [c for c in saved if np.isfinite(_fewer(c)[0])]
    return max(known, key=lambda c: _fewer(c)[0]) if known else None


def infill_findings(results: EvalResults) -> list[str]:
    """The infilling conclusions: sensitivity, the best calls saved per order and metric against the baseline and
    the goal, and where the candidate (optimal) schedule stands against the adaptive rules."""
    if results.infill is None:
        return []
    task, out = results.infill, []
    checks = [s for s in results.sensitivity if s.task == task.name]
    dead = [f"{_meta(s.metric)[0]} ({s.order})" for s in checks if not s.sensitive]
    if dead:
        out.append(f"Infilling {task.name}: cannot judge decoders on {', '.join(dead)} (1 call and one call per token "
                   "do not differ by more than the threshold).")
    for order in dict.fromkeys(s.order for s in checks):
        for metric in ("recovery", "exact_match"):
            if not _infill_sensitive(results, metric, order):
                continue
            saved = [c for c in results.calls_saved if c.task == task.name and c.order == order and c.metric == metric]
            best = _best_saving(saved)
            if best is not None:
                ratio, words = _fewer(best)
                goal = "meets" if ratio >= GOAL_RATIO else "misses"
                out.append(f"Infilling {task.name}, order={order}, {_meta(metric)[0]}: the largest saving against "
                           f"{BASELINE} is {best.decoder} ({_calls_saved_text(best)[0]} calls for {BASELINE}'s quality "
                           f"at T={best.reference_budget}, reached with {best.reference_calls or best.reference_budget:.3g}"
                           f" mean calls: {words} fewer; {goal} the {GOAL_RATIO:g}x goal as a point estimate on "
                           f"monotone fits; {_established(best)}).")
            elif saved:
                out.append(f"Infilling {task.name}, order={order}, {_meta(metric)[0]}: no decoder reaches {BASELINE}'s "
                           "quality with fewer calls at any reference budget.")
            for decoder, tally in optimal_vs_adaptive(results, order, metric).items():
                part = lambda xs: ", ".join(f"{x:g}" for x in xs) if xs else "none"
                out.append(f"Infilling {task.name}, order={order}, {_meta(metric)[0]}: {CANDIDATE} at the same mean "
                           f"calls as {decoder} wins at calls {part(tally['win'])}; ties at {part(tally['tie'])}; "
                           f"loses at {part(tally['lose'])}.")
    return out


def _infill_saved_table(results: EvalResults) -> str:
    saved = [c for c in results.calls_saved if results.infill is not None and c.task == results.infill.name]
    body = [[c.order, _meta(c.metric)[0], c.decoder, c.reference_budget, _fmt(c.reference_calls or 0.0),
             _fmt(c.baseline_value), *_calls_saved_text(c), _fewer(c)[1], _interval_text(c)] for c in saved]
    return markdown_table(["order", "metric", "decoder", f"{BASELINE} T", f"{BASELINE}'s calls for its value",
                           f"{BASELINE}'s value", "calls to match", "calls saved", "fewer calls",
                           f"{INTERVAL_LEVEL:.0%} bootstrap interval"], body)


def _interval_text(c: CallsSaved) -> str:
    return "n/a" if c.interval is None else f"{c.interval[0]:.2f}x – {c.interval[1]:.2f}x"


def data_caveats(config: EvalConfig) -> list[str]:
    """Caveats that follow from the data alone."""
    if "germline" in config.data:
        return ["Antibody language models saw near-germline sequences in training: the germline "
                "evaluation split is real but not strictly held out for them."]
    return []


# --------------------------------------------------------------------------------------------------
# the Markdown report, one function per section
# --------------------------------------------------------------------------------------------------

def _length_text(res: EvalResults) -> str:
    how = ("the most common sequence length of the evaluation split" if res.config.n_tokens is None
           else "set by n_tokens")
    e, p = res.eval_data, res.profile_data
    return (f"Generation length N = {res.n_tokens} ({how}; length policy of `mdm_sched.data.fixed_length`). "
            f"Profile fitted on split `{p.split}` ({p.sequences} sequences; {p.dropped} shorter than N dropped, "
            f"{p.cropped} cropped to their first N tokens), everything else evaluated on split `{e.split}` "
            f"({e.sequences} sequences used; {e.dropped} dropped for their length, {e.cropped} cropped).")


def _intro(res: EvalResults) -> list[str]:
    cfg = res.config
    out = [f"# mdm_sched evaluation: {cfg.model} on {res.data_description}", "",
           f"Wall time of this run: {res.wall_time_s:.0f} s (model rows evaluated in this run: {res.forward_rows}; "
           "parts found in the output folder's cache were computed by an earlier run and reused). "
           + _length_text(res) + f" Budgets T = {list(cfg.budgets)}; {cfg.num_samples} samples per (schedule, T, "
           f"order); held-out metrics use {cfg.n_orders} random orders per sequence, common to every schedule "
           "(paired comparisons).", "",
           "Verdicts use the 2-SE rule: *win*/*lose* only when the difference exceeds twice its standard "
           "error, otherwise *tie*. The schedule theory (docs/theory.md) optimises the **held-out bound**; "
           "sample-side metrics (path KL, spectra, judge) measure other things and may disagree."]
    if res.caveats:
        out += ["", "**Caveats.** " + " ".join(res.caveats)]
    return out


def _predicted_calls_text(prof: ProfileSummary) -> str:
    if not prof.predicted_calls:
        return ""
    return (" In calls: constant needs " + ", ".join(f"{g:.2f}x the calls at T={t}" for t, g in
                                                      prof.predicted_calls.items())
            + " to reach the optimum's bound (the most any fixed schedule can save on the bound of this profile).")


def _profile_section(res: EvalResults) -> list[str]:
    prof = res.profile
    if prof is None:
        return []
    return ["", "## Profile and predicted gains", "",
            f"CE(0) = {prof.ce_first:.3f}, CE(N-1) = {prof.ce_last:.3f} nats; N-step bound on the fitted curve = "
            f"{prof.bound_n_step:.4f} nats/token. Predicted gain of the optimum (J(constant)/J(optimal) on the fitted "
            "curve) per budget: " + ", ".join(f"T={t}: {g:.2f}x" for t, g in prof.predicted_gain.items()) + "."
            + _predicted_calls_text(prof),
            "", "![profile](profile.png)", *(f"![blocks T={t}](profile_blocks_T{t}.png)" for t in res.config.budgets)]


def _other_orders_section(res: EvalResults) -> list[str]:
    out: list[str] = []
    for order in dict.fromkeys(r.order for r in res.rows_of() if r.order != "random"):
        out += ["", f"## {order.capitalize()} order", "",
                f"Same schedules, positions chosen by the model's {order} instead of at random (the theory "
                "does not cover this order; path KL is not defined for it).", "",
                summary_table(res, order=order)]
    if out and res.confidence_notes:
        out += [""] + [f"- {n}" for n in res.confidence_notes]
    return out


def _sensitivity_section(res: EvalResults) -> list[str]:
    checks = [s for s in res.sensitivity if s.task == UNCONDITIONAL]  # infilling has its own table, per order
    if not checks:
        return []
    body = [[_meta(s.metric)[0], _fmt(s.one_call.value, s.one_call.se), _fmt(s.n_step.value, s.n_step.se),
             f"{s.z:.1f}", "yes" if s.sensitive else "**no: this metric cannot judge schedules here**"]
            for s in checks]
    return ["", "## Is each sample-side metric sensitive at all?", "",
            "1-call sampler (all tokens from their marginals) against the N-step sampler; a metric is "
            f"called sensitive when they differ by more than {res.config.sensitivity_z:g} SE.", "",
            markdown_table(["metric", "1 call", "N calls", "|diff| / SE", "sensitive"], body)]


def _references_section(res: EvalResults) -> list[str]:
    if not res.references:
        return []
    est = lambda e: "–" if e is None else _fmt(e.value, e.se)
    body = [[_meta(r.metric)[0], est(r.n_step), est(r.one_call), est(r.heldout)] for r in res.references]
    return ["", "## Reference values", "",
            markdown_table(["metric", "N-step sampler", "1-call sampler", "held-out data itself"], body)]


def _calls_saved_section(res: EvalResults) -> list[str]:
    saved = [c for c in res.calls_saved if c.task == UNCONDITIONAL]
    if not saved:
        return []
    body = [[_meta(c.metric)[0], c.decoder, c.reference_budget, _fmt(c.baseline_value), *_calls_saved_text(c)]
            for c in saved]
    return ["", "## Calls saved", "",
            f"Budget at which each schedule matches the {BASELINE} schedule's quality at the reference budget "
            "(each curve first fitted to be monotone in the number of calls, then interpolated linearly between "
            "measured budgets; point estimates, see the error bars above; metrics that failed the sensitivity "
            f"check are left out). Where the {BASELINE} schedule seems to \"save\" calls against itself, the metric's "
            "fitted curve is flat there: it cannot resolve budgets that close, and neither can the other rows.", "",
            markdown_table(["metric", "schedule", "reference T", f"{BASELINE}'s value", "calls to match",
                            "calls saved"], body)]


def _infill_orders_text(res: EvalResults) -> str:
    orders = res.config.infill_orders
    ranked = [o for o in orders if o != "random"]
    parts = []
    if "random" in orders:
        parts.append(f"Random order is sampled at temperature 1 ({res.config.infill_samples} samples per example, "
                     "averaged per example); the conditional NLL of the truth is defined for its fixed schedules only "
                     "(n/a for adaptive rules and greedy decoding).")
    else:
        parts.append("Random order was not run, so the conditional NLL of the truth (a random-order quantity) was "
                     "not measured.")
    if ranked:
        parts.append(f"{', '.join(ranked).capitalize()} order{'s are' if len(ranked) > 1 else ' is'} greedy "
                     "(temperature 0, as LLaDA users decode).")
    if ranked and res.config.ordered_nll:
        parts.append("Under ranked orders the conditional NLL of the truth is the ordered sampler's (its deterministic "
                     "ranking, temperature-1 draws), by teacher forcing along its own ranking "
                     "(`mdm_sched.policy.ordered_nll`): the quantity the policy profile's schedule minimises.")
    return " ".join(parts)


def _profile_decoders_text(res: EvalResults) -> str:
    """How the decoders built on the run's other profiles got them (measured on the profile split, never on the
    evaluated examples), or nothing when none ran."""
    from .decoders import DECODERS

    extra = [d for d in res.config.infill_decoders if d in DECODERS and DECODERS[d].profile not in (None, "random")]
    if not extra:
        return ""
    return ("; " + "; ".join(f"{d}: {DECODERS[d].description}" for d in extra)
            + f" (profiles measured on split `{res.config.profile_split}`, policy and self profiles on at most "
            f"{res.config.profile_walks} of its examples with the most common number of infilled positions; "
            "optimal_policy runs under ranked orders only)")


def _infill_examples_text(res: EvalResults) -> str:
    if res.config.infill_split == "all":
        return (f"sequences of both splits ({res.config.eval_split} and {res.config.profile_split}; the decoders use no "
                "profile)")
    return "evaluation sequences"


def _infill_predicted_text(t: TaskSummary) -> str:
    if not t.predicted_calls:
        return ""
    parts = [f"{name}: " + ", ".join(f"{g:.2f}x at T={b}" for b, g in d.items()) for name, d in t.predicted_calls.items()]
    return (" Calls saved that each profile predicts for its optimal schedule (constant's calls for the optimum's "
            "value on that profile, over T; the most a fixed schedule can save on the quantity the profile models): "
            + "; ".join(parts) + ".")


def _infill_section(res: EvalResults) -> list[str]:
    if res.infill is None:
        return []
    t = res.infill
    out = ["", f"## Infilling at matched model calls: {t.name}", "",
           f"{t.description} on {t.examples} {_infill_examples_text(res)} ({t.infilled[0]:g}-{t.infilled[1]:g} positions "
           f"infilled, mean {t.infilled[2]:.1f}; {t.given[2]:.1f} given on average). Fixed schedules are built for "
           f"N = {t.n_tokens} (rows with fewer positions rescale them) at T in {list(res.config.infill_budgets)} plus "
           "1 call and one call per token; optimal and sqrt use the random-order profile read at the same number of "
           "masked positions" + _profile_decoders_text(res) + ". Adaptive rules choose their own calls. "
           + _infill_orders_text(res)
           + " Mean calls: calls that revealed a position of the example (what it costs alone), ± SE over examples."
           + _infill_predicted_text(t),
           "", "### Sensitivity (1 call vs one call per token, paired on the examples)", ""]
    checks = [s for s in res.sensitivity if s.task == t.name]
    out.append(markdown_table(["order", "metric", "1 call", "one call per token", "|diff| / SE", "sensitive"],
                              [[s.order, _meta(s.metric)[0], _fmt(s.one_call.value, s.one_call.se),
                                _fmt(s.n_step.value, s.n_step.se), f"{s.z:.1f}",
                                "yes" if s.sensitive else "**no: cannot judge decoders**"] for s in checks]))
    for order in dict.fromkeys(r.order for r in res.rows_of(t.name)):
        out += ["", f"### Order {order} ({'sampled' if order == 'random' else 'greedy'})", "",
                matched_calls_table(res, order), ""]
        out += [f"![{m}](plot_infill_{m}_{order}.png)" for m in ("exact_match", "recovery", "cond_nll")
                if any(r.metric == m and r.order == order for r in res.rows_of(t.name))]
    out += ["", "### Calls saved at equal quality", "",
            f"Mean calls each decoder needs to reach the {BASELINE} schedule's quality at each of its budgets (every "
            "curve is the metric against mean calls made, fitted monotone, interpolated linearly), against the calls "
            f"{BASELINE} itself needs for that quality (on a flat stretch of its curve: the first budget that reaches "
            "it). Metrics that fail the sensitivity check are left out.", ""]
    if any(c.task == t.name for c in res.calls_saved):
        out.append(_infill_saved_table(res))
    else:
        out.append("None: no metric passed the sensitivity check, so no saving can be measured on this task.")
    return out


def render_markdown(results: EvalResults) -> str:
    """The full Markdown report."""
    out = _intro(results) + _profile_section(results)
    out += ["", "## Summary (order = random)", "", summary_table(results, order="random")]
    out += _other_orders_section(results) + _sensitivity_section(results) + _references_section(results)
    out += _calls_saved_section(results) + _infill_section(results)
    if results.theory:
        out += ["", "## Theory reproduction on exact oracles", "", results.theory]
    out += ["", "## Plots", ""]
    out += [f"![{m}](plot_{m}_random.png)" for m in _metrics_in(r for r in results.rows_of() if r.order == "random")]
    if results.findings:
        out += ["", "## Findings", ""] + [f"- {f}" for f in results.findings]
    return "\n".join(out) + "\n"
