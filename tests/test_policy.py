"""Ordering-aware (policy) profiles, the table DP and self profiles, checked on exact oracles."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.estimate import estimate_profile
from mdm_sched.oracle import MarkovChainOracle, TabularOracle
from mdm_sched.profile import InformationProfile


def compositions(n: int):
    """Every schedule of n tokens (all 2^(n-1) compositions)."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        sizes, run = [], 1
        for cut in cuts:
            if cut:
                sizes.append(run)
                run = 1
            else:
                run += 1
        yield [*sizes, run]


def structured_oracle(seed: int, vocab: int = 3) -> TabularOracle:
    """Three near-deterministic independent positions and three strongly tied ones, in a random arrangement:
    the ordered sampler reveals the easy ones first, so its costs differ from the random-order profile's."""
    g = np.random.default_rng(seed)
    joint = np.full([vocab] * 3, 0.15 / vocab ** 3)
    for v in range(vocab):
        joint[(v,) * 3] += 0.85 / vocab
    for _ in range(3):
        p = np.full(vocab, 0.1 / (vocab - 1))
        p[g.integers(vocab)] = 0.9
        joint = np.multiply.outer(joint, p)
    return TabularOracle(torch.tensor(np.transpose(joint, g.permutation(6))))


# -- the ordered sampler's exact law ------------------------------------------------------------------

@pytest.mark.parametrize("order", ["confidence", "margin", "entropy"])
def test_each_sequence_has_one_path_so_the_law_is_exact(order):
    tab = TabularOracle.random(3, 5, concentration=0.3, seed=4)
    model = tab.miscalibrated(1.4, noise=0.3)
    for sched in ([1] * 5, [2, 3], [5], [1, 3, 1]):
        q = tab.ordered_sampler_law(sched, order, model)
        assert abs(float(q.sum()) - 1.0) < 1e-12  # one path per sequence: the products form a law
    mean, _ = tab.policy_table(order, model)
    # k = (1, ..., 1): the teacher-forced losses along the path are -log q exactly, so sum_K CE_1(K) = E[-log q_1]
    q1 = tab.ordered_sampler_law([1] * 5, order, model)
    assert abs(mean[:, 0].sum() - float(-(tab.probs * q1.log()).sum())) < 1e-9
    assert abs(tab.ordered_kl([1] * 5, order) ) < 1e-9  # a perfect model's one-per-call ordered sampler is exact


# -- the estimator against the exact table ------------------------------------------------------------

def test_policy_profile_matches_the_exact_table():
    tab = structured_oracle(0)
    data = tab.sample(1500, torch.Generator().manual_seed(0))
    prof = estimate_profile(tab, data, order="confidence", batch_size=300, progress=False)
    mean, sd = tab.policy_table("confidence")
    assert prof.kind == "policy" and prof.order == "confidence" and prof.rows.tolist() == [1500] * 6
    valid = np.isfinite(mean)
    z = np.abs(prof.rank_ce[valid] - mean[valid]) / (sd[valid] / np.sqrt(1500) + 1e-3)  # float32 logits
    assert z.max() < 5.0, z
    np.testing.assert_allclose(prof.ce, mean[:, 0], atol=5 * sd[:, 0].max() / np.sqrt(1500) + 1e-3)
    overlap = prof.metadata["state_overlap"]
    assert len(overlap) == 6 and overlap[0] == 1.0 and all(0.0 <= v <= 1.0 for v in overlap)
    # worse-ranked positions are harder: each level of the fit is non-decreasing in the rank
    fit = prof.fitted_ranks()
    assert all(np.all(np.diff(fit[k, :6 - k]) >= -1e-12) for k in range(6))


def test_every_forward_of_a_walk_is_pooled_into_its_nearest_level():
    from mdm_sched.policy import level_bins

    np.testing.assert_array_equal(level_bins(np.arange(6), 6), np.arange(6))  # every count its own level
    np.testing.assert_array_equal(level_bins(np.array([0, 5, 10, 15]), 16), [0] * 3 + [1] * 5 + [2] * 5 + [3] * 3)
    np.testing.assert_array_equal(level_bins(np.array([0, 7]), 16), [0] * 4 + [1] * 7 + [-1] * 5)  # no far pooling
    chain = MarkovChainOracle.random(4, 16, stickiness=0.6, seed=7)
    data = chain.sample(64, torch.Generator().manual_seed(3))
    prof = estimate_profile(chain, data, order="entropy", levels=[0, 5, 10, 15], batch_size=64, progress=False)
    assert prof.metadata["pooled_counts"] == [[0, 2], [3, 7], [8, 12], [13, 15]]
    assert prof.tokens.tolist() == [64 * sum(16 - k for k in range(a, b + 1)) for a, b in prof.metadata["pooled_counts"]]
    assert np.isfinite(prof.rank_ce[1, :11]).all() and np.isnan(prof.rank_ce[1, 11:]).all()


@pytest.mark.parametrize("order", ["confidence", "random"])
def test_ordered_nll_is_the_exact_nll_of_the_ordered_sampler(order):
    from mdm_sched.policy import ordered_nll

    tab = TabularOracle.random(3, 5, concentration=0.3, seed=6)
    model = tab.miscalibrated(1.3, noise=0.2)
    data = tab.sample(1500, torch.Generator().manual_seed(2))
    for sched in ([2, 3], [1, 1, 3], [5]):
        got = ordered_nll(model, data, sched, order=order, batch_size=500)
        if order == "random":  # one random order per example: the random-order bound (1/N) sum_t k_t CE(K_{t-1})
            exact = schedules.nll_bound(tab.ce_profile(model), sched)
        else:
            exact = float(-(tab.probs * tab.ordered_sampler_law(sched, order, model).log()).sum()) / 5
        assert abs(got.mean - exact) < 4.5 * got.se, (sched, got.mean, exact, got.se)
    with pytest.raises(ValueError, match=r"schedule\.n_tokens=4"):
        ordered_nll(model, data, [2, 2])


@pytest.fixture(scope="module")
def structured_runs():
    """Per seed: the oracle, its estimated policy profile and its random-order profile (both from samples)."""
    out = []
    for seed in (0, 1):
        tab = structured_oracle(seed)
        data = tab.sample(1200, torch.Generator().manual_seed(seed))
        pol = estimate_profile(tab, data, order="confidence", batch_size=400, progress=False)
        rnd = estimate_profile(tab, data, batch_size=400, tokens_per_level=2400, progress=False)
        out.append((tab, pol, rnd))
    return out


def test_policy_cost_moves_with_the_exact_kl_of_the_ordered_sampler(structured_runs):
    for tab, pol, rnd in structured_runs:
        comps = list(compositions(6))
        kl = np.array([tab.ordered_kl(c, "confidence") for c in comps])
        rho_policy = spearmanr([schedules.cost(pol, c) for c in comps], kl)[0]
        rho_random = spearmanr([schedules.cost(rnd.curve(), c) for c in comps], kl)[0]
        assert rho_policy > 0.9 and rho_policy > rho_random + 0.3, (rho_policy, rho_random)
        for t in (2, 3, 4):
            pool = [k for k, c in zip(kl, comps) if len(c) == t]
            best, worst = min(pool), max(pool)
            picked = tab.ordered_kl(schedules.optimal(pol, t), "confidence")
            assert picked <= best + 0.05 * (worst - best), (t, picked, best, worst)
            # the random-order profile's schedule is far off for the ordered sampler
            assert tab.ordered_kl(schedules.optimal(rnd, t), "confidence") > picked


# -- the table DP ------------------------------------------------------------------------------------------

def _table_value(costs: np.ndarray, sizes) -> float:
    cum = np.concatenate([[0], np.cumsum(sizes)])
    return float(sum(costs[a, b] for a, b in itertools.pairwise(cum)))


def test_table_dp_is_exact_on_tables_that_are_not_monge():
    rng = np.random.default_rng(0)
    n = 7
    for _ in range(6):
        costs = rng.exponential(1.0, size=(n + 1, n + 1)) * (1 + np.arange(n + 1))[None, :] ** rng.uniform(0, 1.5)
        for t in range(1, n + 1):
            for cap in (None, 3):
                pool = [c for c in compositions(n) if len(c) == t and (cap is None or max(c) <= cap)]
                if not pool:
                    with pytest.raises(ValueError):
                        schedules.optimal_blocks(costs, t, cap)
                    continue
                best = min(_table_value(costs, c) for c in pool)
                got = schedules.optimal_blocks(costs, t, cap)
                assert got.steps == t and abs(_table_value(costs, got.sizes) - best) < 1e-9
                assert got.metadata["cost"] == pytest.approx(best)
    # a random-order curve as a table: the table DP and the Monge DP agree
    curve = np.sort(rng.uniform(0, 3, size=40))[::-1]
    a, b = np.triu_indices(41, 1)
    table = np.full((41, 41), np.inf)
    table[a, b] = (b - a) * curve[a]
    for t in (3, 9):
        assert schedules.cost(curve, schedules.optimal_blocks(table, t)) == pytest.approx(
            schedules.cost(curve, schedules.optimal(curve, t)))


def test_every_kind_gives_an_optimal_schedule(structured_runs):
    _, pol, rnd = structured_runs[0]
    for prof in (pol, rnd):
        sched = schedules.optimal(prof, 3)
        assert sched.n_tokens == 6 and sched.steps == 3 and sched.metadata["profile_kind"] == prof.kind
        assert sched.metadata["cost"] == pytest.approx(schedules.cost(prof, sched) if prof.kind == "policy"
                                                       else schedules.cost(prof.curve(), sched))
        assert prof.predicted_gain(3) >= 1.0 and prof.predicted_calls_saved(3) >= 1.0
        assert prof.bound(sched) <= prof.bound(schedules.constant(6, 3)) + 1e-12
    assert schedules.optimal(pol, 3, n_tokens=12).n_tokens == 12  # fractions carry over to other lengths
    costs = pol.block_costs()
    assert costs.shape == (7, 7) and np.isinf(costs[np.tril_indices(7)]).all()
    np.testing.assert_allclose(costs[0, 1:], np.cumsum(pol.fitted_ranks()[0]))
    with pytest.raises(ValueError, match="random-order profile"):
        schedules.sqrt_rule(pol, 3)


def test_policy_profile_saves_loads_and_flags_other_orders(structured_runs, tmp_path):
    _, pol, rnd = structured_runs[0]
    pol.save(tmp_path / "p.json")
    back = InformationProfile.load(tmp_path / "p.json")
    assert back == pol and back.kind == "policy" and back != rnd
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 2
    assert json.loads(json.dumps(rnd.to_dict()))["version"] == 1  # random-order files stay readable by older versions
    with pytest.warns(UserWarning, match="order='confidence' but the generation uses order='random'"):
        pol.check(order="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pol.check(order="confidence", conditioning="none")
    pol.plot(tmp_path / "p.png")


# -- resume, processes ---------------------------------------------------------------------------------------

def _policy_run(accelerator=None, checkpoint=None):
    chain = MarkovChainOracle.random(4, 10, stickiness=0.6, seed=7)
    data = chain.sample(96, torch.Generator().manual_seed(3))
    return estimate_profile(chain, data, order="margin", levels=5, batch_size=16, checkpoint_every=2, progress=False,
                            accelerator=accelerator, checkpoint=checkpoint)


def test_policy_resume_is_exact(tmp_path, monkeypatch):
    full = _policy_run()
    original, calls = MarkovChainOracle.forward, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(MarkovChainOracle, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        _policy_run(checkpoint=tmp_path / "p.npz")
    monkeypatch.setattr(MarkovChainOracle, "forward", original)
    resumed = _policy_run(checkpoint=tmp_path / "p.npz")
    assert resumed == full and resumed.metadata["forwards"] == full.metadata["forwards"] == 6 * 10


def _conditional_run():
    """A random-order profile of responses of different lengths (prompts 1..4 tokens of a 10-token chain)."""
    chain = MarkovChainOracle.random(4, 10, stickiness=0.6, seed=7)
    data = chain.sample(80, torch.Generator().manual_seed(5)).tolist()
    ex = ms.conditioning.Examples.from_pairs([s[:1 + i % 4] for i, s in enumerate(data)],
                                             [s[1 + i % 4:] for i, s in enumerate(data)])
    return estimate_profile(chain, ex, levels=4, batch_size=16, tokens_per_level=300, checkpoint_every=2,
                            progress=False)


_DIST_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
import torch.distributed as dist
from test_policy import _conditional_run, _policy_run
torch.set_num_threads(1)
dist.init_process_group("gloo")
p, c = _policy_run(), _conditional_run()
if dist.get_rank() == 0:
    p.save(sys.argv[1])
    c.save(sys.argv[2])
dist.barrier()
dist.destroy_process_group()
"""


def test_policy_and_conditional_two_processes_equal_one(tmp_path):
    import socket

    script = tmp_path / "run.py"
    script.write_text(_DIST_SCRIPT.format(here=str(Path(__file__).parent)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(tmp_path / "two.json"), str(tmp_path / "cond.json")]
    res = subprocess.run(cmd, env=env, timeout=240, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    two = InformationProfile.load(tmp_path / "two.json")
    assert two.metadata["processes"] == 2 and two == _policy_run()
    cond = InformationProfile.load(tmp_path / "cond.json")
    assert cond.metadata["processes"] == 2 and cond.lengths == [6, 9] and cond == _conditional_run()


# -- self profiles -----------------------------------------------------------------------------------------

def test_self_profile_of_a_perfect_model_is_its_data_profile():
    tab = TabularOracle.random(3, 5, concentration=0.3, seed=1)
    prof = ms.estimate_self_profile(tab, n_tokens=5, num_samples=1500, batch_size=300, tokens_per_level=3000,
                                    progress=False)
    assert prof.source == "self" and prof.metadata["self_sampler"]["order"] == "random"
    assert np.all(np.abs(prof.ce - tab.entropy_profile()) < 4.5 * prof.se)
    pol = ms.estimate_self_profile(tab, n_tokens=5, num_samples=1500, batch_size=300, order="entropy", progress=False)
    mean, sd = tab.policy_table("entropy")
    assert pol.kind == "policy" and pol.source == "self"
    assert np.all(np.abs(pol.ce - mean[:, 0]) < 5 * sd[:, 0] / np.sqrt(1500) + 1e-3)
    assert schedules.optimal(pol, 2).metadata["profile_source"] == "self"


def test_self_profile_of_a_wrong_model_targets_its_own_slow_sampler_not_the_data():
    tab = TabularOracle.random(3, 4, concentration=0.3, seed=3)
    hot = tab.miscalibrated(temperature=2.0)  # its conditionals are those of no joint law
    q_n = tab.sampler_law([1] * 4, model=hot)  # the law of its own N-call random-order sampler
    own = TabularOracle(q_n, vocab_size=3, n_tokens=4)
    exact_self, exact_data = own.ce_profile(hot), tab.ce_profile(hot)
    ctx = ms.conditioning.Examples.from_rows([[0] * 4], [[True] * 4], kind="none", description="ctx")
    prof = ms.estimate_self_profile(hot, examples=ctx, num_samples=1500, batch_size=300, tokens_per_level=3000,
                                    progress=False)
    assert np.all(np.abs(prof.ce - exact_self) < 4.5 * prof.se + 1e-4)  # its own samples' profile ...
    assert np.abs(exact_self - exact_data).max() > 10 * prof.se.max()  # ... which is not the data's
    # what it bounds: section 3 with pi = q_N, sum_t k_t CE_self(K_{t-1}) - H(q_N) >= KL(q_N || q_T)
    for sched in ([2, 2], [1, 3], [4]):
        k_cum = np.cumsum([0, *sched])[:-1]
        bound = float(np.sum(np.asarray(sched) * exact_self[k_cum])) - own.entropy()
        q_t = tab.sampler_law(sched, model=hot)
        assert bound >= float((q_n * (q_n.log() - q_t.log())).sum()) - 1e-9


@pytest.mark.slow
def test_antiberty_confidence_policy_on_region_infill():
    """A real model: under confidence order the worse-ranked positions of the region are harder."""
    if not ms.assets.available().get("antiberty"):
        pytest.skip("antiberty not installed")
    mlm = ms.load_masked_lm("antiberty")
    seqs = mlm.encode(ms.data.germlines("human", "H", split="test"))[:24]
    ex = ms.conditioning.Examples.from_region(seqs, 40, 52)
    prof = estimate_profile(mlm, ex, order="confidence", batch_size=24, progress=False)
    assert prof.n_tokens == 12 and prof.kind == "policy"
    first, last = prof.rank_ce[0, :3].mean(), prof.rank_ce[0, -3:].mean()
    assert last > 5 * first + 0.05  # FR2 is nearly known (first ranks ~0.007 nats, last ~0.12 measured)
    assert np.isfinite(schedules.cost(prof, schedules.optimal(prof, 4)))
