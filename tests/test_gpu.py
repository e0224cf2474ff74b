"""CUDA checks (run on a GPU machine with `pytest -m gpu`; `make test` deselects them).

generate() and estimate_profile() with the model in bfloat16 on the GPU, randomness from a CPU
generator, sampling in float32: the same guarantees as on CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mdm_sched as ms
from mdm_sched.assets import AMINO_ACIDS

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@needs_cuda
def test_generate_bf16_on_cuda_is_valid_and_reproducible():
    model = ms.load_masked_lm("sapiens-vh", device="cuda", dtype=torch.bfloat16)
    outs = [ms.generate(model, num_samples=16, gen_length=96, schedule=12,
                        generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert outs[0].sequences.device.type == "cuda" and outs[0].nfe == 12
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert all(set(t) <= set(AMINO_ACIDS) and len(t) == 96 for t in outs[0].texts)


@needs_cuda
def test_profile_bf16_on_cuda_matches_cpu_within_error():
    heldout = ms.data.germlines("human", "H", split="test")
    kw = dict(n_tokens=90, levels=[0, 45, 80], tokens_per_level=1500, progress=False, seed=0)
    gpu = ms.estimate_profile(ms.load_masked_lm("sapiens-vh", device="cuda", dtype=torch.bfloat16), heldout, **kw)
    cpu = ms.estimate_profile(ms.load_masked_lm("sapiens-vh"), heldout, **kw)
    z = np.abs(gpu.ce - cpu.ce) / np.hypot(gpu.se, cpu.se)
    assert np.all(np.isfinite(gpu.ce)) and z.max() < 3, z


@needs_cuda
def test_kv_cache_on_cuda_is_exact_for_a_causal_model():
    """cache="prefix"/"dual" on the GPU: the same tokens as without a cache when no column sees later ones."""
    from test_cache import KVLM, PROMPTS

    model = KVLM(seed=1, causal=True).float().cuda()
    kw = dict(gen_length=24, block_length=8, schedule=4, order="confidence", temperature=1.0, num_samples=2)
    plain = ms.generate(model, PROMPTS, generator=torch.Generator().manual_seed(0), **kw)
    for mode in ("prefix", "dual"):
        cached = ms.generate(model, PROMPTS, generator=torch.Generator().manual_seed(0), cache=mode, **kw)
        assert torch.equal(cached.sequences, plain.sequences) and cached.nfe == plain.nfe


@needs_cuda
def test_bf16_full_logits_rows_on_cuda_draw_like_float32():
    """bf16 logits rows converted chunk by chunk on the GPU draw exactly as the float32 copy of the same rows."""
    from mdm_sched.draw import SamplingParams, draw_tokens
    from mdm_sched.logit_rows import LogitRows

    g = torch.Generator(device="cuda").manual_seed(0)
    source = (torch.randn(64, 126464, device="cuda", generator=g) * 3).bfloat16()
    index = torch.randperm(64, device="cuda", generator=g)[:40]
    never = torch.zeros(126464, dtype=torch.bool, device="cuda")
    never[126336] = True
    u = torch.rand(40, dtype=torch.float64, device="cuda", generator=g)
    want = source[index].float().masked_fill(never, float("-inf"))
    for params in (SamplingParams(0.0), SamplingParams(1.0)):
        a = draw_tokens(LogitRows(source.clone(), index, never), params, u)
        b = draw_tokens(want.clone(), params, u)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logp, b.logp)
