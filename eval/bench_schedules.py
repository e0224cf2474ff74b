"""Benchmark: wall time of the exact optimal-schedule DP, and how close the sqrt rule gets.

    python eval/bench_schedules.py            # N/T grid, best of 3 runs each
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mdm_sched import schedules as S


def saturating(n: int) -> np.ndarray:
    x = (np.arange(n) + 0.5) / n
    return 2.0 - (1.0 - np.exp(-x / 0.1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="256x16,1024x64,2048x128,4096x256,8192x512")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{'N':>6} {'T':>5} {'DP best [s]':>12} {'sqrt [s]':>9} {'gain':>6} {'J(sqrt)/J(opt)':>15}")
    for cell in args.grid.split(","):
        n, t = map(int, cell.split("x"))
        curve = saturating(n)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            opt = S.optimal(curve, t)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sq = S.sqrt_rule(curve, t)
        t_sqrt = time.perf_counter() - t0
        gain = S.cost(curve, S.constant(n, t)) / S.cost(curve, opt)
        print(f"{n:>6} {t:>5} {min(times):>12.3f} {t_sqrt:>9.4f} {gain:>6.2f} {S.cost(curve, sq) / S.cost(curve, opt):>15.4f}")


if __name__ == "__main__":
    main()
