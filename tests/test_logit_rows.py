"""LogitRows and the chunked draw: the same draws as from the materialised [P, V] float32 logits, bf16 rows
converted chunk by chunk, no copy for a contiguous float32 span, and the NaN/+inf check at every id."""
from __future__ import annotations

import pytest
import torch
from test_models import TinyLLaDA

import mdm_sched as ms
from mdm_sched import draw as draw_module
from mdm_sched.draw import SamplingParams, draw_tokens, first_argmax, invert_cdf, runner_up
from mdm_sched.logit_rows import ChunkBuffers, LogitRows, block_reduce


def _never(vocab: int, ids: list[int]) -> torch.Tensor:
    never = torch.zeros(vocab, dtype=torch.bool)
    never[ids] = True
    return never


def _reference(source: torch.Tensor, index: torch.Tensor, never: torch.Tensor) -> torch.Tensor:
    return source[index].float().masked_fill(never, float("-inf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("span", [False, True])
def test_chunks_equal_the_materialised_logits(monkeypatch, dtype, span):
    g = torch.Generator().manual_seed(0)
    source = (torch.randn(40, 97, generator=g) * 4).to(dtype)
    index = torch.arange(5, 30) if span else torch.randperm(40, generator=g)[:25]
    never = _never(97, [0, 96])
    source[index[3], 0] = 1e3  # a never-sampled id holds a row's largest logit: the peak must skip it
    want = _reference(source, index, never)
    rows = LogitRows(source.clone(), index, never)
    assert (rows.index is None) == span  # a contiguous span is read as a view
    assert torch.equal(rows.materialize(), want)
    for params, stats in ((SamplingParams(0.0), frozenset({"margin", "entropy"})), (SamplingParams(1.0), frozenset()),
                          (SamplingParams(0.7, top_k=5, top_p=0.9), frozenset({"entropy"}))):
        u = torch.rand(25, generator=g, dtype=torch.float64)
        whole = draw_tokens(want.clone(), params, u, stats)
        monkeypatch.setattr(draw_module, "SAMPLE_CHUNK_ELEMENTS", 3 * 97)  # 3 rows per chunk
        chunked = draw_tokens(LogitRows(source.clone(), index, never), params, u, stats)
        monkeypatch.undo()
        for name in ("tokens", "logp", "entropy", "margin"):
            a, b = getattr(whole, name), getattr(chunked, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    assert int(whole.tokens[3]) != 0 and bool((whole.tokens != 96).all())


def test_a_float32_span_is_not_copied():
    source = torch.randn(12, 50)
    rows = LogitRows(source, torch.arange(2, 10), _never(50, [1]))
    buffers = ChunkBuffers(4, 50, source.device)
    chunk, peak, _ = rows.read(0, 4, buffers)
    assert chunk.data_ptr() == source[2].data_ptr()  # a view: the fill wrote into the source
    assert bool(torch.isinf(source[2:6, 1]).all()) and torch.equal(peak, chunk.amax(-1, keepdim=True))
    gathered = LogitRows(source, torch.tensor([7, 3, 5]), None)
    chunk, _, _ = gathered.read(0, 3, buffers)
    assert chunk.data_ptr() == buffers.get("rows", 3).data_ptr() and torch.equal(chunk, source[[7, 3, 5]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("column", [0, 7])  # a never-sampled id, an ordinary one
def test_non_finite_logits_raise_wherever_they_are(bad, column):
    source = torch.randn(6, 20)
    source[4, column] = bad
    with pytest.raises(ValueError, match=r"NaN or \+inf"):
        draw_tokens(LogitRows(source, torch.arange(6), _never(20, [0])), SamplingParams(0.0), torch.zeros(6))


def test_first_argmax_is_argmax_with_ties():
    g = torch.Generator().manual_seed(1)
    for vocab in (1, 7, 255, 256, 257, 1000, 4099):
        x = torch.randint(-2, 2, (9, vocab), generator=g).float()
        x[0] = float("-inf")
        x[0, vocab - 1] = 0.0
        assert torch.equal(first_argmax(x, x.amax(-1, keepdim=True)), x.argmax(-1)), vocab


def test_runner_up_is_the_second_of_topk_with_ties_and_suppressed_ids():
    g = torch.Generator().manual_seed(2)
    for vocab in (1, 2, 7, 255, 256, 257, 1000, 4099):
        x = torch.randint(-3, 3, (12, vocab), generator=g).float()  # many ties, within and across blocks
        x[1] = float("-inf")
        x[1, vocab - 1] = 0.0  # one id left: no runner-up
        x[2, : vocab // 2] = float("-inf")
        peak = x.amax(-1, keepdim=True)
        want = x.topk(2, dim=-1).values[:, 1:] if vocab > 1 else torch.full((12, 1), float("-inf"))
        if vocab > 1:
            want[1] = float("-inf")
        assert torch.equal(runner_up(x, peak, block_reduce(x, "amax")), want), vocab


def test_bf16_model_draws_like_its_float32_logits():
    """A bf16 model's rows are converted chunk by chunk; the draws equal those from its logits made float32 first."""
    class BF16(TinyLLaDA):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids, attention_mask)
            return type(out)(logits=out.logits.bfloat16())

    class Upcast(BF16):
        def forward(self, input_ids, attention_mask=None):
            out = super().forward(input_ids, attention_mask)
            return type(out)(logits=out.logits.float())

    kw = dict(gen_length=12, block_length=4, schedule=2, order="confidence", temperature=1.0, num_samples=3)
    a = ms.generate(ms.wrap(BF16(seed=2), positions_only=False), [[1, 2, 3]], generator=torch.Generator().manual_seed(3),
                    **kw)
    b = ms.generate(ms.wrap(Upcast(seed=2), positions_only=False), [[1, 2, 3]],
                    generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.token_logprobs, b.token_logprobs)


@pytest.mark.parametrize("vocab", [7, 256, 600, 1000])
def test_invert_cdf_is_inversion_of_the_float64_cdf(vocab):
    """The block-wise inversion returns the id of the full float64 CDF inversion, except where ``u * total`` lies
    within rounding of a CDF step; ids of weight 0 are never returned, also for u just below 1."""
    g = torch.Generator().manual_seed(vocab)
    weights = torch.rand(64, vocab, generator=g) ** 4
    weights[:, ::3] = 0.0  # zero weights inside blocks
    weights[:8, vocab // 2:] = 0.0  # whole trailing blocks without weight
    u = torch.rand(64, generator=g, dtype=torch.float64)
    u[:16] = 1.0 - 2.0 ** -53
    tokens, total = invert_cdf(weights, u)
    cdf = weights.double().cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1).clamp(max=vocab - 1)
    torch.testing.assert_close(total.squeeze(1), cdf[:, -1], rtol=1e-6, atol=0)
    assert bool((weights.gather(1, tokens.unsqueeze(1)) > 0).all())
    near = (cdf - (u * cdf[:, -1]).unsqueeze(1)).abs().amin(-1) < 1e-5 * cdf[:, -1]
    assert bool(((tokens == want) | near).all()) and int((tokens == want).sum()) >= 48


def test_invert_cdf_follows_its_law():
    """Frequencies over many uniforms match the weights (a chi-square bound that a wrong block or offset fails)."""
    g = torch.Generator().manual_seed(5)
    weights = torch.zeros(1, 700)
    ids = torch.tensor([3, 255, 256, 511, 512, 640, 699])
    weights[0, ids] = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5, 2.5, 1.0])
    u = torch.rand(40_000, generator=g, dtype=torch.float64)
    tokens, _ = invert_cdf(weights.expand(40_000, -1), u)
    counts = torch.bincount(tokens, minlength=700)[ids].double()
    expected = 40_000 * weights[0, ids].double() / weights.sum()
    assert int(torch.bincount(tokens, minlength=700).sum() - counts.sum()) == 0
    assert float(((counts - expected) ** 2 / expected).sum()) < 25.0  # chi-square, 6 d.o.f.: p < 3e-4
