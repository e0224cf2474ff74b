"""mdm_sched.likelihood: the exact order average, LLaDA's Monte Carlo estimate (unbiased for it), the greedy check."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_models import TinyDream, TinyLLaDA

import mdm_sched as ms
from mdm_sched.likelihood import (
    continuation_logprob,
    exact_logprob,
    greedy_matches,
    mc_logprob,
    stratified_counts,
    subset_masks,
)


def _order_average(mlm: ms.MaskedLM, context: list[int], target: list[int], cfg_scale: float = 0.0) -> float:
    """The definition, literally: the any-order AR log-likelihood averaged over all L! orders."""
    n = len(context)
    total, orders = 0.0, list(itertools.permutations(range(len(target))))
    for order in orders:
        x = context + [mlm.mask_token_id] * len(target)
        for j in order:
            logits = mlm.logits(torch.tensor([x]))[0].double()
            if cfg_scale > 0:
                un = mlm.logits(torch.tensor([[mlm.mask_token_id] * n + x[n:]]))[0].double()
                logits = (un + (cfg_scale + 1) * (logits - un)).masked_fill(torch.isinf(logits), float("-inf"))
            total += float(torch.log_softmax(logits[n + j], -1)[target[j]])
            x[n + j] = target[j]
    return total / len(orders)


@pytest.mark.parametrize("model, cfg_scale", [(TinyLLaDA(seed=2), 0.0), (TinyDream(seed=4), 0.0), (TinyLLaDA(seed=5), 1.5)])
def test_exact_is_the_average_over_all_orders(model, cfg_scale):
    mlm = ms.wrap(model)
    context, target = [3, 8, 1, 20, 7], [11, 4, 30, 9]
    got = exact_logprob(mlm, context, target, batch_size=5, cfg_scale=cfg_scale)
    assert got.exact and got.calls == 15 and got.n_tokens == 4 and got.stderr == 0.0
    assert got.logprob == pytest.approx(_order_average(mlm, context, target, cfg_scale), abs=1e-4)
    # the sum over subsets does not depend on how rows are batched (up to float32 rounding)
    again = exact_logprob(mlm, context, target, batch_size=32, cfg_scale=cfg_scale)
    assert again.logprob == pytest.approx(got.logprob, abs=1e-5)


def test_exact_single_token_is_the_masked_prediction():
    mlm = ms.wrap(TinyLLaDA(seed=1))
    got = exact_logprob(mlm, [5, 6, 7], [9])
    want = torch.log_softmax(mlm.logits(torch.tensor([[5, 6, 7, mlm.mask_token_id]]))[0, 3].double(), -1)[9]
    assert got.calls == 1 and got.logprob == pytest.approx(float(want), abs=1e-6)
    assert exact_logprob(mlm, [], [9, 10]).calls == 3  # no context: unconditional


def test_subset_masks_enumerate_every_nonempty_subset():
    masks = subset_masks(4)
    assert masks.shape == (15, 4)
    assert len({tuple(r) for r in masks.tolist()}) == 15 and bool(masks.any(1).all())


@pytest.mark.parametrize("length, rows", [(1, 4), (3, 8), (7, 4), (5, 3), (4, 10)])
def test_stratified_counts_make_every_row_exactly_uniform(length, rows):
    draws = {tuple(stratified_counts(length, rows, torch.Generator().manual_seed(s)).tolist()) for s in range(300)}
    assert len(draws) == length  # one vector per value of the shared draw
    for row in range(rows):  # across those, each row takes each count 1..L exactly once: exactly uniform
        assert sorted(d[row] for d in draws) == list(range(1, length + 1))


def test_mc_estimate_is_unbiased_for_the_exact_value():
    mlm = ms.wrap(TinyLLaDA(seed=7))
    context, target = [2, 14, 5, 33], [12, 3, 25, 17, 6]
    exact = exact_logprob(mlm, context, target).logprob
    gen = torch.Generator().manual_seed(11)
    for batch_size, repeats in ((8, 200), (3, 100)):  # full stratified batches, and uneven ones
        runs = torch.tensor([mc_logprob(mlm, context, target, mc_num=8, batch_size=batch_size, generator=gen).logprob
                             for _ in range(repeats)], dtype=torch.float64)
        se = float(runs.std() / math.sqrt(runs.numel()))
        assert abs(float(runs.mean()) - exact) < 3.5 * se, (float(runs.mean()), exact, se)
    one = mc_logprob(mlm, context, target, mc_num=128, batch_size=32, generator=gen)
    assert not one.exact and one.calls == 128 and 0 < one.stderr < 2.0
    assert abs(one.logprob - exact) < 4 * one.stderr


def test_mc_is_reproducible_from_its_generator():
    mlm = ms.wrap(TinyLLaDA(seed=7))
    a = mc_logprob(mlm, [1, 2], [3, 4, 5], mc_num=16, generator=torch.Generator().manual_seed(3))
    b = mc_logprob(mlm, [1, 2], [3, 4, 5], mc_num=16, generator=torch.Generator().manual_seed(3))
    c = mc_logprob(mlm, [1, 2], [3, 4, 5], mc_num=16, generator=torch.Generator().manual_seed(4))
    assert a == b and a.logprob != c.logprob


def test_exact_when_enumeration_is_no_dearer_than_monte_carlo():
    mlm = ms.wrap(TinyLLaDA(seed=7))
    assert continuation_logprob(mlm, [1], [3, 4, 5], mc_num=128).exact  # 7 calls <= 128
    assert not continuation_logprob(mlm, [1], [3, 4, 5], mc_num=128, exact_max_calls=0).exact
    long = list(range(1, 9))
    assert not continuation_logprob(mlm, [1], long, mc_num=128).exact  # 255 > 128
    got = continuation_logprob(mlm, [1], long, mc_num=16, exact_max_calls=255)
    assert got.exact and got.calls == 255


def _llada_suffix_greedy(model: torch.nn.Module, prefix: list[int], target: list[int], mask_id: int) -> list[int]:
    """LLaDA's suffix_greedy_prediction (eval_llada.py), written from its description: all of the continuation
    masked; each call keeps only the single most confident argmax prediction."""
    seq = torch.tensor([prefix + [mask_id] * len(target)])
    for _ in target:
        masked = seq == mask_id
        logits = model(seq).logits[masked].double()
        logits[:, mask_id] = float("-inf")
        x0 = logits.argmax(-1)
        conf = torch.softmax(logits, -1).gather(1, x0.unsqueeze(1)).squeeze(1)
        keep = torch.full_like(x0, mask_id)
        best = int(conf.argmax())
        keep[best] = x0[best]
        seq[masked] = keep
    return seq[0, len(prefix):].tolist()


def test_greedy_check_is_llada_suffix_greedy_prediction():
    model = TinyLLaDA(seed=9)
    prefix = [4, 9, 16, 25]
    greedy = _llada_suffix_greedy(model, prefix, [0] * 5, mask_id=39)
    assert greedy_matches(model, prefix, greedy) == (True, 5)
    other = list(greedy)
    other[2] = (other[2] + 1) % 39
    assert greedy_matches(model, prefix, other) == (False, 5)


def test_bad_input():
    mlm = ms.wrap(TinyLLaDA())
    with pytest.raises(ValueError, match="len\\(target\\)"):
        mc_logprob(mlm, [1], [])
    with pytest.raises(ValueError, match="non-negative"):
        exact_logprob(mlm, [-1], [2])
    with pytest.raises(ValueError, match="mc_num"):
        mc_logprob(mlm, [1], [2], mc_num=0)
    with pytest.raises(ValueError, match="exact_max_calls"):
        continuation_logprob(mlm, [1], [2], exact_max_calls=-1)


def test_sapiens_monte_carlo_agrees_with_exact():
    """A real antibody model: the 128-sample estimate of a 6-residue germline span lies within 4 SE of the exact value,
    and the true span is far likelier than a mutated one."""
    if not ms.assets.available().get("sapiens-vh"):
        pytest.skip("sapiens is not installed (scripts/setup.sh installs it)")
    mlm = ms.load_masked_lm("sapiens-vh")
    seq = ms.data.germlines("human", "H", split="test")[0]
    context, target = mlm.encode([seq[:40]])[0], mlm.encode([seq[40:46]])[0]
    exact = exact_logprob(mlm, context, target)
    mc = mc_logprob(mlm, context, target, mc_num=128, generator=torch.Generator().manual_seed(0))
    assert exact.calls == 63 and abs(mc.logprob - exact.logprob) < 4 * mc.stderr
    mutated = mlm.encode(["W" + seq[41:44] + "PP"])[0]
    assert exact_logprob(mlm, context, mutated).logprob < exact.logprob - 5.0
