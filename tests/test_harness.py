"""The evaluation harness, the report writer and the demo."""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import cli, data, harness, report, schedules, theory
from mdm_sched.results import (
    CallsSaved,
    Estimate,
    EvalResults,
    PairedDiff,
    ProfileSummary,
    ReferenceValues,
    ResultRow,
    SensitivityCheck,
    SplitSummary,
    TheoryRow,
)


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


def test_harness_uses_the_library_length_policy():
    assert not hasattr(harness, "prepare_sequences")  # one length policy: mdm_sched.data.fixed_length
    with pytest.raises(ValueError, match="n_tokens"):
        harness.run_eval(harness.EvalConfig(n_tokens=1), "unused")


def test_oracle_theory_matches_exact_identities():
    text, rows = theory.oracle_theory(quick=True)
    assert "predicted gain" in text
    tab = [r for r in rows if r.exact_kl is not None]
    assert tab
    for r in tab:
        # perfect model: E_order KL(pi || q_order) is exactly the factorization error, and bounds the exact KL
        assert r.order_kl == pytest.approx(r.fact_error, abs=1e-9)
        assert r.exact_kl <= r.order_kl + 1e-9
        assert r.measured_gain >= 1.0 - 1e-9  # the DP on the exact profile is optimal for E_fact
    chains = [r for r in rows if r.exact_kl is None]
    assert chains and all(r.order_kl_se is not None for r in chains)
    # measured gains on long chains agree with the prediction from the estimated profile within ~3 SE + 15%
    for r in chains:
        if r.schedule == "optimal":
            assert abs(r.measured_gain - r.predicted_gain) < 3 * r.gain_se + 0.15 * r.predicted_gain, r
    assert [TheoryRow.from_dict(json.loads(json.dumps(r.to_dict()))) for r in rows] == rows


def _synthetic_results() -> EvalResults:
    rows = []
    for t, (c, o) in {2: (2.0, 1.5), 4: (1.5, 1.45)}.items():
        rows.append(ResultRow("bound", "random", "constant", t, c, 0.1, paired=PairedDiff("constant", 0.0, 0.0)))
        rows.append(ResultRow("bound", "random", "optimal", t, o, 0.1, paired=PairedDiff("constant", o - c, 0.02)))
        rows.append(ResultRow("js3", "random", "constant", t, 0.5, 0.01))
        rows.append(ResultRow("js3", "random", "optimal", t, 0.52, 0.01))
    cfg = harness.EvalConfig(budgets=(2, 4), schedules=("constant", "optimal"), orders=("random",))
    sens = [SensitivityCheck("js3", Estimate(0.6, 0.01), Estimate(0.5, 0.01), 7.0, True)]
    return EvalResults(config=cfg, n_tokens=8, data_description="synthetic", rows=rows, sensitivity=sens,
                       profile_data=SplitSummary("train", 10, 1, 2), eval_data=SplitSummary("test", 5, 0, 0),
                       profile=ProfileSummary(3.0, 1.0, 1.2, {2: 1.3, 4: 1.2}, {2: 1.2, 4: 1.15}), wall_time_s=1.0)


def test_summary_table_says_win_tie_lose(tmp_path):
    res = _synthetic_results()
    table = report.summary_table(res)
    lines = [ln for ln in table.splitlines() if ln.startswith("| held-out bound")]
    assert "win" in lines[0] and "tie" not in lines[0].split("|")[-3]  # T=2: -0.5 with paired SE 0.02
    assert lines[1].split("|")[-3].strip().startswith("lose") is False
    js = [ln for ln in table.splitlines() if ln.startswith("| 3-mer")]
    assert js[0].split("|")[-3].strip().startswith("tie")  # +0.02 with SE hypot(0.01, 0.01) = 0.014
    md = report.render_markdown(res)
    assert "## Summary" in md and "2-SE rule" in md and "Generation length N = 8" in md
    report.write_csv(res.rows, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("metric,order,task,decoder,budget,calls")
    assert report.plot_metric(res.rows, "bound", tmp_path / "b.png", references={"N-step": Estimate(1.2, 0.05)})
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert not report.plot_metric(res.rows, "path_kl", tmp_path / "none.png")
    report.plot_profile_blocks(np.linspace(3, 1, 8), {"constant": (0, 4, 8), "optimal": (0, 2, 8)}, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()


def test_findings_and_calls_saved_come_from_the_typed_results():
    res = _synthetic_results()
    found = report.findings(res)
    assert found[0].startswith("Predicted gain") and "1.30x at T=2" in found[0]
    bound = next(f for f in found if f.startswith("held-out bound"))
    assert "wins at T=2, 4; ties at T=none" in bound  # T=4: -0.05 with paired SE 0.02 is 2.5 SE: a win
    res.sensitivity = [SensitivityCheck("js3", Estimate(0.5, 0.01), Estimate(0.5, 0.01), 0.0, False)]
    assert any("cannot judge" in f for f in report.findings(res))
    saved = {(c.metric, c.decoder): c for c in report.calls_saved(res, 4)}
    assert ("js3", "optimal") not in saved  # insensitive metrics are left out
    # optimal at T=2 (1.5) is already better than constant at T=4 (1.5 fitted): matches at its fewest calls
    assert saved[("bound", "optimal")].calls_to_match == float("-inf")
    assert saved[("bound", "constant")].calls_to_match == pytest.approx(4.0)


def test_results_round_trip_through_strict_json(tmp_path):
    res = _synthetic_results()
    # what the next features add: an adaptive rule (its own mean calls, no budget) on an infilling task
    res.rows.append(ResultRow("exact_match", "confidence", "threshold@0.9", None, 0.7, 0.05, calls=6.4, calls_se=0.3,
                              task="infill"))
    res.calls_saved = [CallsSaved("bound", "optimal", "constant", 4, 1.5, float("-inf"), 2, 4),
                       CallsSaved("bound", "cosine", "constant", 4, 1.5, float("nan"), 2, 4)]
    res.references = [ReferenceValues("js3", n_step=Estimate(0.5, 0.01), heldout=Estimate(float("nan"), float("nan")))]
    res.theory_rows = [TheoryRow("chain", 48, 4, "optimal", 1.0, 1.1, 1.3, 1.25, gain_se=0.1, order_kl_se=0.05)]
    res.findings = report.findings(res)
    text = res.to_json()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert strict["format"] == "mdm_sched.eval_results" and strict["calls_saved"][0]["calls_to_match"] == "-inf"
    back = EvalResults.from_json(text)
    assert back.to_json() == text
    assert back.rows[-1] == res.rows[-1] and back.rows[-1].budget is None and back.rows[0].calls == 2.0
    assert back.profile.predicted_gain == {2: 1.3, 4: 1.2} and back.config == res.config
    assert back.profile.predicted_calls == {2: 1.2, 4: 1.15} and "1.15x the calls at T=4" in report.render_markdown(back)
    old = json.loads(text)  # results written before predicted_calls existed still load
    del old["profile"]["predicted_calls"]
    assert EvalResults.from_json(json.dumps(old)).profile.predicted_calls == {}
    assert math.isnan(back.calls_saved[1].calls_to_match)
    res.save(tmp_path / "results.json")
    assert report.render_markdown(EvalResults.load(tmp_path / "results.json")) == report.render_markdown(res)
    with pytest.raises(ValueError, match="eval_results"):
        EvalResults.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="unknown EvalConfig fields"):
        harness.EvalConfig.from_dict({"budgets": [2], "threads": 1})
    with pytest.raises(ValueError, match="budget or calls"):
        ResultRow("bound", "random", "rule", None, 1.0, 0.1)


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown schedules"):
        harness.run_eval(harness.EvalConfig(schedules=("nope",)), tmp_path)
    with pytest.raises(ValueError, match="orders"):
        harness.run_eval(harness.EvalConfig(orders=("confidence",)), tmp_path)
    with pytest.raises(TypeError, match="EvalConfig"):
        harness.run_eval({"model": "x"}, tmp_path)
    with pytest.raises(ValueError, match="num_samples"):
        harness.run_eval(harness.EvalConfig(num_samples=0), tmp_path)


def test_cached_stage_computes_once_and_refingerprints(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"value": (1.0, 2.0)}
    first = harness.cached_stage(tmp_path / "c" / "s.json", {"k": 1}, compute)
    again = harness.cached_stage(tmp_path / "c" / "s.json", {"k": 1}, compute)
    assert first == again == {"value": [1.0, 2.0]} and len(calls) == 1
    harness.cached_stage(tmp_path / "c" / "s.json", {"k": 2}, compute)  # other settings: recomputed
    (tmp_path / "c" / "t.json").write_text("{truncated")
    harness.cached_stage(tmp_path / "c" / "t.json", {"k": 1}, compute)  # unreadable cache: recomputed
    assert len(calls) == 3


def test_cli_flags_follow_the_config():
    import dataclasses

    p = argparse.ArgumentParser()
    cli.add_demo_arguments(p)
    flags = {a.dest for a in p._actions}
    assert {f.name for f in dataclasses.fields(harness.EvalConfig)} <= flags
    args = p.parse_args(["--quick", "--out", "x", "--budgets", "4,8", "--num-samples", "8", "--judge", "none",
                         "--no-theory", "--path-kl-levels", "none"])
    cfg = cli._config_from(args, harness.DEMO_QUICK)
    assert cfg.budgets == (4, 8) and cfg.num_samples == 8 and cfg.model == "sapiens-vh"
    assert cfg.judge is None and cfg.theory is False and cfg.path_kl_levels is None
    assert cfg.confidence_budgets == harness.DEMO_QUICK.confidence_budgets and cfg.n_orders == harness.DEMO_QUICK.n_orders
    assert cfg.infill == harness.DEMO_QUICK.infill is not None
    args = p.parse_args(["--thresholds", "0.5,0.95", "--infill", "none", "--infill-orders", "random,confidence"])
    cfg = cli._config_from(args, harness.DEMO_FULL)
    assert cfg.thresholds == (0.5, 0.95) and cfg.infill is None and cfg.infill_orders == ("random", "confidence")
    with pytest.raises(SystemExit):
        p.parse_args(["--entropy-bounds", "x"])
    assert cli._config_from(p.parse_args(["--no-judge"]), harness.DEMO_FULL).judge is None
    with pytest.raises(SystemExit):
        p.parse_args(["--budgets", "0"])


def test_run_eval_small_sapiens_writes_report_and_resumes(tmp_path):
    cfg = harness.EvalConfig(model="sapiens-vh", judge=None, budgets=(2, 6), schedules=("constant", "optimal"),
                             orders=("random",), num_samples=8, n_orders=2, max_eval_sequences=12,
                             path_kl_levels=2, profile_levels=8, profile_tokens_per_level=256)
    t0 = time.time()
    res = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    first = time.time() - t0
    for name in ("report.md", "results.json", "results.csv", "profile.png", "profile_blocks_T2.png",
                 "plot_bound_random.png", "summary.md", "profile.json"):
        assert (tmp_path / name).is_file(), name
    # the length policy of mdm_sched.data.fixed_length: N is the most common length of the evaluation split
    lengths = collections.Counter(len(s) for s in data.germlines("human", "H", split="test"))
    assert res.n_tokens == max(lengths, key=lambda n: (lengths[n], n))
    assert res.eval_data.cropped == 0 and res.eval_data.sequences == 12
    assert res.eval_data.dropped == sum(c for n, c in lengths.items() if n != res.n_tokens)
    metrics_seen = {r.metric for r in res.rows}
    assert {"bound", "nll_M", "path_kl", "js2", "js3", "pos_js"} <= metrics_seen
    assert all(r.calls == r.budget for r in res.rows)  # fixed schedules make exactly T calls
    bound = {(r.decoder, r.budget): r.value for r in res.rows if r.metric == "bound"}
    tight = {(r.decoder, r.budget): r.value for r in res.rows if r.metric == "nll_M"}
    for k in bound:
        assert tight[k] <= bound[k] + 1e-12  # log-mean-exp over orders is never above the mean
    assert bound[("constant", 6)] < bound[("constant", 2)]  # more calls, smaller bound
    assert res.sensitivity_of("path_kl").one_call.value > 0
    # results.json alone re-renders the report
    loaded = EvalResults.load(tmp_path / "results.json")
    assert loaded == res
    assert report.render_markdown(loaded) == (tmp_path / "report.md").read_text()
    # a rerun reuses every cached part and gives the same numbers
    t0 = time.time()
    res2 = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    assert time.time() - t0 < max(first * 0.6, 5.0)
    assert res2.rows == res.rows


@pytest.mark.slow
def test_quick_demo_runs(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--no-theory"]) == 0
    out = capsys.readouterr().out
    assert "optimal vs constant" in out and (tmp_path / "report.md").is_file()
    assert EvalResults.load(tmp_path / "results.json").config == dataclasses.replace(harness.DEMO_QUICK, theory=False)


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


# ---------------------------------------------------------------------------------------------- infilling at matched calls

def _infill_results() -> EvalResults:
    """Synthetic infilling rows: constant at T = 1, 2, 4, 8, 16; optimal; a threshold rule that needs fewer calls."""
    from mdm_sched.results import TaskSummary

    rows = []
    for t, v in {1: 0.1, 2: 0.2, 4: 0.4, 8: 0.6, 16: 0.62}.items():
        rows.append(ResultRow("exact_match", "confidence", "constant", t, v, 0.02, calls=float(t), task="imgt1-65"))
        rows.append(ResultRow("exact_match", "confidence", "optimal", t, v + 0.01, 0.02, calls=float(t), task="imgt1-65"))
        rows.append(ResultRow("recovery", "confidence", "constant", t, 0.8, 0.01, calls=float(t), task="imgt1-65"))
        rows.append(ResultRow("cond_nll", "random", "constant", t, 1.0 - t / 100, 0.01, task="imgt1-65"))
        rows.append(ResultRow("cond_nll", "random", "optimal", t, 1.0 - t / 50, 0.01, task="imgt1-65"))
    for tau, (c, v) in {0.5: (1.5, 0.3), 0.7: (3.0, 0.5), 0.9: (5.0, 0.7)}.items():
        rows.append(ResultRow("exact_match", "confidence", "threshold", None, v, 0.02, calls=c, calls_se=0.1,
                              task="imgt1-65", parameter=tau))
    res = _synthetic_results()
    res.rows += rows
    res.config = dataclasses.replace(res.config, infill="imgt:1-65", infill_budgets=(2, 4, 8))
    res.infill = TaskSummary("imgt1-65", "IMGT positions 1-65 infilled", 82, (57.0, 60.0, 58.5), (38.0, 41.0, 39.5), 60)
    sens = lambda m, o, ok: SensitivityCheck(m, Estimate(0.1, 0.02), Estimate(0.6, 0.02), 20.0 if ok else 0.5, ok,
                                             order=o, task="imgt1-65")
    res.sensitivity += [sens("exact_match", "confidence", True), sens("recovery", "confidence", False),
                        sens("cond_nll", "random", True)]
    return res


def test_infill_calls_saved_on_a_synthetic_curve():
    res = _infill_results()
    saved = report.infill_calls_saved(res)
    assert {c.metric for c in saved} == {"exact_match", "cond_nll"}  # the insensitive recovery is left out
    by = {(c.metric, c.decoder, c.reference_budget): c for c in saved}
    # constant reaches 0.4 at 4 calls; threshold's curve (1.5, 0.3) -> (3, 0.5) reaches it at 2.25 calls
    thr = by[("exact_match", "threshold", 4)]
    assert thr.calls_to_match == pytest.approx(2.25) and thr.ratio == pytest.approx(4 / 2.25)
    assert thr.order == "confidence" and thr.task == "imgt1-65" and thr.reference_calls == 4.0
    # at T=8 (0.6) it needs 3 + (0.1 / 0.2) * 2 = 4 calls: 2x fewer
    assert by[("exact_match", "threshold", 8)].ratio == pytest.approx(2.0)
    assert ("exact_match", "constant", 4) not in by and ("exact_match", "optimal", 2) in by
    assert by[("cond_nll", "optimal", 8)].calls_to_match == pytest.approx(4.0)  # 1 - 4/50 = 1 - 8/100
    # a plateau of the baseline (T=8 no better than T=4) must not inflate the saving at T=8
    flat = _infill_results()
    flat.rows = [dataclasses.replace(r, value=0.35) if (r.metric, r.decoder, r.budget) == ("exact_match", "constant", 8)
                 else r for r in flat.rows]
    flat_saved = [c for c in report.infill_calls_saved(flat) if c.metric == "exact_match" and c.decoder == "threshold"]
    assert [c.reference_budget for c in flat_saved] == [2, 4]  # T=8 repeats T=4's fitted quality (0.375)
    assert flat_saved[1].baseline_value == pytest.approx(0.375) and flat_saved[1].reference_calls == pytest.approx(4.0)
    res.calls_saved = saved
    found = report.infill_findings(res)
    best = next(f for f in found if "largest saving" in f and "exact match" in f)
    assert "threshold" in best and "meets the 1.3x goal" in best
    assert any("cannot judge decoders on infilled residues recovered (confidence)" in f for f in found)
    tally = report.optimal_vs_adaptive(res, "confidence", "exact_match")["threshold"]
    # optimal is ~0.35 at 3 calls vs threshold's 0.5 there: optimal loses; at 1.5 and 5 calls too
    assert tally["lose"] == [1.5, 3.0, 5.0] and not tally["win"]
    # without the candidate on the task (e.g. infill_split='all' runs profile-free decoders only): no tally, no line
    res.rows = [r for r in res.rows if r.decoder != "optimal"]
    assert report.optimal_vs_adaptive(res, "confidence", "exact_match") == {}
    assert not any("optimal at the same mean calls" in f for f in report.infill_findings(res))
    table = report.matched_calls_table(res, "confidence")
    assert "tau=0.7" in table and "n/a" in table  # no conditional NLL for an adaptive rule / greedy order
    md = report.render_markdown(res)
    assert "## Infilling at matched model calls: imgt1-65" in md and "Calls saved at equal quality" in md
    # the unconditional summary is untouched by infilling rows
    assert "infilled" not in report.summary_table(res)


def _bernoulli_rows(decoder: str, points: dict, n: int, rng) -> list[ResultRow]:
    """Exact-match rows with ``n`` per-example 0/1 values drawn at rate ``p`` for each (calls, p) point."""
    rows = []
    for i, (calls, p) in enumerate(points.items()):
        hits = (rng.random(n) < p).astype(float)
        fixed = decoder == "constant"
        rows.append(ResultRow("exact_match", "confidence", decoder, int(calls) if fixed else None, float(hits.mean()),
                              float(hits.std(ddof=1) / np.sqrt(n)), calls=float(calls), task="imgt1-65",
                              parameter=None if fixed else float(i), per_unit=tuple(hits),
                              calls_per_unit=tuple([float(calls)] * n)))
    return rows


@pytest.mark.parametrize("n, threshold_points, verdict", [
    (2000, {1.5: 0.3, 3.0: 0.5, 5.0: 0.7}, "holds beyond the noise"),  # a real 1.8x saving at T=4
    (100, {2.0: 0.2, 4.0: 0.4, 8.0: 0.6}, "within the noise"),  # the same curve as constant, other draws
])
def test_calls_saved_bootstrap_interval(n, threshold_points, verdict):
    """Per-example values give each saving a paired bootstrap interval: a real saving on many examples clears the
    goal, the same law drawn twice on few examples stays within the noise of no saving."""
    res = _infill_results()
    rng = np.random.default_rng(1)
    res.rows = [r for r in res.rows if r.metric != "exact_match"]
    res.rows += _bernoulli_rows("constant", {1: 0.1, 2: 0.2, 4: 0.4, 8: 0.6, 16: 0.62}, n, rng)
    res.rows += _bernoulli_rows("threshold", threshold_points, n, rng)
    saved = [c for c in report.infill_calls_saved(res) if c.metric == "exact_match" and c.reference_budget == 4]
    (c,) = saved
    assert c.interval is not None and c.interval[0] <= c.ratio <= c.interval[1]
    if verdict == "within the noise":
        assert c.interval[0] < 1.0 < c.interval[1]
    else:
        assert c.interval[0] >= 1.3 and c.ratio == pytest.approx(4 / 2.25, rel=0.1)
    res.calls_saved = report.infill_calls_saved(res)
    best = next(f for f in report.infill_findings(res) if "largest saving" in f and "exact match" in f)
    assert verdict in best and "bootstrap interval" in best
    assert "90% bootstrap interval" in report.render_markdown(res)


def test_results_round_trip_with_infill_rows(tmp_path):
    res = _infill_results()
    res.infill = dataclasses.replace(res.infill, predicted_calls={"region": {2: 1.0, 4: 1.25}})
    res.calls_saved = report.infill_calls_saved(res)
    res.findings = report.infill_findings(res)
    text = res.to_json()
    back = EvalResults.from_json(text)
    assert back == res and back.to_json() == text
    assert back.rows[-1].parameter == 0.9 and back.infill.n_tokens == 60
    assert back.infill.predicted_calls == {"region": {2: 1.0, 4: 1.25}} and "region: 1.00x at T=2, 1.25x at T=4" in \
        report.render_markdown(back)
    old = json.loads(text)  # results written before predicted_calls existed still load
    del old["infill"]["predicted_calls"]
    assert EvalResults.from_json(json.dumps(old)).infill.predicted_calls == {}
    assert back.sensitivity_of("exact_match", order="confidence", task="imgt1-65").sensitive
    assert back.sensitivity_of("exact_match") is None  # the unconditional check is another one
    res.save(tmp_path / "results.json")
    assert report.render_markdown(EvalResults.load(tmp_path / "results.json")) == report.render_markdown(res)


def test_infill_config_is_checked(tmp_path):
    bad = [({"infill": "cdr3"}, "task spec"), ({"infill": "imgt:27-65", "infill_decoders": ("threshold",)}, "baseline"),
           ({"infill": "imgt:27-65", "infill_decoders": ("constant", "nope")}, "unknown decoder"),
           ({"infill": "imgt:27-65", "thresholds": ()}, "thresholds"),
           ({"infill": "imgt:27-65", "infill_orders": ("sideways",)}, "infill_orders"),
           ({"infill": "imgt:27-65", "infill_split": "test"}, "infill_split must be one of eval, all"),
           # both splits hold the profile split: a decoder fitted on it would be scored on its own data
           ({"infill": "imgt:27-65", "infill_split": "all"}, r"decoders \['optimal', 'sqrt'\] are fitted on")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            harness.run_eval(harness.EvalConfig(**kwargs), tmp_path)


def test_infill_stage_end_to_end_on_sapiens(tmp_path):
    cfg = harness.EvalConfig(model="sapiens-vh", judge=None, budgets=(2,), schedules=("constant", "optimal"),
                             orders=("random",), num_samples=4, n_orders=2, max_eval_sequences=6, path_kl_levels=1,
                             profile_levels=6, profile_tokens_per_level=128, infill="imgt:27-38", infill_sequences=10,
                             infill_budgets=(2,), thresholds=(0.9,), entropy_bounds=(1.0,), infill_samples=2,
                             infill_decoders=("constant", "optimal", "threshold", "entropy_bound"))
    res = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    task = res.infill
    assert task is not None and task.examples == 10 and task.name == "imgt27-38"
    rows = res.rows_of(task.name)
    n = task.n_tokens
    fixed = {(r.order, r.decoder, r.budget) for r in rows if r.metric == "exact_match" and r.parameter is None}
    assert fixed == {(o, d, t) for o in ("random", "confidence") for d in ("constant", "optimal") for t in (1, 2, n)}
    for r in rows:
        assert 0 < r.calls <= (r.budget or n) + 1e-9  # a row never needs more calls than the budget (or positions)
        if r.metric in ("recovery", "exact_match"):
            assert 0.0 <= r.value <= 1.0
    adaptive = [r for r in rows if r.parameter is not None]
    assert {(r.decoder, r.parameter) for r in adaptive} == {("threshold", 0.9), ("entropy_bound", 1.0)}
    assert all(r.budget is None and r.metric in ("recovery", "exact_match") for r in adaptive)
    nll = [r for r in rows if r.metric.startswith("cond_nll")]
    assert nll and all(r.order == "random" and r.parameter is None for r in nll)
    one = next(r for r in nll if r.metric == "cond_nll" and r.decoder == "constant" and r.budget == 1)
    full = next(r for r in nll if r.metric == "cond_nll" and r.decoder == "constant" and r.budget == n)
    assert full.value < one.value  # the chain rule knows more than the marginals
    checks = {(s.order, s.metric) for s in res.sensitivity if s.task == task.name}
    assert checks == {("random", m) for m in ("recovery", "exact_match", "cond_nll", "cond_nll_M")} | \
        {("confidence", m) for m in ("recovery", "exact_match")}
    md = (tmp_path / "report.md").read_text()
    assert "Infilling at matched model calls" in md and (tmp_path / "plot_infill_exact_match_confidence.png").is_file()
    # optimal's profile (the unconditional curve read at the task's length) predicts its own saving
    assert set(task.predicted_calls) == {"random"} and set(task.predicted_calls["random"]) == {2}
    assert task.predicted_calls["random"][2] >= 1.0 and "predicts for its optimal schedule" in md
    assert EvalResults.load(tmp_path / "results.json") == res
    t0 = time.time()
    again = harness.run_eval(cfg, tmp_path, log=lambda s: None)  # every infill part comes from the cache
    assert again.rows == res.rows and time.time() - t0 < 60


def test_infill_split_all_builds_the_task_on_both_splits():
    from mdm_sched.data import load_source
    from mdm_sched.infill_eval import load_task

    model = ms.load_masked_lm("sapiens-vh")
    cfg = harness.EvalConfig(infill="imgt:27-65", infill_decoders=("constant", "threshold"))
    every = load_task(dataclasses.replace(cfg, infill_split="all"), model)
    evaluated, train = load_task(cfg, model), load_task(cfg, model, split=cfg.profile_split)
    assert len(every) == len(evaluated) + len(train) == len(load_source(cfg.data))
    assert every.names == evaluated.names + train.names  # the evaluation split first, then the profile split
    assert torch.equal(every.target[:len(evaluated), :evaluated.target.shape[1]], evaluated.target)


@pytest.mark.slow
@pytest.mark.filterwarnings("error:the profile behind this schedule")
def test_profile_decoders_infill_and_unconditional_on_sapiens(tmp_path):
    """optimal on the region-conditional, policy and self profiles: measured on the profile split, matching the order
    they run under (no mismatch warning from generate), cached; the policy decoder only under ranked orders."""
    from mdm_sched import profile_stage
    from mdm_sched.infill_eval import ProfileSources, load_task

    cfg = harness.EvalConfig(model="sapiens-vh", judge=None, budgets=(2,), schedules=("constant", "optimal_self",
                             "optimal_policy"), orders=("random", "confidence"), num_samples=2, n_orders=1,
                             max_eval_sequences=4, path_kl_levels=1, profile_levels=4, profile_tokens_per_level=64,
                             infill="imgt:27-38", infill_sequences=6, infill_budgets=(2,), infill_samples=1,
                             infill_decoders=("constant", "optimal", "optimal_region", "optimal_policy", "optimal_self"),
                             profile_walks=3, batch_size=16, ordered_nll=True)
    res = harness.run_eval(cfg, tmp_path, log=lambda s: None)
    rows = [r for r in res.rows_of(res.infill.name) if r.metric == "exact_match"]
    ran = {(r.order, r.decoder) for r in rows}
    assert ("random", "optimal_policy") not in ran and ("confidence", "optimal_policy") in ran
    assert {("random", d) for d in ("optimal_region", "optimal_self")} <= ran
    assert {("confidence", d) for d in ("optimal_region", "optimal_self")} <= ran
    ordered = {(r.decoder, r.budget) for r in res.rows_of(res.infill.name) if r.metric == "cond_nll" and r.order == "confidence"}
    assert ("optimal_policy", 2) in ordered and ("constant", res.infill.n_tokens) in ordered
    assert res.sensitivity_of("cond_nll", order="confidence", task=res.infill.name) is not None
    # every extra profile was measured on the profile split, for the order and conditioning it is used with
    cached = {p.stem: harness.read_json(p, what="cache") for p in (tmp_path / "cache" / "profiles").glob("*.json")}
    assert set(cached) == {"region", "region-policy-confidence", "region-self-random", "region-self-confidence",
                           "unconditional-self-random", "unconditional-self-confidence",
                           "unconditional-policy-confidence"}
    profiles = {k: ms.InformationProfile.from_dict(v["profile"]) for k, v in cached.items()}
    assert profiles["region-policy-confidence"].kind == "policy" and profiles["region"].kind == "random"
    assert profiles["region-self-confidence"].source == "self" and profiles["region-self-confidence"].order == "confidence"
    assert {p.conditioning for k, p in profiles.items() if k.startswith("region")} == {"infill"}
    assert {p.conditioning for k, p in profiles.items() if k.startswith("unconditional")} == {"none"}
    model = ms.load_masked_lm("sapiens-vh")
    train = profile_stage.task_examples(load_task(cfg, model, split=cfg.profile_split))
    evaluated = load_task(cfg, model)
    assert profiles["region"].metadata["data_sha256"] == train.sha256  # the profile split, not the evaluated examples
    assert train.sha256 != profile_stage.task_examples(evaluated).sha256
    walked = profile_stage.equal_length(train, cfg.profile_walks, cfg.seed)
    assert len(walked) == 3 and len(set(walked.n_targets.tolist())) == 1
    assert profiles["region-policy-confidence"].metadata["data_sha256"] == walked.sha256
    # the decoder's schedule is the table DP on the policy profile at the task's length
    src = ProfileSources(type("Host", (), {"cfg": cfg, "model": model})(), np.zeros(1))
    assert src.walked().sha256 == walked.sha256
    n = res.infill.n_tokens
    want = schedules.optimal(profiles["region-policy-confidence"], 2, n_tokens=n)
    assert want.metadata["profile_order"] == "confidence" and want.metadata["profile_conditioning"] == "infill"
    # unconditional: optimal_self under both orders, optimal_policy under confidence only
    unc = {(r.order, r.decoder) for r in res.rows_of() if r.metric == "js2"}
    assert ("random", "optimal_policy") not in unc
    assert {("random", "optimal_self"), ("confidence", "optimal_self"), ("confidence", "optimal_policy")} <= unc
    assert {r.decoder for r in res.rows_of() if r.metric == "bound"} == {"constant", "optimal_self"}
    t0 = time.time()
    again = harness.run_eval(cfg, tmp_path, log=lambda s: None)  # every profile comes from the cache
    assert again.rows == res.rows and time.time() - t0 < 60
