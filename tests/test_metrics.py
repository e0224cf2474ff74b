"""Metrics against the exact computations of the oracles (docs/theory.md §3 and §6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import metrics
from mdm_sched.oracle import MarkovChainOracle, TabularOracle
from mdm_sched.schedules import Schedule, constant, nll_bound


@pytest.fixture(scope="module")
def tab():
    return TabularOracle.random(vocab_size=3, n_tokens=4, concentration=0.3, seed=3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_heldout_bound_converges_to_exact_nll_bound(tab):
    """Mean of the block estimator = (1/N) sum_t k_t CE(K_{t-1}) with the model's exact CE profile."""
    model = tab.miscalibrated(temperature=1.4, noise=0.3, seed=1)
    scheds = {"a": Schedule([1, 3]), "b": Schedule([2, 1, 1]), "c": constant(4, 1)}
    x = tab.sample(3000, generator=gen(1))
    res = metrics.heldout_likelihood(model, x, scheds, n_orders=1, generator=gen(2), batch_size=4096)
    summ = metrics.summarize_heldout(res, baseline="a")
    ce = tab.ce_profile(model)
    for name, s in scheds.items():
        exact = nll_bound(ce, s)
        assert abs(summ[name]["bound"] - exact) < 4 * summ[name]["bound_se"], (name, summ[name], exact)
        assert summ[name]["bound_se"] < 0.05
    # paired difference is consistent with the difference of the exact bounds
    d_exact = nll_bound(ce, scheds["b"]) - nll_bound(ce, scheds["a"])
    assert abs(summ["b"]["bound_diff"] - d_exact) < 4 * summ["b"]["bound_diff_se"]
    assert summ["a"]["bound_diff"] == 0.0


def test_m_order_estimate_tightens_to_exact_sampler_nll(tab):
    """-log mean_m q_sigma_m(x) -> -log q(x); weighted by pi over all sequences it approaches -E log q exactly."""
    sched = Schedule([2, 2])
    xs = tab.all_sequences()
    w = tab.probs.double()
    res = metrics.heldout_likelihood(tab, xs, {"s": sched}, n_orders=400, generator=gen(3), batch_size=8192)
    lq = res.logq["s"]  # [V^N, M]
    exact_q = tab.sampler_law(sched)
    exact_nll = float(-(w * exact_q.log()).sum())
    bound = float(-(w * lq.mean(1)).sum())
    tight = float(-(w * metrics.logmeanexp(lq, 1)).sum())
    exact_bound = nll_bound(tab.entropy_profile(), sched) * 4
    assert abs(bound - exact_bound) < 0.02 * exact_bound
    assert exact_nll < exact_bound - 0.05  # the bound is loose here, so the test can tell them apart
    assert abs(tight - exact_nll) < 0.01 * exact_nll, (tight, exact_nll, bound)
    # per sequence: q(x) = E_sigma q_sigma(x), so the Monte Carlo mean of q_sigma matches sampler_law
    assert torch.allclose(lq.exp().mean(1), exact_q, rtol=0.25, atol=1e-3)


def test_m1_equals_bound_and_orders_shared_across_schedules(tab):
    x = tab.sample(50, generator=gen(4))
    res = metrics.heldout_likelihood(tab, x, [constant(4, 2), Schedule([1, 1, 1, 1], name="ar")], generator=gen(5))
    s = metrics.summarize_heldout(res)
    assert set(s) == {"constant@T=2", "ar@T=4"}
    for row in s.values():
        assert row["bound"] == pytest.approx(row["nll_M"])
    # the N-step and the T-step estimates share rows of the level-0 forward: cost = levels x B
    assert res.n_forward_rows == 4 * 50


def test_path_kl_matches_exact_enumeration(tab):
    sched = Schedule([2, 2])
    out = ms.generate(tab, gen_length=4, schedule=sched, num_samples=1500, mask_token_id=tab.mask_token_id,
                      generator=gen(6))
    exact = metrics.exact_order_path_kl(tab, sched)
    full = metrics.path_kl(tab, out.sequences, out.reveal_step, out.token_logprobs, generator=gen(7))
    sub = metrics.path_kl(tab, out.sequences, out.reveal_step, out.token_logprobs, n_levels=1, generator=gen(8))
    assert exact > 0.3
    assert abs(full.mean - exact) < 4 * full.se, (full.mean, full.se, exact)
    assert abs(sub.mean - exact) < 4 * sub.se
    assert full.levels_used is None and sub.levels_used == 1
    assert sub.n_forward_rows == 1500 and full.n_forward_rows == 1500 * 2
    assert full.per_token == pytest.approx(full.mean / 4)


def test_path_kl_is_zero_for_the_n_step_sampler_and_large_for_one_call():
    chain = MarkovChainOracle.random(vocab_size=4, n_tokens=12, stickiness=0.6, seed=0)
    mk = chain.mask_token_id
    n_step = ms.generate(chain, gen_length=12, schedule=12, num_samples=64, mask_token_id=mk, generator=gen(9))
    r0 = metrics.path_kl(chain, n_step.sequences, n_step.reveal_step, n_step.token_logprobs)
    assert r0.mean == 0.0 and r0.n_forward_rows == 0
    one = ms.generate(chain, gen_length=12, schedule=1, num_samples=64, mask_token_id=mk, generator=gen(10))
    r1 = metrics.path_kl(chain, one.sequences, one.reveal_step, one.token_logprobs, n_levels=4, generator=gen(11))
    assert r1.mean > 5 * r1.se > 0


def test_path_kl_validates_shapes(tab):
    x = tab.sample(3)
    with pytest.raises(ValueError, match="reveal_step"):
        metrics.path_kl(tab, x, torch.ones(3, 5, dtype=torch.long), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n_levels"):
        metrics.path_kl(tab, x, torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 4), n_levels=0)


def test_pseudo_log_likelihood_exact_and_subsampled(tab):
    xs = tab.all_sequences()
    pll = metrics.pseudo_log_likelihood(tab, xs)
    # brute force: log p(x_j | x_-j) from the joint table
    table = tab.probs.view(3, 3, 3, 3)
    want = torch.zeros(xs.shape[0], dtype=torch.float64)
    for j in range(4):
        idx = [xs[:, d] for d in range(4)]
        num = table[tuple(idx)]
        idx[j] = slice(None)
        den = torch.stack([table[tuple(xs[:, d] if d != j else torch.full_like(xs[:, 0], v) for d in range(4))]
                           for v in range(3)], -1).sum(-1)
        want += (num / den).clamp_min(1e-300).log().clamp(min=-80.0)
    assert torch.allclose(pll, want / 4, atol=1e-5)
    sub = metrics.pseudo_log_likelihood(tab, xs.repeat(200, 1), n_positions=1, generator=gen(12))
    assert abs(float(sub.view(200, -1).mean(0).sub(pll).abs().max())) < 0.5
    with pytest.raises(ValueError, match="n_positions"):
        metrics.pseudo_log_likelihood(tab, xs, n_positions=0)


def test_kmer_and_position_js():
    a = torch.randint(0, 4, (64, 20), generator=gen(13))
    js0, se0 = metrics.kmer_js(a, a, 2, generator=gen(14))
    assert js0 == pytest.approx(0.0, abs=1e-12) and se0 > 0
    b = torch.randint(4, 8, (64, 20), generator=gen(15))
    js1, _ = metrics.kmer_js(a, b, 3)
    assert js1 == pytest.approx(1.0)  # disjoint spectra: 1 bit
    c = torch.randint(0, 4, (64, 20), generator=gen(16))
    js2, se2 = metrics.kmer_js(a, c, 1)
    assert 0 < js2 < 0.05 and se2 > 0
    p0, _ = metrics.position_js(a, a)
    p1, _ = metrics.position_js(a, b)
    assert p0 == pytest.approx(0.0, abs=1e-12) and p1 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one length"):
        metrics.position_js(a, b[:, :10])
    with pytest.raises(ValueError, match="different lengths"):
        metrics.kmer_js([[1, 2], [1]], a, 1)
    with pytest.raises(ValueError, match="k must"):
        metrics.kmer_js(a, a, 0)


def test_oracle_exact_identities(tab):
    model = tab.miscalibrated(temperature=1.3, seed=0)
    for sched in (Schedule([1, 3]), Schedule([2, 2]), Schedule([4])):
        e = metrics.oracle_exact(tab, sched)
        assert e["learning_error"] == pytest.approx(0.0, abs=1e-9)
        assert e["order_kl"] == pytest.approx(e["fact_error"], abs=1e-9)  # section 3 identity, perfect model
        assert e["kl"] <= e["order_kl"] + 1e-9
        assert e["fact_error"] <= e["fact_bound"] + 1e-9
        m = metrics.oracle_exact(tab, sched, model)
        assert m["order_kl"] == pytest.approx(m["fact_error"] + m["learning_error"], abs=1e-9)
        assert m["nll"] == pytest.approx(m["entropy"] + m["kl"])
    assert metrics.oracle_exact(tab, Schedule([1, 1, 1, 1]))["kl"] == pytest.approx(0.0, abs=1e-9)


def test_bad_inputs(tab):
    with pytest.raises(ValueError, match="reveals"):
        metrics.heldout_likelihood(tab, tab.sample(2), constant(3, 1))
    with pytest.raises(ValueError, match="n_orders"):
        metrics.heldout_likelihood(tab, tab.sample(2), constant(4, 1), n_orders=0)
    with pytest.raises(TypeError, match="sequences"):
        metrics.heldout_likelihood(tab, torch.rand(2, 4), constant(4, 1))
    with pytest.raises(ValueError, match="empty"):
        metrics.mean_se([])
    m, s = metrics.mean_se([1.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert math.isnan(metrics.mean_se([1.0])[1])
    assert np.isfinite(float(metrics.logmeanexp(torch.tensor([-1000.0, -1000.0]))))


def test_masked_token_loglik_approaches_pll(tab):
    xs = tab.all_sequences()
    pll = metrics.pseudo_log_likelihood(tab, xs)
    one = metrics.masked_token_loglik(tab, xs, mask_fraction=0.2, n_masks=300, generator=gen(20))  # 1 of 4 masked
    assert torch.allclose(one, pll, atol=0.35)
    assert abs(float(one.mean() - pll.mean())) < 0.05
    half = metrics.masked_token_loglik(tab, xs, mask_fraction=0.5, n_masks=50, generator=gen(21))
    assert float((tab.probs * half).sum()) < float((tab.probs * pll).sum())  # less context, lower likelihood
    with pytest.raises(ValueError, match="mask_fraction"):
        metrics.masked_token_loglik(tab, xs, mask_fraction=1.5)
