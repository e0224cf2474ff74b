"""The benchmark scripts run end to end at tiny sizes (slow: each is a subprocess importing torch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "eval" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=True)


@pytest.mark.slow
def test_bench_gpu_tiny_runs_on_cpu(tmp_path):
    """`bench_gpu.py --tiny`: LLaDA's loop and generate() with and without caches, on the CPU, under a minute."""
    _run("bench_gpu.py", "--tiny", "--out", str(tmp_path / "gpu.json"), timeout=120)
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert [(r["run"], r["schedule"], r["cache"]) for r in rows][:4] == [
        ("llada-loop", "constant", None), ("generate", "constant", None), ("generate", "constant", "prefix"),
        ("generate", "constant", "dual")]
    assert len(rows) == 7 and all(r["tokens_per_s"] > 0 and r["calls"] == 16 for r in rows)
    assert rows[1]["same_tokens_as_llada"] == 1.0  # the same greedy algorithm without a cache


@pytest.mark.slow
def test_bench_generate_quick_runs(tmp_path):
    _run("bench_generate.py", "--quick", "--repeats", "1", "--out", str(tmp_path / "gen.json"), timeout=300)
    res = json.loads((tmp_path / "gen.json").read_text())
    assert len(res["overhead"]) == 8 and all(r["ratio"] > 0 for r in res["overhead"])
    assert [r["prompt_length"] for r in res["cache"]] == [8, 32]
