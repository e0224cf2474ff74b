"""Hooks into every call (logits processors, a step callback, a streamer) and batch-invariant sampling."""
from __future__ import annotations

import pytest
import torch
from test_models import TinyLLaDA

import mdm_sched as ms

MASK = 39


def test_transformers_logits_processor_applies_to_drawn_positions():
    from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

    banned = list(range(0, 30))
    proc = LogitsProcessorList([SuppressTokensLogitsProcessor(banned)])  # no device=: 4.38 lacks it, later ones default to cpu
    out = ms.generate(TinyLLaDA(seed=1), [[31, 32]], gen_length=8, schedule=4, num_samples=4, logits_processor=proc,
                      generator=torch.Generator().manual_seed(0))
    assert not torch.isin(out.generated, torch.tensor(banned)).any() and (out.generated != MASK).all()


def test_custom_processor_sees_context_and_positions():
    seen = []

    def favour_column_parity(input_ids, scores, positions, rows):
        seen.append((input_ids.shape, positions.clone(), rows.clone()))
        bias = torch.full_like(scores, -1e4)
        bias[:, 7] = 0.0  # token 7 everywhere ...
        bias[positions % 2 == 1, 7] = -1e4
        bias[positions % 2 == 1, 8] = 0.0  # ... but 8 at odd columns
        return scores + bias

    out = ms.generate(TinyLLaDA(), gen_length=6, schedule=3, num_samples=2, order="confidence", temperature=0,
                      logits_processor=favour_column_parity)
    assert out.generated[:, 0::2].eq(7).all() and out.generated[:, 1::2].eq(8).all()
    assert len(seen) == 3 and seen[0][0] == (12, 6)  # every candidate of both rows, with its row as context
    with pytest.raises(ValueError, match="logits_processor must return"):
        ms.generate(TinyLLaDA(), gen_length=4, schedule=2, logits_processor=lambda ids, s: s[:1])


def test_callback_can_stop_and_edit():
    calls = []

    def stop_after_two(step, state):
        calls.append((step, int(state.masked.sum())))
        if step == 2:
            state.stop = True

    out = ms.generate(TinyLLaDA(), gen_length=8, schedule=4, callback_on_step_end=stop_after_two,
                      generator=torch.Generator().manual_seed(0))
    assert out.nfe == 2 and calls == [(1, 6), (2, 4)] and int((out.generated == MASK).sum()) == 4

    def force_last(step, state):
        if step == 1:
            state.sequences[:, -1] = 5  # given by the callback: revealed, never sampled again

    out = ms.generate(TinyLLaDA(), gen_length=8, schedule=[1] * 8, callback_on_step_end=force_last,
                      generator=torch.Generator().manual_seed(0))
    assert (out.generated[:, -1] == 5).all() and out.nfe == 7 and (out.generated != MASK).all()


class Recorder:
    def __init__(self):
        self.parts, self.ended = [], False

    def put(self, value):
        self.parts.append(value.tolist())

    def end(self):
        self.ended = True


def test_streamer_receives_prompt_then_final_prefix():
    rec = Recorder()
    out = ms.generate(TinyLLaDA(), [[1, 2, 3]], gen_length=8, schedule=4, order="confidence", temperature=0,
                      streamer=rec)
    assert rec.parts[0] == [1, 2, 3] and rec.ended
    streamed = [t for part in rec.parts[1:] for t in part]
    assert streamed == out.generated[0].tolist()
    with pytest.raises(ValueError, match="streamer"):
        ms.generate(TinyLLaDA(), gen_length=4, schedule=2, num_samples=2, streamer=Recorder())


@pytest.mark.parametrize("order", ["random", "confidence", "margin", "entropy"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_per_row_generators_make_rows_batch_invariant(order, temperature):
    """Each row with its own generator equals that row generated alone with the same generator, bitwise."""
    model = TinyLLaDA(seed=3).double()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11, 12]]
    kwargs = dict(gen_length=10, schedule=ms.schedules.Schedule([1, 3, 6]), order=order, temperature=temperature,
                  top_k=20)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    batch = ms.generate(model, prompts, generator=gens, **kwargs)
    for i, p in enumerate(prompts):
        alone = ms.generate(model, [p], generator=torch.Generator().manual_seed(100 + i), **kwargs)
        assert torch.equal(batch.generated[i], alone.generated[0]), f"row {i}"
        assert torch.equal(batch.reveal_step[i, -10:], alone.reveal_step[0, -10:])
    shared = ms.generate(model, prompts, generator=torch.Generator().manual_seed(100), **kwargs)
    assert not torch.equal(shared.generated, batch.generated)
    with pytest.raises(ValueError, match="one generator per row"):
        ms.generate(model, prompts, generator=gens[:2], **kwargs)
    with pytest.raises(TypeError, match="generator must be"):
        ms.generate(model, prompts, generator=123, **kwargs)
