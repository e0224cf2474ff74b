"""Accuracy against model calls from lm-eval runs of the ``mdm_sched`` model: a table and the plot.

    python recipes/lm_eval_calls.py runs/llada_gsm8k --task gsm8k --metric "exact_match,flexible-extract" \
        --out runs/llada_gsm8k/accuracy_vs_calls.png

Reads every ``results_*.json`` under the given directories (lm-eval's ``--output_path``). Each run gives one point:
the task's metric (with lm-eval's standard error) against the mean model calls per request of the run's request
type, which the model stores in ``config["mdm_sched"]["calls"]``. Runs are grouped into series by schedule (a
constant schedule, the optimal one, an adaptive rule), labelled from their model_args.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mdm_sched._io import atomic_write_png, new_figure

_REQUEST_TYPE = {"generate_until": "generate_until", "multiple_choice": "loglikelihood",
                 "loglikelihood": "loglikelihood", "loglikelihood_rolling": "loglikelihood_rolling"}


def _series(model_args: Any) -> str:
    """A run's series: its schedule name (``threshold=0.9`` for a threshold rule)."""
    args = model_args if isinstance(model_args, dict) else dict(
        kv.split("=", 1) for kv in str(model_args or "").split(",") if "=" in kv)
    name = str(args.get("schedule", "constant"))
    for key in ("threshold", "gamma", "factor"):
        if key in args:
            return f"{name} {key}={args[key]}"
    return name


def collect(paths: Iterable[str | Path], task: str, metric: str) -> list[dict[str, Any]]:
    """One row per results file that has ``task``: series, metric, stderr, mean calls, requests, the file."""
    rows = []
    for root in paths:
        files = [Path(root)] if Path(root).is_file() else sorted(Path(root).rglob("results_*.json"))
        for path in files:
            data = json.loads(path.read_text())
            res, calls = data.get("results", {}).get(task), data.get("config", {}).get("mdm_sched", {}).get("calls")
            if res is None or metric not in res or not calls:
                continue
            kind = _REQUEST_TYPE.get(data.get("configs", {}).get(task, {}).get("output_type", ""), next(iter(calls)))
            stderr = res.get(metric.replace(",", "_stderr,", 1))
            rows.append({"series": _series(data["config"].get("model_args")), "value": float(res[metric]),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                         "mean_calls": float(calls[kind]["mean_calls"]), "requests": int(calls[kind]["requests"]),
                         "file": str(path)})
    return sorted(rows, key=lambda r: (r["series"], r["mean_calls"]))


def table(rows: list[dict[str, Any]], metric: str) -> str:
    """A markdown table of the rows."""
    lines = [f"| series | mean calls | {metric} | ± | requests |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        se = "" if r["stderr"] is None else f"{r['stderr']:.4f}"
        lines.append(f"| {r['series']} | {r['mean_calls']:.1f} | {r['value']:.4f} | {se} | {r['requests']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], metric: str, out: str | Path, title: str = "") -> None:
    """Metric against mean calls per request, one line per series (error bars: lm-eval's standard errors)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted({r["series"] for r in rows}):
        pts = [r for r in rows if r["series"] == name]
        ax.errorbar([r["mean_calls"] for r in pts], [r["value"] for r in pts],
                    yerr=[r["stderr"] or 0.0 for r in pts], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean model calls per request")
    ax.set_ylabel(metric)
    ax.set_title(title or "accuracy against model calls")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_write_png(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="lm-eval output directories or results_*.json files")
    parser.add_argument("--task", required=True)
    parser.add_argument("--metric", default="exact_match,flexible-extract", help="lm-eval's 'metric,filter' key")
    parser.add_argument("--out", default=None, help="write the plot here (PNG)")
    args = parser.parse_args(argv)
    rows = collect(args.paths, args.task, args.metric)
    if not rows:
        print(f"no results with task {args.task!r} and metric {args.metric!r} and mdm_sched call counts", file=sys.stderr)
        return 1
    print(table(rows, args.metric))
    if args.out:
        plot(rows, args.metric, args.out, title=args.task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
