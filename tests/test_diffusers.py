"""diffusers' LLaDA2Pipeline driven by mdm_sched's schedules (ScheduledBlockRefinementScheduler), offline on a tiny
model: the pipeline reveals exactly the schedule's sizes per step and produces what mdm_sched.generate produces.

Skipped when diffusers (>= 0.42, the `diffusers` extra) is not installed.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers", minversion="0.42")
from diffusers import LLaDA2Pipeline

import mdm_sched as ms
from mdm_sched.diffusers_scheduler import ScheduledBlockRefinementScheduler

MASK, VOCAB, BLOCK = 39, 40, 4


class CausalTiny(nn.Module):
    """LLaDA2-shaped interface (``forward(input_ids, attention_mask, position_ids) -> .logits``) with logits at
    position j depending only on tokens <= j, so the pipeline's growing window and mdm_sched's full canvas give
    the same logits: the two loops can be compared exactly."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(VOCAB, 16, generator=g))
        self.pos = nn.Parameter(torch.randn(64, 16, generator=g))
        self.out = nn.Parameter(torch.randn(16, VOCAB, generator=g) * 3)
        self.calls = 0

    @property
    def device(self) -> torch.device:  # diffusers reads its components' device
        return self.emb.device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        n = input_ids.shape[1]
        h = self.emb[input_ids].cumsum(1) / torch.arange(1, n + 1).view(1, -1, 1) + self.pos[:n]
        logits = torch.tanh(h) @ self.out
        return SimpleNamespace(logits=logits.masked_fill(torch.arange(VOCAB) == MASK, -1e4))


PROMPT = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def _pipeline(model, schedule, **kw):
    scheduler = ScheduledBlockRefinementScheduler(schedule=schedule, block_length=BLOCK, **kw)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, steps=2, gen_length=8, **kw):
    seen = []

    def record(p, step, timestep, tensors):
        seen.append(int(tensors["transfer_index"].sum(1).max()))
        return {}

    out = pipe(input_ids=PROMPT, gen_length=gen_length, block_length=BLOCK, num_inference_steps=steps, temperature=0.0,
               editing_threshold=None, eos_early_stop=False, mask_token_id=MASK, output_type="seq",
               callback_on_step_end=record, callback_on_step_end_tensor_inputs=["transfer_index"], **kw)
    return out.sequences, seen


def _run_sampled(pipe):
    seen = []
    out = pipe(input_ids=PROMPT, gen_length=8, block_length=BLOCK, num_inference_steps=2, temperature=1.0,
               sampling_method="multinomial", generator=torch.Generator().manual_seed(0), editing_threshold=None,
               eos_early_stop=False, mask_token_id=MASK, output_type="seq",
               callback_on_step_end=lambda p, i, t, k: seen.append(int(k["transfer_index"].sum(1).max())) or {},
               callback_on_step_end_tensor_inputs=["transfer_index"])
    return out.sequences, seen


def _run_generate(model, schedule, gen_length=8):
    out = ms.generate(model, PROMPT, gen_length=gen_length, block_length=BLOCK, schedule=schedule, order="confidence",
                      temperature=0, mask_token_id=MASK)
    return out.generated, out.nfe


@pytest.mark.parametrize("sizes", [(3, 1), (1, 3), (1, 1, 2), (4,)])
def test_pipeline_reveals_the_schedule_and_equals_generate(sizes):
    sched = ms.Schedule(sizes)
    model = CausalTiny()
    seq, per_step = _run_pipeline(_pipeline(model, sched), steps=32)
    assert per_step == list(sizes) * 2  # two blocks, the schedule's sizes at each step
    assert model.calls == 2 * len(sizes)  # the schedule sets the steps per block: no extra call
    gen, nfe = _run_generate(CausalTiny(), sched)
    assert torch.equal(seq, gen) and nfe == model.calls


def test_optimal_schedule_from_a_profile_uses_the_pipeline_steps():
    prof = ms.InformationProfile([0, 1, 2, 3], [3.0, 1.0, 0.9, 0.85], [0.01] * 4, n_tokens=BLOCK)
    sched = ms.schedules.optimal(prof, steps=2, n_tokens=BLOCK)
    assert sched.sizes != (2, 2)  # a non-constant optimum, so the test can tell
    seq, per_step = _run_pipeline(_pipeline(CausalTiny(), "optimal", profile=prof), steps=2)
    assert per_step == list(sched.sizes) * 2
    assert torch.equal(seq, _run_generate(CausalTiny(), sched)[0])


@pytest.mark.parametrize("rule", ["threshold:0.5", "entropy_bound:0.8"])
def test_adaptive_rules_equal_generate(rule):
    model = CausalTiny(seed=1)
    seq, per_step = _run_pipeline(_pipeline(model, rule))
    gen, nfe = _run_generate(CausalTiny(seed=1), rule)
    assert torch.equal(seq, gen) and model.calls == nfe and sum(per_step) == 8
    assert len(per_step) < 8  # some call revealed several positions: the rule, not one token per call


def test_sampling_keeps_the_schedule():
    sched = ms.Schedule([1, 3])
    pipe = _pipeline(CausalTiny(), sched)
    seq, per_step = _run_sampled(pipe)
    assert per_step == [1, 3, 1, 3] and not (seq == MASK).any()


def test_default_is_the_constant_quota_and_config_round_trips(tmp_path):
    a, _ = _run_pipeline(_pipeline(CausalTiny(), None), steps=2)
    assert torch.equal(a, _run_generate(CausalTiny(), 2)[0])
    scheduler = ScheduledBlockRefinementScheduler(schedule=ms.Schedule([3, 1], name="mine"), block_length=BLOCK)
    scheduler.save_config(tmp_path)
    again = ScheduledBlockRefinementScheduler.from_pretrained(tmp_path)
    assert again.config.schedule == scheduler.config.schedule and again.config.schedule["sizes"] == [3, 1]
    assert torch.equal(_run_pipeline(LLaDA2Pipeline(model=CausalTiny(), scheduler=again))[0],
                       _run_pipeline(_pipeline(CausalTiny(), ms.Schedule([3, 1])))[0])


def test_bad_schedules_fail_at_construction():
    with pytest.raises(ValueError, match="sum to 5 but block_length=4"):
        ScheduledBlockRefinementScheduler(schedule=ms.Schedule([3, 2]), block_length=BLOCK)
    with pytest.raises(ValueError, match="needs mask_token_id"):
        s = ScheduledBlockRefinementScheduler(schedule=2, block_length=BLOCK)
        s.set_timesteps(2)
        s.step(torch.zeros(1, BLOCK, VOCAB), 0, torch.zeros(1, BLOCK, dtype=torch.long))
