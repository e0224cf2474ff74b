"""The small text MDM recipe: training machinery, save_pretrained, and the same API on the result.

Trains for seconds only: this checks plumbing (a model that loads back and runs through profile,
schedule and generate), never quality.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

import mdm_sched as ms

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_text_mdm.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("train_text_mdm", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_text_mdm_trains_resumes_and_runs_through_the_api(tmp_path):
    r = _recipe()
    out = tmp_path / "kjv"
    kw = dict(seq_len=16, vocab_size=300, hidden=32, layers=1, batch_size=8, max_verses=1500, progress=False)
    model_dir = r.train(out, steps=6, save_every=3, **kw)
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] == 6
    # resuming to a larger step count continues from the checkpoint instead of starting over
    r.train(out, steps=8, save_every=4, **kw)
    assert torch.load(out / "train_state.pt", weights_only=False)["step"] == 8

    model = ms.load_masked_lm(str(model_dir))
    assert model.family == "bert" and model.tokenizer is not None
    held = r.heldout_windows(model_dir, 16, max_verses=1500)
    assert len(held) > 20 and all(len(w) == 16 for w in held)
    profile = ms.estimate_profile(model, held, n_tokens=16, levels=4, tokens_per_level=128, progress=False)
    curve = profile.curve(16)
    assert curve.shape == (16,) and np.all(np.isfinite(curve)) and np.all(np.diff(curve) <= 1e-12)
    sched = ms.schedules.optimal(profile, 4, n_tokens=16)
    gen = ms.generate(model, num_samples=2, gen_length=16, schedule=sched, generator=torch.Generator().manual_seed(0))
    assert gen.nfe == 4 and gen.generated.shape == (2, 16) and len(gen.texts) == 2
    assert not (gen.generated == model.mask_token_id).any()


def test_instruct_recipe_runs_end_to_end_on_a_tiny_chat_model(tmp_path):
    """recipes/instruct_gpu.py with a tiny LLaDA-shaped model and a word-level chat template (plumbing only)."""
    import json

    from test_conditional import _chat_tokenizer
    from test_models import TinyLLaDA

    spec = importlib.util.spec_from_file_location("instruct_gpu", RECIPE.parent / "instruct_gpu.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    tok = _chat_tokenizer()
    model = ms.wrap(TinyLLaDA(vocab_size=36, mask_token_id=5, seed=2), tokenizer=tok)
    g = np.random.default_rng(0)
    convs = [[{"role": "user", "content": " ".join(f"w{i}" for i in g.integers(1, 30, size=g.integers(1, 6)))},
              {"role": "assistant", "content": " ".join(f"w{i}" for i in g.integers(1, 30, size=g.integers(1, 5)))}]
             for _ in range(14)]
    res = recipe.run(model, convs, tmp_path, gen_length=6, block_length=3, steps=2, num_profile=12, num_prompts=2,
                     levels=3, tokens_per_level=60, batch_size=6, progress=False)
    prof = res["profiles"]["confidence"]
    assert prof.kind == "policy" and prof.conditioning == "prompt" and prof.n_tokens == 3 and prof.block_length == 3
    assert res["profiles"]["random"].metadata["sequences"] == 12
    assert set(res["schedules"]) == {"constant", "cosine", "optimal(random-order profile)", "optimal(confidence profile)"}
    best = res["schedules"]["optimal(confidence profile)"]["predicted_excess_nats"]
    assert all(best <= row["predicted_excess_nats"] + 1e-9 for row in res["schedules"].values())
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(x["nfe"] == 4 for x in lines)  # 2 blocks x 2 calls per schedule
    assert (tmp_path / "profile_confidence.png").exists() and (tmp_path / "schedules.json").exists()
