"""Theory reproduction on exact oracles: predicted against measured gain, the bound against exact KL.

``python eval/theory.py [--full] [--out DIR]`` writes ``theory.md`` (the table) and ``theory.json`` (every
number). Tabular oracles are exact; Markov chains (non-linear profiles) use a Monte Carlo profile and the
held-out block estimator with standard errors (see :func:`mdm_sched.theory.oracle_theory`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mdm_sched._io import atomic_write_json, atomic_write_text
from mdm_sched.theory import oracle_theory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="longer chains, more samples, more budgets")
    p.add_argument("--out", default="theory_out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    table, rows = oracle_theory(quick=not args.full, seed=args.seed)
    out = Path(args.out)
    atomic_write_text(out / "theory.md", "# Theory reproduction on exact oracles\n\n" + table + "\n")
    atomic_write_json(out / "theory.json", {"rows": [r.to_dict() for r in rows], "seconds": time.time() - t0})
    print(table)
    print(f"\nwritten to {out}/theory.md ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
