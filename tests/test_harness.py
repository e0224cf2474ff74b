"""The evaluation harness, the report writer and the demo."""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest

from mdm_sched import harness, report


def test_verdict_and_calls_to_match():
    assert report.verdict(-0.5, 0.1, lower_is_better=True) == "win"
    assert report.verdict(0.5, 0.1, lower_is_better=True) == "lose"
    assert report.verdict(0.5, 0.1, lower_is_better=False) == "win"
    assert report.verdict(0.15, 0.1, lower_is_better=True) == "tie"
    assert report.verdict(float("nan"), 0.1, True) == "n/a"
    # curve 3 -> 2 -> 1 over T = 5, 10, 20: reaches 1.5 halfway between 10 and 20
    assert report.calls_to_match([5, 10, 20], [3.0, 2.0, 1.0], 1.5, True) == pytest.approx(15.0)
    assert report.calls_to_match([5, 10, 20], [3.0, 2.0, 1.0], 3.5, True) == -math.inf
    assert report.calls_to_match([5, 10, 20], [3.0, 2.0, 1.0], 0.5, True) == math.inf
    assert report.calls_to_match([5, 10], [1.0, 2.0], 1.5, False) == pytest.approx(7.5)


def test_prepare_sequences_fixed_length():
    x, n = harness.prepare_sequences([[1, 2, 3], [1, 2, 3, 4], [1, 2], [5, 6, 7, 8, 9]], None)
    assert n == 3 and x.tolist() == [[1, 2, 3], [1, 2, 3], [5, 6, 7]]
    with pytest.raises(ValueError, match="n_tokens"):
        harness.prepare_sequences([[1, 2]], 5)


def test_oracle_theory_matches_exact_identities():
    text, rows = harness.oracle_theory(quick=True)
    assert "predicted gain" in text
    tab = [r for r in rows if np.isfinite(r["exact_kl"])]
    assert tab
    for r in tab:
        # perfect model: E_order KL(pi || q_order) is exactly the factorization error, and bounds the exact KL
        assert r["order_kl"] == pytest.approx(r["fact_error"], abs=1e-9)
        assert r["exact_kl"] <= r["order_kl"] + 1e-9
        assert r["measured_gain"] >= 1.0 - 1e-9  # the DP on the exact profile is optimal for E_fact
    chains = [r for r in rows if not np.isfinite(r["exact_kl"])]
    # measured gains on long chains agree with the prediction from the estimated profile within ~3 SE + 15%
    for r in chains:
        if r["schedule"] == "optimal":
            assert abs(r["measured_gain"] - r["predicted_gain"]) < 3 * r["gain_se"] + 0.15 * r["predicted_gain"], r


def _synthetic_results():
    rows = []
    for t, (c, o) in {2: (2.0, 1.5), 4: (1.5, 1.45)}.items():
        rows.append(harness._row("bound", "random", "constant", t, c, 0.1, paired_with_constant=(0.0, 0.0)))
        rows.append(harness._row("bound", "random", "optimal", t, o, 0.1, paired_with_constant=(o - c, 0.02)))
        rows.append(harness._row("js3", "random", "constant", t, 0.5, 0.01))
        rows.append(harness._row("js3", "random", "optimal", t, 0.52, 0.01))
    cfg = harness.EvalConfig(budgets=(2, 4), schedules=("constant", "optimal"), orders=("random",))
    return {"config": cfg.to_dict(), "n_tokens": 8, "rows": rows, "sensitivity": {
        "js3": {"one_call": 0.6, "one_call_se": 0.01, "n_step": 0.5, "n_step_se": 0.01, "z": 7.0, "sensitive": True}},
        "calls_saved": [], "profile": {"ce0": 3.0, "ceN": 1.0, "bound_N": 1.2, "predicted_gain": {2: 1.3, 4: 1.2}},
        "wall_time_s": 1.0}


def test_summary_table_says_win_tie_lose(tmp_path):
    res = _synthetic_results()
    table = report.summary_table(res)
    lines = [ln for ln in table.splitlines() if ln.startswith("| held-out bound")]
    assert "win" in lines[0] and "tie" not in lines[0].split("|")[-3]  # T=2: -0.5 with paired SE 0.02
    assert lines[1].split("|")[-3].strip().startswith("lose") is False
    js = [ln for ln in table.splitlines() if ln.startswith("| 3-mer")]
    assert js[0].split("|")[-3].strip().startswith("tie")  # +0.02 with SE hypot(0.01, 0.01) = 0.014
    md = report.render_markdown(res)
    assert "## Summary" in md and "2-SE rule" in md
    report.write_csv(res["rows"], tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("metric,order,schedule,T,value,se")
    assert report.plot_metric(res["rows"], "bound", tmp_path / "b.png", references={"N-step": (1.2, 0.05)})
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert not report.plot_metric(res["rows"], "path_kl", tmp_path / "none.png")
    report.plot_profile_blocks(np.linspace(3, 1, 8), {"constant": (0, 4, 8), "optimal": (0, 2, 8)}, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown schedules"):
        harness.run_eval(harness.EvalConfig(schedules=("nope",)), tmp_path)
    with pytest.raises(ValueError, match="orders"):
        harness.run_eval(harness.EvalConfig(orders=("confidence",)), tmp_path)
    with pytest.raises(TypeError, match="EvalConfig"):
        harness.run_eval({"model": "x"}, tmp_path)


def test_cli_arguments_parse():
    p = argparse.ArgumentParser()
    harness.add_demo_arguments(p)
    args = p.parse_args(["--quick", "--out", "x", "--budgets", "4,8", "--num-samples", "8"])
    cfg = harness._config_from(args, harness.DEMO_QUICK)
    assert cfg.budgets == (4, 8) and cfg.num_samples == 8 and cfg.model == "sapiens-vh"
    assert cfg.confidence_budgets == (8,)
    with pytest.raises(SystemExit):
        p.parse_args(["--budgets", "0"])


def test_run_eval_small_sapiens_writes_report_and_resumes(tmp_path):
    cfg = harness.EvalConfig(model="sapiens-vh", judge=None, budgets=(2, 6), schedules=("constant", "optimal"),
                             orders=("random",), num_samples=8, n_orders=2, max_eval_sequences=12,
                             path_kl_levels=2, profile_levels=8, profile_tokens_per_level=256, threads=1)
    t0 = time.time()
    res = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    first = time.time() - t0
    for name in ("report.md", "results.json", "results.csv", "profile.png", "profile_blocks_T2.png",
                 "plot_bound_random.png", "summary.md"):
        assert (tmp_path / name).is_file(), name
    metrics_seen = {r["metric"] for r in res["rows"]}
    assert {"bound", "nll_M", "path_kl", "js2", "js3", "pos_js"} <= metrics_seen
    bound = {(r["schedule"], r["T"]): r["value"] for r in res["rows"] if r["metric"] == "bound"}
    tight = {(r["schedule"], r["T"]): r["value"] for r in res["rows"] if r["metric"] == "nll_M"}
    for k in bound:
        assert tight[k] <= bound[k] + 1e-12  # log-mean-exp over orders is never above the mean
    assert bound[("constant", 6)] < bound[("constant", 2)]  # more calls, smaller bound
    assert res["sensitivity"]["path_kl"]["one_call"] > 0
    # a rerun reuses every cached part and gives the same numbers
    t0 = time.time()
    res2 = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    assert time.time() - t0 < max(first * 0.6, 5.0)
    assert json.dumps(res2["rows"]) == json.dumps(res["rows"])


@pytest.mark.slow
def test_quick_demo_runs(tmp_path, capsys):
    p = argparse.ArgumentParser()
    harness.add_demo_arguments(p)
    args = p.parse_args(["--quick", "--out", str(tmp_path), "--no-theory"])
    assert harness.demo_command(args) == 0
    out = capsys.readouterr().out
    assert "optimal vs constant" in out and (tmp_path / "report.md").is_file()


def test_calls_to_match_uses_a_monotone_fit():
    from mdm_sched import report

    # a noisy dip at T=4 must not make the curve "match" before it really does
    t = [2, 4, 8, 16]
    noisy = [1.0, 0.5, 0.7, 0.4]
    # monotone fit [1.0, 0.6, 0.6, 0.4]: 0.55 is reached between T=8 and T=16 (raw data would say 3.8)
    assert report.calls_to_match(t, noisy, 0.55, lower_is_better=True) == pytest.approx(10.0)
    assert report.calls_to_match(t, [1.0, 0.8, 0.6, 0.4], 0.7, lower_is_better=True) == pytest.approx(6.0)
    assert report.calls_to_match(t, [0.1, 0.2, 0.3, 0.4], 0.25, lower_is_better=False) == pytest.approx(6.0)
    assert report.calls_to_match(t, [1.0, 0.8, 0.6, 0.4], 2.0, lower_is_better=True) == float("-inf")
    assert report.calls_to_match(t, [1.0, 0.8, 0.6, 0.4], 0.1, lower_is_better=True) == float("inf")
