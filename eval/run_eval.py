"""Run the evaluation harness from a checkout: ``python eval/run_eval.py [demo|eval] [options]``.

Thin wrapper around :mod:`mdm_sched.harness` (the same code as ``mdm-sched demo`` / ``mdm-sched eval``):
e.g. ``python eval/run_eval.py demo --quick --out runs/quick`` or
``python eval/run_eval.py eval --model sapiens-vh --judge antiberty --budgets 4,8,16 --out runs/sapiens``.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from mdm_sched.harness import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
