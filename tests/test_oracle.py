"""Exact oracles: conditionals, profiles, the sampler's exact law and the identity of docs/theory.md §3."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched import schedules as S
from mdm_sched.oracle import MarkovChainOracle, TabularOracle


def order_averaged_kl_brute_force(orc: TabularOracle, sizes, model) -> tuple[float, torch.Tensor]:
    """E_sigma KL(pi || q_sigma) and the mixture law, by enumerating every permutation (independent of the library DP)."""
    n = orc.n_tokens
    xs = orc.all_sequences()
    k_cum = np.concatenate([[0], np.cumsum(sizes)])
    kls, mixture = [], torch.zeros(xs.shape[0], dtype=torch.float64)
    for perm in itertools.permutations(range(n)):
        log_q = torch.zeros(xs.shape[0], dtype=torch.float64)
        for t in range(len(sizes)):
            visible = torch.zeros(xs.shape, dtype=torch.bool)
            visible[:, list(perm[: k_cum[t]])] = True
            probs = model.conditionals(xs, visible)
            block = list(perm[k_cum[t]: k_cum[t + 1]])
            log_q += probs[:, block].gather(-1, xs[:, block].unsqueeze(-1)).squeeze(-1).log().sum(-1)
        p = orc.probs
        kls.append(float((p * (p.log() - log_q)).sum()))
        mixture += log_q.exp()
    return float(np.mean(kls)), mixture / math.factorial(n)


@pytest.fixture(scope="module")
def orc():
    return TabularOracle.random(vocab_size=3, n_tokens=5, concentration=0.4, seed=11)


def test_tabular_conditionals_are_bayes_rule(orc):
    xs = orc.sample(50, torch.Generator().manual_seed(0))
    visible = torch.rand(50, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    cond = orc.conditionals(xs, visible)
    assert torch.allclose(cond.sum(-1), torch.ones(50, 5, dtype=torch.float64))
    table = orc.probs.reshape([3] * 5)
    for r in range(0, 50, 7):
        for j in range(5):
            if visible[r, j]:
                assert cond[r, j, xs[r, j]] == 1.0
                continue
            idx = [xs[r, d].item() if visible[r, d] else slice(None) for d in range(5)]
            sub = table[tuple(idx)]
            keep = [d for d in range(5) if not visible[r, d]]
            marg = sub.sum(dim=[keep.index(d) for d in keep if d != j]) if len(keep) > 1 else sub
            assert torch.allclose(cond[r, j], marg / marg.sum(), atol=1e-12)


def test_forward_returns_log_conditionals_with_finite_mask_logit(orc):
    canvas = torch.tensor([[0, 3, 3, 2, 3], [3, 3, 3, 3, 3]])  # 3 = mask id
    out = orc(canvas)
    assert out.logits.shape == (2, 5, 4) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    assert (out.logits[..., orc.mask_token_id] == 0.0).all()  # finite and large: a careless sampler picks it
    probs = orc.conditionals(canvas.clamp(max=2), canvas != 3)
    assert torch.allclose(out.logits[..., :3].exp().double(), probs, atol=1e-6)
    assert orc.config.vocab_size == 4 and orc.config.mask_token_id == 3
    with pytest.raises(ValueError, match="shape"):
        orc(torch.zeros(2, 4, dtype=torch.long))


def test_entropy_profile_properties(orc):
    g = orc.entropy_profile()
    assert g.shape == (5,)
    assert np.all(np.diff(g) <= 1e-12)  # g is non-increasing
    # chain rule: any-order AR with k=(1,..,1) has zero factorization error, so sum_i g(i) = H(pi)
    assert g.sum() == pytest.approx(orc.entropy(), abs=1e-10)
    assert np.allclose(orc.ce_profile(), g, atol=1e-12)


def test_sampler_law_extremes(orc):
    q_ar = orc.sampler_law([1] * 5)
    assert torch.allclose(q_ar, orc.probs, atol=1e-12)  # one token per call reproduces the data law
    assert orc.kl([1] * 5) == pytest.approx(0.0, abs=1e-10)
    q_one = orc.sampler_law([5])  # one call: product of the marginals
    xs = orc.all_sequences()
    marg = torch.stack([orc.probs.new_zeros(3).index_add_(0, xs[:, j], orc.probs) for j in range(5)])
    prod = marg[torch.arange(5), xs].prod(-1)
    assert torch.allclose(q_one, prod, atol=1e-12)
    for sizes in ([2, 3], [1, 2, 2], [3, 1, 1]):
        assert orc.sampler_law(sizes).sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sizes", [[4], [2, 2], [3, 1], [1, 2, 1], [1] * 4])
@pytest.mark.parametrize("wrong", [False, True])
def test_exact_identity_expected_kl_equals_bound_minus_entropy(sizes, wrong):
    """E_order KL(pi || q_order) = sum_t k_t CE(K_{t-1}) - H(pi), exact and with learning error."""
    orc = TabularOracle.random(vocab_size=3, n_tokens=4, concentration=0.4, seed=7)
    model = orc.miscalibrated(temperature=1.7, noise=0.5, seed=2) if wrong else orc
    ce = orc.ce_profile(model)
    sched = ms.Schedule(sizes)
    rhs = S.nll_bound(ce, sched) * orc.n_tokens - orc.entropy()
    lhs, mixture = order_averaged_kl_brute_force(orc, sizes, model)
    assert lhs == pytest.approx(rhs, abs=1e-9)
    # the library's subset DP gives the same mixture law, and convexity makes the mixture's KL smaller
    q = orc.sampler_law(sched, model)
    assert torch.allclose(q, mixture, atol=1e-12)
    assert orc.kl(sched, model) <= lhs + 1e-12


def test_learning_error_raises_ce_above_entropy(orc):
    g = orc.entropy_profile()
    ce = orc.ce_profile(orc.miscalibrated(temperature=2.0))
    assert np.all(ce >= g - 1e-12) and ce.sum() > g.sum() + 1e-3


def test_markov_chain_conditionals_match_tabular():
    chain = MarkovChainOracle.random(vocab_size=3, n_tokens=6, concentration=0.3, seed=4)
    tab = chain.to_tabular()
    g = torch.Generator().manual_seed(0)
    xs = chain.sample(64, g)
    visible = torch.rand(64, 6, generator=g) < 0.4
    assert torch.allclose(chain.conditionals(xs, visible), tab.conditionals(xs, visible), atol=1e-10)


def test_markov_chain_sampling_matches_its_law():
    chain = MarkovChainOracle.random(vocab_size=2, n_tokens=4, seed=1)
    tab = chain.to_tabular()
    x = chain.sample(40000, torch.Generator().manual_seed(3))
    emp = torch.bincount(tab.index_of(x), minlength=16).double() / 40000
    assert (emp - tab.probs).abs().max() < 0.012


def test_markov_chain_monte_carlo_profile_within_error_of_exact():
    chain = MarkovChainOracle.random(vocab_size=3, n_tokens=7, concentration=0.3, stickiness=0.3, seed=9)
    exact = chain.to_tabular().entropy_profile()
    levels, mean, se = chain.entropy_profile(n_samples=3000, generator=torch.Generator().manual_seed(0))
    z = np.abs(mean - exact[levels]) / np.maximum(se, 1e-12)
    assert z.max() < 4.5, z
    # and the CE of a miscalibrated model sits above the entropy
    model = chain.miscalibrated(temperature=1.5)
    _, ce, _ = chain.entropy_profile(levels=[0, 3, 6], n_samples=2000,
                                     generator=torch.Generator().manual_seed(1), model=model)
    assert np.all(ce > exact[[0, 3, 6]])


def test_long_chain_has_exact_conditionals_and_nonlinear_profile():
    chain = MarkovChainOracle.random(vocab_size=4, n_tokens=128, stickiness=0.6, seed=0)
    x = chain.sample(8, torch.Generator().manual_seed(0))
    out = chain(torch.where(torch.rand(8, 128, generator=torch.Generator().manual_seed(1)) < 0.5, x, 4))
    assert out.logits.shape == (8, 128, 5) and torch.isfinite(out.logits).all()
    _levels, mean, _se = chain.entropy_profile(levels=[0, 32, 64, 96, 127], n_samples=200,
                                             generator=torch.Generator().manual_seed(2))
    assert np.all(np.diff(mean) < 0)
    # information arrives fastest early (concave f): the first quarter drops more than the last
    assert mean[0] - mean[1] > mean[3] - mean[4]


def test_bad_oracle_input():
    with pytest.raises(ValueError, match="too many"):
        TabularOracle.random(vocab_size=4, n_tokens=12)
    with pytest.raises(ValueError, match="transition"):
        MarkovChainOracle(torch.ones(3), torch.ones(2, 2), 5)
    with pytest.raises(ValueError, match="non-negative"):
        TabularOracle(-torch.ones(2, 2))
    orc = TabularOracle.random(vocab_size=2, n_tokens=3)
    with pytest.raises(ValueError, match="schedule reveals 4"):
        orc.sampler_law([2, 2])
