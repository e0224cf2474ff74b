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
