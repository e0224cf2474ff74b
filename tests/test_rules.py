"""Adaptive reveal rules (confidence threshold, Fast-dLLM's factor, EB-Sampler's entropy bound) against plain
per-row reference implementations written here, greedy and sampled; caps, floors and mixed finishing times."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_models import TinyLLaDA

import mdm_sched as ms
from mdm_sched import schedules
from mdm_sched.rules import RankedStats, Step

MASK = 39


class Peaky(TinyLLaDA):
    """TinyLLaDA with sharpened logits, so confidences spread over (0, 1) and thresholds bite."""

    def __init__(self, seed: int = 0, scale: float = 1.5) -> None:
        super().__init__(seed=seed)
        self.scale = scale

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=super().forward(input_ids, attention_mask=attention_mask).logits * self.scale)


# --------------------------------------------------------------------------------------------------
# the reference: one loop per row, obviously correct, the same draws as the library
# --------------------------------------------------------------------------------------------------

def _choose_threshold(tau):
    def choose(ranked_conf, ranked_ent):
        return 1 + sum(1 for c in ranked_conf[1:] if c >= tau)
    return choose


def _choose_factor(factor):
    def choose(ranked_conf, ranked_ent):
        conf = sorted(ranked_conf, reverse=True)
        k = 1
        while k < len(conf) and conf[k] >= 1 - factor / (k + 2):  # rank r = k + 1 (1-based)
            k += 1
        return k
    return choose


def _choose_entropy_bound(gamma):
    def choose(ranked_conf, ranked_ent):
        k = 1
        while k < len(ranked_ent) and sum(ranked_ent[:k + 1]) - max(ranked_ent[:k + 1]) <= gamma + 1e-12:
            k += 1
        return k
    return choose


def reference(model, prompt, gen_length, block_length, choose, order="confidence", temperature=0.0, seed=0,
              max_calls=None):
    """Per block: call the model until the block is filled; per row, rank its masked block positions by the
    order, reveal the first ``choose(confidences, entropies)`` of them (the last allowed call reveals all)."""
    g = torch.Generator().manual_seed(seed)
    model = model.eval().requires_grad_(False)
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), MASK, dtype=torch.long)], 1)
    nfe, row_calls = 0, [0] * b
    for lo in range(p, p + gen_length, block_length):
        hi = min(lo + block_length, p + gen_length)
        call = 0
        while (x[:, lo:hi] == MASK).any():
            logits = model(x).logits.float()
            logits[..., MASK] = float("-inf")
            cand = [(j, i) for j in range(b) for i in range(lo, hi) if x[j, i] == MASK]
            u = torch.rand(len(cand), generator=g, dtype=torch.float64) if temperature > 0 else None
            drawn = {}
            for n, (j, i) in enumerate(cand):
                z = logits[j, i]
                if temperature == 0:
                    tok = int(z.argmax())
                else:
                    cdf = (z.double() - z.max()).exp().cumsum(0)
                    tok = min(int(torch.searchsorted(cdf, u[n:n + 1] * cdf[-1], right=True)), z.numel() - 1)
                logp = torch.log_softmax(z.double(), 0)
                ent = float(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum())
                margin = logp.exp().topk(2).values
                drawn[(j, i)] = (tok, math.exp(float(logp[tok])), ent, float(margin[0] - margin[1]))
            nfe += 1
            call += 1
            for j in range(b):
                mine = [c for c in cand if c[0] == j]
                if not mine:
                    continue
                row_calls[j] += 1
                col, sign = {"confidence": (1, -1), "entropy": (2, 1), "margin": (3, -1)}[order]
                ranked = sorted(mine, key=lambda c, col=col, sign=sign: sign * drawn[c][col])
                k = choose([drawn[c][1] for c in ranked], [drawn[c][2] for c in ranked])
                if max_calls is not None and call >= max_calls:
                    k = len(ranked)
                for c in ranked[:k]:
                    x[c] = drawn[c][0]
    return x, nfe, row_calls


PROMPTS = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4], [9, 10, 11, 12]])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("rule, choose, order", [
    (schedules.threshold(0.7), _choose_threshold(0.7), "confidence"),
    (schedules.threshold(0.8), _choose_threshold(0.8), "margin"),
    (schedules.confidence_factor(1.0), _choose_factor(1.0), "confidence"),
    (schedules.entropy_bound(0.5), _choose_entropy_bound(0.5), "entropy"),
    (schedules.entropy_bound(1.5), _choose_entropy_bound(1.5), "confidence"),
])
def test_adaptive_rules_equal_per_row_reference(rule, choose, order, temperature):
    model = Peaky(seed=3)
    want, nfe, row_calls = reference(model, PROMPTS, 16, 8, choose, order=order, temperature=temperature, seed=7)
    out = ms.generate(model, PROMPTS, gen_length=16, block_length=8, schedule=rule, order=order,
                      temperature=temperature, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out.sequences, want)
    assert out.nfe == nfe and out.calls_per_row.tolist() == row_calls
    assert 2 <= nfe < 16  # some calls reveal several tokens


def test_rows_finish_at_different_calls():
    model = Peaky(seed=3)
    out = ms.generate(model, PROMPTS, gen_length=16, block_length=16, schedule=schedules.threshold(0.7),
                      order="confidence", temperature=0.0)
    assert len(set(out.calls_per_row.tolist())) > 1 and out.nfe == int(out.calls_per_row.max())
    assert (out.generated != MASK).all()


def test_cap_on_calls_and_schedule_floor():
    model = Peaky(seed=1)
    capped = ms.generate(model, PROMPTS, gen_length=16, block_length=8, schedule=schedules.threshold(0.99, max_calls=2),
                         order="confidence", temperature=0.0)
    assert capped.nfe == 4 and (capped.generated != MASK).all()
    want, nfe, _ = reference(model, PROMPTS, 16, 8, _choose_threshold(0.99), max_calls=2)
    assert torch.equal(capped.sequences, want) and nfe == 4
    floor = schedules.constant(8, 3)
    out = ms.generate(model, PROMPTS, gen_length=16, block_length=8, order="confidence", temperature=0.0,
                      schedule=schedules.threshold(0.99, min_schedule=floor))
    assert out.nfe <= 6 and (out.generated != MASK).all()
    with pytest.raises(ValueError, match="sum to 8 but block_length=4"):
        ms.generate(model, PROMPTS, gen_length=16, block_length=4, schedule=schedules.threshold(0.5, min_schedule=floor))


def test_rule_counts_on_hand_made_statistics():
    conf = torch.tensor([[0.99, 0.95, 0.5, 0.2], [0.3, 0.2, float("nan"), float("nan")]])
    ent = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, float("nan"), float("nan")]])
    valid = ~conf.isnan()
    ranked = RankedStats(valid=valid, count=valid.sum(1), values={"confidence": conf, "entropy": ent})
    step = Step(call=0, length=4, n_masked=torch.tensor([4, 2]), remaining=torch.tensor([4, 2]), ranked=ranked)
    assert schedules.threshold(0.9).counts(step).tolist() == [2, 1]  # at least one per row
    assert schedules.entropy_bound(0.25).counts(step).tolist() == [2, 1]  # 0.1+0.2-0.2 <= .25 < .1+.2+.3-.3
    assert schedules.entropy_bound(10).counts(step).tolist() == [4, 2]
    # factor 1: thresholds -1, 1-1/3, 1-1/4, 1-1/5 for ranks 1..4
    assert schedules.confidence_factor(1.0).counts(step).tolist() == [2, 1]
    last = Step(call=2, length=4, n_masked=step.n_masked, remaining=step.remaining, ranked=ranked)
    assert schedules.threshold(0.9, max_calls=3).counts(last).tolist() == [4, 2]


@pytest.mark.parametrize("bad", [dict(tau=1.5), dict(tau=-0.1), dict(tau=0.5, max_calls=0)])
def test_bad_rule_arguments(bad):
    with pytest.raises(ValueError, match=r"tau|max_calls"):
        schedules.threshold(**bad)
    with pytest.raises(ValueError, match="gamma"):
        schedules.entropy_bound(-1.0)
    with pytest.raises(ValueError, match="factor"):
        schedules.confidence_factor(0.0)
